"""Two replicas of the CPU image behind HAProxy (deploy/lb/haproxy.cfg, health checks on
/readyz) under a steady wrk load of single-image .npy /predict requests: a quiet run, one
replica killed with SIGKILL (and started again), then a rolling restart of both (docker stop =
SIGTERM and the service's drain, start, wait until ready, next). Prints the table in
docs/deploy.md: requests sent, answered and failed in each phase.

    .venv/bin/python scripts/lb_test.py          # needs the image cifar2:cpu (make container)

Replicas run as in production: read-only root, non-root, CIFAR2_DRAIN_S=3. One worker each,
because this machine has two cores for both replicas, HAProxy and wrk.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOCKER = "/usr/bin/docker"
# Fixed addresses on a network of their own, as pod IPs: HAProxy reaches the replicas directly
# (a published port would put Docker's userland proxy in between, which accepts connections a
# stopped replica refuses and resets them).
NETWORK, SUBNET = "cifar2-lb", "172.31.250.0/24"
REPLICAS = {"cifar2-lb-r1": "172.31.250.11", "cifar2-lb-r2": "172.31.250.12"}
LB_PORT = 39720
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-npy"
local f = io.open(os.getenv("CIFAR2_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
"""


def docker(*args: str) -> str:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, check=True).stdout


def start_replica(image: str, name: str, ip: str) -> None:
    subprocess.run([DOCKER, "rm", "-f", name], capture_output=True, check=False)
    docker("run", "-d", "--name", name, "--network", NETWORK, "--ip", ip, "--read-only",
           "--tmpfs", "/tmp", "-e", "BENTOML_HOME=/tmp/bentoml", "-e", "CIFAR2_WORKERS=1",
           "-e", "CIFAR2_DRAIN_S=3", "--stop-timeout", "60", image)


def wait_ready(ip: str, timeout: float = 120) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if httpx.get(f"http://{ip}:3000/readyz", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    sys.exit(f"replica at {ip} not ready in {timeout} s")


def in_pool() -> None:
    """Wait until HAProxy's checks have put a started replica back (rise 2 x 500 ms)."""
    time.sleep(1.5)


def kill_one() -> list[str]:
    name, ip = next(iter(REPLICAS.items()))
    docker("kill", "-s", "KILL", name)
    time.sleep(3)
    docker("start", name)
    ready = wait_ready(ip)
    in_pool()
    return [f"SIGKILL {name}, restarted 3 s later, ready after {ready:.1f} s"]


def rolling_restart() -> list[str]:
    notes = []
    for name, ip in REPLICAS.items():
        t0 = time.monotonic()
        docker("stop", "-t", "60", name)  # SIGTERM: readiness 503, lame duck, drain, exit
        stopped = time.monotonic() - t0
        code = docker("inspect", "-f", "{{.State.ExitCode}}", name).strip()
        docker("start", name)
        ready = wait_ready(ip)
        in_pool()
        notes.append(f"{name}: stopped in {stopped:.1f} s (exit {code}), ready {ready:.1f} s")
    return notes


def under_load(body: Path, lua: Path, event, settle_s: float = 3.0) -> dict:
    """wrk against HAProxy while ``event`` runs (None: 20 s of quiet); wrk stops on SIGINT."""
    wrk = subprocess.Popen(["wrk", "-t2", "-c16", "-d600s", "--timeout", "10s", "-s", str(lua),
                            f"http://127.0.0.1:{LB_PORT}/predict"],
                           env={"CIFAR2_BODY": str(body), "PATH": "/usr/bin:/bin"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    time.sleep(settle_s)
    notes = event() if event else (time.sleep(20) or [])
    time.sleep(settle_s)
    wrk.send_signal(signal.SIGINT)
    out = wrk.communicate(timeout=60)[0]
    return {**parse_wrk(out), "seconds": time.monotonic() - t0, "notes": notes}


def parse_wrk(out: str) -> dict:
    def num(pattern: str) -> int:
        m = re.search(pattern, out)
        return int(m.group(1)) if m else 0

    requests = num(r"(\d+) requests in")
    if not requests:
        sys.exit(f"wrk printed no result:\n{out}")
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    connect, read, write, timeout = map(int, m.groups()) if m else (0, 0, 0, 0)
    non_2xx = num(r"Non-2xx or 3xx responses: (\d+)")
    no_reply = read + write + timeout
    return {"sent": requests + no_reply, "ok": requests - non_2xx, "non_2xx": non_2xx,
            "no_reply": no_reply, "connect_errors": connect}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="cifar2:cpu")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="cifar2-lb-"))
    body, lua = tmp / "one.npy", tmp / "post.lua"
    np.save(body, np.random.default_rng(0).integers(0, 256, (1, 3, 32, 32), dtype=np.uint8))
    lua.write_text(LUA)
    subprocess.run([DOCKER, "network", "create", "--subnet", SUBNET, NETWORK],
                   capture_output=True, check=False)  # fails harmlessly when it exists
    threads = [threading.Thread(target=start_replica, args=(args.image, n, ip))
               for n, ip in REPLICAS.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ip in REPLICAS.values():
        wait_ready(ip)
    env = {"LB_PORT": str(LB_PORT), "PATH": "/usr/sbin:/usr/bin:/bin",
           **{f"R{i}": f"{ip}:3000" for i, ip in enumerate(REPLICAS.values(), 1)}}
    lb = subprocess.Popen(["haproxy", "-db", "-f", str(ROOT / "deploy/lb/haproxy.cfg")], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        in_pool()
        rows = [("steady load", under_load(body, lua, None)),
                ("one replica SIGKILLed", under_load(body, lua, kill_one)),
                ("rolling restart (SIGTERM, ready, next)", under_load(body, lua, rolling_restart))]
    finally:
        lb.terminate()
        lb.wait(timeout=10)
        subprocess.run([DOCKER, "rm", "-f", *REPLICAS], capture_output=True, check=False)
        subprocess.run([DOCKER, "network", "rm", NETWORK], capture_output=True, check=False)
    print("| phase | seconds | sent | answered 200 | failed: non-2xx | failed: no reply |")
    print("|---|---:|---:|---:|---:|---:|")
    for phase, r in rows:
        print(f"| {phase} | {r['seconds']:.0f} | {r['sent']:,} | {r['ok']:,} | {r['non_2xx']:,} "
              f"| {r['no_reply']:,} |")
    for phase, r in rows:
        for note in r["notes"]:
            print(f"  {phase}: {note}")
    rolling = rows[-1][1]
    return 1 if rolling["non_2xx"] or rolling["no_reply"] else 0


if __name__ == "__main__":
    sys.exit(main())
