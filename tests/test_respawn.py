"""A SIGKILLed worker comes back, with the environment the container image gives `bentoml serve`.

    .venv/bin/pytest tests/test_respawn.py        # ~40 s: a bento build, a server, a restart

BentoML's Dockerfile sets BENTOML_CONTAINERIZED=true, and with that variable BentoML 1.4 starts
the circus watcher with respawn=False: a worker killed by the OOM killer or a crash never comes
back, while the other worker keeps /livez green. The image's ENTRYPOINT (our Dockerfile template,
deploy/docker/bento.Dockerfile.j2) runs BentoML's entrypoint without that variable.

This test takes the ENTRYPOINT from the Dockerfile that `bentoml containerize` would build (a
real `bentoml build` of bentofile.cpu.yaml, then bentoml.container.get_containerfile), runs the
part before BentoML's entrypoint script on the image's environment to get the environment the
server sees, starts `bentoml serve` with it (two workers), SIGKILLs one worker, and checks that
a new worker process appears and answers a request on its own. scripts/container_test.py checks
the same on the built image.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import psutil
import pytest
from conftest import npy
from test_service_http import (
    BENTOML,
    ROOT,
    free_port,
    server_env,
    start_server,
    stop,
    store,  # noqa: F401 (fixture)
)

from bench.reliability.server import workers

RESPAWN_S = 40  # circus checks its workers every 10 s (BentoML's check_delay), then ~2 s to load
IMAGE_ENV = {"BENTOML_CONTAINERIZED": "true"}  # what BentoML's Dockerfile sets (ENV ...)
X = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)


@pytest.fixture(scope="module")
def dockerfile(store, tmp_path_factory) -> str:
    """The Dockerfile `bentoml containerize` builds the CPU image from."""
    env = server_env(store)
    done = subprocess.run([BENTOML, "build", "-f", "bentofile.cpu.yaml", "--output", "tag"],
                          check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    tag = done.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    out = tmp_path_factory.mktemp("containerfile") / "Dockerfile"
    # From / as scripts/container_build.sh does: BentoML re-reads the bento's dockerfile_template
    # from a temp dir and refuses files outside the working directory.
    code = ("import sys, bentoml.container as c; "
            "c.get_containerfile(sys.argv[1], output_path=sys.argv[2])")
    done = subprocess.run([sys.executable, "-c", code, tag, str(out)], check=False, cwd="/",
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out.read_text()


def entrypoint(dockerfile: str) -> list[str]:
    """The image's ENTRYPOINT: the last one in the Dockerfile wins."""
    lines = [ln for ln in dockerfile.splitlines() if ln.startswith("ENTRYPOINT ")]
    assert lines, "the Dockerfile has no ENTRYPOINT"
    return json.loads(lines[-1].removeprefix("ENTRYPOINT "))


def env_seen_by_server(dockerfile: str, env: dict) -> dict:
    """Run what the ENTRYPOINT puts before BentoML's entrypoint script (which activates the venv
    and execs `bentoml serve`, passing its environment on) and report the environment it gives."""
    argv = entrypoint(dockerfile)
    assert argv[-1].endswith("/env/docker/entrypoint.sh"), argv
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    done = subprocess.run([*argv[:-1], sys.executable, "-c", dump], env=env,
                          capture_output=True, text=True, check=True, timeout=30)
    return json.loads(done.stdout)


def test_dockerfile_sets_the_variable_that_turns_respawn_off(dockerfile):
    # If BentoML stops setting it, the ENTRYPOINT's `env -u` is no longer needed.
    assert "ENV BENTOML_CONTAINERIZED=true" in dockerfile


def test_killed_worker_is_restarted_and_serves(dockerfile, store, tmp_path):
    env = env_seen_by_server(dockerfile, server_env(store, CIFAR2_WORKERS="2", **IMAGE_ENV))
    log = tmp_path / "serve.log"
    proc, url = start_server(env, free_port(), log)
    try:
        before = workers(proc)
        assert len(before) == 2, before
        victim, other = before
        os.kill(victim.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        new: list[psutil.Process] = []
        while not new and time.monotonic() - t_kill < RESPAWN_S:
            time.sleep(0.2)
            new = [w for w in workers(proc) if w.pid not in {victim.pid, other.pid}]
        assert new, (f"no new worker {RESPAWN_S} s after SIGKILL of {victim.pid}; the server "
                     f"ran with BENTOML_CONTAINERIZED={env.get('BENTOML_CONTAINERIZED')!r}\n"
                     + log.read_text()[-2000:])
        # The replacement serves: with the other original worker killed too, it is the only
        # process accepting on the shared socket, so this answer is the new worker's.
        os.kill(other.pid, signal.SIGKILL)
        r = httpx.post(f"{url}/predict", content=npy(X), timeout=60,
                       headers={"content-type": "application/x-npy"})
        assert r.status_code == 200 and len(r.json()) == len(X), r.text[:500]
        assert new[0].is_running() and new[0].pid in {w.pid for w in workers(proc)}
    finally:
        stop(proc)
