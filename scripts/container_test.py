"""The container test: build the image and check it the way it is run in production.

    .venv/bin/python scripts/container_test.py          # make container-test        (CPU image)
    .venv/bin/python scripts/container_test.py --gpu    # make container-test GPU=1  (GPU image)

On a fresh machine: installs and starts Docker if needed (scripts/docker_up.sh), builds a
stand-in python:3.11-slim when it cannot be pulled (scripts/container_base.sh), registers two
tiny untrained models in a throwaway store (scripts/tiny_models.py; --store uses a real one),
builds the image (scripts/container_build.sh), then runs it non-root with a read-only root
filesystem and checks: /info (provider, models, no torch), the user and the read-only root, no
CUDA libraries in the CPU image, the project's HTTP tests (tests/test_service_http.py against
the container's port), a SIGKILLed worker (restarted by the supervisor, and serving), and
`docker stop` under a load of 512-image requests (every accepted request answered, exit 0
within the grace period). Prints image sizes and start-to-ready time.
Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
DOCKER = "/usr/bin/docker"  # Debian's client, BuildKit built in (scripts/docker_up.sh)
DRAIN_S, STOP_TIMEOUT_S, CLIENTS = 3, 60, 24
CUDA_LIBS = r"\( -name 'libcudart.so*' -o -name 'libcudnn*.so*' -o -name 'libcublas*.so*' \)"


def sh(*cmd: str, env: dict | None = None, check: bool = True) -> str:
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if check and done.returncode:
        sys.exit(f"FAILED: {' '.join(cmd)}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout.strip()


class Checks:
    def __init__(self):
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str, detail: str = "") -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}{': ' + detail if detail else ''}", flush=True)
        if not ok:
            self.failed.append(what)


def wait_ready(url: str, container: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if sh(DOCKER, "inspect", "-f", "{{.State.Running}}", container) != "true":
            sys.exit("container exited:\n" + sh(DOCKER, "logs", container, check=False))
        time.sleep(0.1)
    sys.exit(f"not ready in {timeout} s:\n" + sh(DOCKER, "logs", container, check=False))


def run_container(image: str, name: str, port: int, *extra: str) -> None:
    sh(DOCKER, "rm", "-f", name, check=False)
    sh(DOCKER, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:3000",
       # non-root is the image's own USER; the root filesystem read-only, /tmp the only writes
       "--read-only", "--tmpfs", "/tmp", "-e", "BENTOML_HOME=/tmp/bentoml",
       "-e", f"CIFAR2_DRAIN_S={DRAIN_S}", "--stop-timeout", str(STOP_TIMEOUT_S), *extra, image)


def check_image(image: str, gpu: bool, check: Checks) -> None:
    found = sh(DOCKER, "run", "--rm", "--entrypoint", "sh", image, "-c",
               f"find / -xdev {CUDA_LIBS} 2>/dev/null | head -3")
    packages = sh(DOCKER, "run", "--rm", "--entrypoint", "/app/.venv/bin/python", image, "-c",
                  "import importlib.metadata as m; print(' '.join(sorted(d.metadata['Name'] "
                  "for d in m.distributions() if 'onnxruntime' in d.metadata['Name'] "
                  "or d.metadata['Name'] == 'torch' "
                  # the CUDA wheels (nvidia-cublas, nvidia-cudnn-cu13 ...), not nvidia-ml-py
                  # (BentoML's NVML binding: no CUDA library in it)
                  "or d.metadata['Name'].startswith('nvidia-') "
                  "and d.metadata['Name'] != 'nvidia-ml-py')))")
    if gpu:
        check(bool(found) and "onnxruntime-gpu" in packages, "GPU image has the CUDA libraries",
              packages)
    else:
        check(not found and packages == "onnxruntime", "CPU image has no CUDA libraries",
              packages + (f"; found {found}" if found else ""))


def check_running(url: str, name: str, expect_provider: str, check: Checks) -> None:
    info = httpx.get(f"{url}/info", timeout=10).json()
    providers = {k: m["provider"] for k, m in info["models"].items()}
    check(set(providers) == {"convnet", "dense"}, "/info lists both models", str(providers))
    check(set(providers.values()) == {expect_provider}, f"/info provider is {expect_provider}",
          f"device={info['device']}")
    check(info["torch_imported"] is False, "/info: torch not imported")
    uid = sh(DOCKER, "exec", name, "id", "-u")
    check(uid != "0", "runs as a non-root user", f"uid {uid}")
    wrote = subprocess.run([DOCKER, "exec", name, "touch", "/home/bentoml/bento/x"],
                           capture_output=True, text=True, check=False)
    check(wrote.returncode != 0 and "Read-only" in wrote.stderr, "root filesystem is read-only",
          wrote.stderr.strip())


def http_tests(image: str, port: int, gpu_args: list[str], check: Checks) -> None:
    """The project's HTTP client tests, against the container started with the settings those
    tests give their own server (one worker, 16 images at most); the tests that start servers
    with other settings stay out."""
    name, url = "cifar2-test-http", f"http://127.0.0.1:{port}"
    run_container(image, name, port, "-e", "CIFAR2_WORKERS=1", "-e", "CIFAR2_MAX_IMAGES=16",
                  *gpu_args)
    try:
        wait_ready(url, name)
        _run_http_tests(url, check)
    finally:
        sh(DOCKER, "rm", "-f", name, check=False)


def _run_http_tests(url: str, check: Checks) -> None:
    local_only = ("cuda_device_without_gpu or bentoml_path or both_paths")
    env = {**os.environ, "CIFAR2_TEST_URL": url}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_service_http.py", "-k", f"not ({local_only})"],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    check(done.returncode == 0, "tests/test_service_http.py against the container", tail)
    if done.returncode:
        print(done.stdout[-4000:])


# The worker processes inside the container: `python -m _bentoml_impl.worker.service ...` (an
# argument of its own, so not this probe, whose code merely contains the name). psutil comes
# with BentoML; the slim image has no ps or kill, so both go through the image's own Python.
_PY = "/app/.venv/bin/python"
_WORKERS = ("import psutil; print(' '.join(str(p.pid) for p in psutil.process_iter(['cmdline']) "
            "if '_bentoml_impl.worker.service' in (p.info['cmdline'] or ())))")


def container_workers(name: str) -> set[int]:
    return {int(pid) for pid in sh(DOCKER, "exec", name, _PY, "-c", _WORKERS).split()}


def kill_worker(name: str, url: str, check: Checks, wait_s: float = 40) -> dict:
    """SIGKILL one of the two workers (as the OOM killer would): the supervisor must start a new
    one (BentoML turns that off when BENTOML_CONTAINERIZED is set, which BentoML's Dockerfile
    does and the image's ENTRYPOINT undoes), and the new one must serve. Then kill the other
    original worker too, so that the one process left answering is the new one."""
    before = container_workers(name)
    check(len(before) == 2, "two worker processes", str(sorted(before)))
    victim = min(before)
    sh(DOCKER, "exec", name, _PY, "-c", f"import os; os.kill({victim}, 9)")
    t0 = time.monotonic()
    new: set[int] = set()
    while not new and time.monotonic() - t0 < wait_s:
        time.sleep(0.2)
        new = container_workers(name) - before
    restart_s = time.monotonic() - t0
    env1 = sh(DOCKER, "exec", name, "sh", "-c", "tr '\\0' '\\n' </proc/1/environ", check=False)
    marked = "BENTOML_CONTAINERIZED" in env1
    check(bool(new), "a killed worker is restarted",
          f"new worker {sorted(new)} {restart_s:.1f} s after SIGKILL of {victim}" if new else
          f"none within {wait_s:.0f} s; BENTOML_CONTAINERIZED {'set' if marked else 'unset'} "
          "for PID 1")
    if not new:
        return {"restart_s": None}
    for pid in before - {victim}:
        sh(DOCKER, "exec", name, _PY, "-c", f"import os; os.kill({pid}, 9)")
    try:
        r = httpx.post(f"{url}/predict", json={"images": [[[[7] * 32] * 32] * 3] * 2}, timeout=60)
        served = r.status_code == 200 and len(r.json()) == 2
        detail = f"HTTP {r.status_code}"
    except httpx.TransportError as e:
        served, detail = False, type(e).__name__
    check(served, "the new worker serves (the other original worker killed too)", detail)
    # Back to two workers and ready before the next check (docker stop under load).
    while len(container_workers(name)) < 2 and time.monotonic() - t0 < 2 * wait_s:
        time.sleep(0.2)
    wait_ready(url, name)
    return {"restart_s": round(restart_s, 1), "served": served}


def stop_under_load(name: str, check: Checks) -> dict:
    """`docker stop` (SIGTERM to PID 1) while 24 clients send 512-image .npy requests.

    The clients talk to the container's own address, as a load balancer or a Kubernetes
    Service does: through the published port, Docker's userland proxy would accept every
    connection itself and reset it once the container refuses, turning refusals into "lost"."""
    from test_drain import load

    ip = sh(DOCKER, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name)
    url = f"http://{ip}:3000"

    stop, results = threading.Event(), []
    threads = [threading.Thread(target=load, args=(url, stop, results)) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(3)
    t0 = time.monotonic()
    sh(DOCKER, "stop", "-t", str(STOP_TIMEOUT_S), name)
    stop_s = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(timeout=90)
    code = int(sh(DOCKER, "inspect", "-f", "{{.State.ExitCode}}", name))
    counts = Counter(r.split(" (")[0] for r, _ in results)
    lost = counts["lost"]  # sent, and no HTTP answer (a 503 "server busy" is an answer)
    check(code == 0, "exit code 0 after docker stop", str(code))
    check(stop_s < STOP_TIMEOUT_S, f"stopped within the grace period ({STOP_TIMEOUT_S} s)",
          f"{stop_s:.1f} s with CIFAR2_DRAIN_S={DRAIN_S}")
    check(lost == 0 and counts["ok"] > 0, "every accepted request answered", json.dumps(counts))
    return {"stop_s": round(stop_s, 1), "exit": code, **counts}


def image_report(image: str, layers: int = 3) -> list[str]:
    """The image's size and its largest layers, each named by the command that made it."""
    size = int(sh(DOCKER, "image", "inspect", "-f", "{{.Size}}", image))
    history = sh(DOCKER, "history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", image)
    rows = [line.partition("\t")[::2] for line in history.splitlines() if line.strip()]
    rows = sorted(rows, key=lambda p: -_bytes(p[0]))[:layers]
    lines = [f"image {image}: {size / 1e6:.0f} MB" + ("; largest layers:" if layers else "")]
    for layer_size, cmd in rows:
        # BentoML's RUN lines start with every build ARG; the command is what comes after.
        cmd = re.sub(r"^RUN \|\d+ (\S+=\S* )*", "RUN ", cmd).replace("/bin/sh -c ", "")
        lines.append(f"    {layer_size:>8}  {cmd[:90] or '(the base image)'}")
    return lines


def _bytes(size: str) -> float:
    for unit, mult in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1)):
        if size.endswith(unit):
            return float(size[: -len(unit)]) * mult
    return 0.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="the GPU image (bentofile.yaml)")
    parser.add_argument("--store", help="a BENTOML_HOME with cifar2-net and cifar2-dense "
                        "(default: two tiny untrained models in a throwaway store)")
    parser.add_argument("--port", type=int, default=39700)
    args = parser.parse_args(argv)
    kind = "gpu" if args.gpu else "cpu"
    check = Checks()

    print("== Docker and the base image", flush=True)
    print(sh("bash", "scripts/docker_up.sh") or "  dockerd is running")
    print("  " + sh("bash", "scripts/container_base.sh").splitlines()[-1])

    tmp = Path(tempfile.mkdtemp(prefix="cifar2-container-"))
    try:
        store = Path(args.store).resolve() if args.store else tmp / "bentoml"
        if not args.store:
            print("== Two tiny untrained models in a throwaway store", flush=True)
            sh(sys.executable, "scripts/tiny_models.py", str(store))
        print(f"== Building the {kind.upper()} image", flush=True)
        t0 = time.monotonic()
        image = sh("bash", "scripts/container_build.sh", kind,
                   env={**os.environ, "BENTOML_HOME": str(store)}).splitlines()[-1]
        build_s = time.monotonic() - t0
        print(f"  {image} built in {build_s:.0f} s")
        check_image(image, args.gpu, check)

        has_gpu = shutil.which("nvidia-smi") is not None and args.gpu
        name, url = f"cifar2-test-{kind}", f"http://127.0.0.1:{args.port}"
        print(f"== Running {image} (read-only root, tmpfs /tmp"
              f"{', --gpus all' if has_gpu else ''})", flush=True)
        t0 = time.monotonic()
        run_container(image, name, args.port, *(["--gpus", "all"] if has_gpu else []))
        wait_ready(url, name)
        ready_s = time.monotonic() - t0
        print(f"  start to ready: {ready_s:.1f} s")
        # The GPU image on a machine without a GPU serves on the CPU (CIFAR2_DEVICE=auto).
        check_running(url, name, "CUDAExecutionProvider" if has_gpu else "CPUExecutionProvider",
                      check)
        print("== tests/test_service_http.py against the image", flush=True)
        http_tests(image, args.port + 1, ["--gpus", "all"] if has_gpu else [], check)
        print("== SIGKILL of a worker", flush=True)
        respawn = kill_worker(name, url, check)
        print("== docker stop under load", flush=True)
        drain = stop_under_load(name, check)
    finally:
        sh(DOCKER, "rm", "-f", f"cifar2-test-{kind}", "cifar2-test-http", check=False)
        shutil.rmtree(tmp, ignore_errors=True)

    print("== Summary")
    for line in image_report("python:3.11-slim", layers=0) + image_report(image):
        print("  " + line)
    print(f"  build {build_s:.0f} s; start to ready {ready_s:.1f} s; docker stop under load: "
          f"{json.dumps(drain)}; killed worker: {json.dumps(respawn)}")
    print(f"  {'FAILED: ' + ', '.join(check.failed) if check.failed else 'all checks passed'}")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
