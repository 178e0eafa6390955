"""A model file that is removed or damaged in the store between restarts: the service must still
start (so that /readyz and /info can say what is wrong), not be ready, and say which file is bad
and how to fix it. One real `bentoml serve` per damage, on a copy of the test store.
"""

from __future__ import annotations

import re
import shutil

import httpx
import pytest
from test_service_http import (  # store is a fixture
    free_port,
    server_env,
    start_server,
    stop,
    store,  # noqa: F401
)

DAMAGE = ("removed", "truncated", "bytes flipped")
FIX = re.compile(r"make models|--register|export\.verify")


def damage(onnx, how: str) -> None:
    data = onnx.read_bytes()
    if how == "removed":
        onnx.unlink()
    elif how == "truncated":
        onnx.write_bytes(data[: len(data) // 3])
    else:  # 64 bytes in the middle of the weights inverted: the file still parses
        mid = len(data) // 2
        onnx.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64])
                         + data[mid + 64:])


@pytest.fixture(scope="module")
def answers(store, tmp_path_factory) -> dict:
    """damage -> (/readyz status, /readyz text, /predict status)."""
    out = {}
    for how in DAMAGE:
        root = tmp_path_factory.mktemp("damaged")
        home = root / "bentoml"
        shutil.copytree(store, home)
        version = (home / "models" / "cifar2-net" / "latest").read_text().strip()
        damage(home / "models" / "cifar2-net" / version / "model.onnx", how)
        proc, url = start_server(server_env(home), free_port(), root / "serve.log", ready=False)
        try:
            ready = httpx.get(f"{url}/readyz", timeout=10)
            predict = httpx.post(f"{url}/predict", json={"images": [[[[0] * 32] * 32] * 3]},
                                 timeout=10)
            out[how] = (ready.status_code, ready.text, predict.status_code)
        finally:
            stop(proc)
    return out


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_model_file_starts_not_ready_naming_the_file(answers, how):
    status, text, predict = answers[how]
    assert status == 503 and predict == 503, (how, status, text, predict)
    assert "model.onnx" in text and "cifar2-net" in text, text


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_model_file_readiness_names_the_fix(answers, how):
    assert FIX.search(answers[how][1]), answers[how][1]
