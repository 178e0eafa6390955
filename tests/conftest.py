"""Shared fixtures: tiny synthetic CIFAR-2 image folders and untrained checkpoints.

Tests never touch the network. The real images are used only when ``CIFAR2_DATA`` points at
an ImageFolder tree (``.ci/run`` sets it when the machine has one); otherwise those tests skip.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import CLASSES, make_checkpoint, save_checkpoint
from models.nets import build, model_args

# The real data folder is handed only to the tests that ask for it (``real_data_dir``). Every
# other test, and every subprocess a test starts, runs as on a fresh clone without CIFAR2_DATA,
# so the synthetic cases behave the same whether or not the machine has the real images.
REAL_DATA = os.environ.pop("CIFAR2_DATA", None)

# In-process tests must never write to the user's model store, and BentoML fixes its store at
# first import: point it at a throwaway one before any test imports bentoml. Subprocesses that
# need a store of their own get BENTOML_HOME explicitly.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="cifar2-tests-bentoml-")
atexit.register(shutil.rmtree, os.environ["BENTOML_HOME"], True)

# The registry's defaults, except where a default is too slow for a CPU test: 100 ResBlocks
# become 2 (the structure is the same; the checkpoint records the args it was built with).
TEST_MODEL_ARGS = {"net_resdeep": {"n_blocks": 2}}


def synthetic_image(label: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A 'sky' (airplane, 0) or 'foliage' (bird, 1) picture: learnable, yet noisy."""
    base = np.array([120, 160, 220] if label == 0 else [90, 120, 60], dtype=np.float32)
    pixels = base + rng.normal(0, 40, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_image_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """An ImageFolder tree: root/{split}/{airplane,bird}/NNNN.png."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for label, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                synthetic_image(label, rng).save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """64 train and 16 test images per class, synthetic."""
    return write_image_folder(tmp_path_factory.mktemp("cifar2"), {"train": 64, "test": 16})


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    path = REAL_DATA
    if not path or not Path(path).is_dir():
        pytest.skip("CIFAR2_DATA is not set to the real CIFAR-2 ImageFolder tree")
    return Path(path)


def npy(arr: np.ndarray) -> bytes:
    """The bytes numpy.save writes: an .npy request body or upload."""
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def untrained_checkpoint(name: str, path: Path, seed: int = 0) -> Path:
    """A checkpoint of a randomly initialised model, with BatchNorm statistics that are not the
    defaults, so that an export that forgets eval mode disagrees with the reference."""
    torch.manual_seed(seed)
    args = model_args(name, **TEST_MODEL_ARGS.get(name, {}))
    model = build(name, **args)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32) * 1.5 + 0.3)
    model.eval()
    ckpt = make_checkpoint(name, args, model, metrics={"val_acc": 0.5, "train_acc": 0.5},
                           recipe={"name": "untrained"}, data_fingerprint="synthetic")
    return save_checkpoint(ckpt, path)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(name) -> (checkpoint, artifact folder, parity)``: each zoo model's untrained
    checkpoint exported once per session (in-process, random parity inputs) and then shared.
    The random batches stop at 64 to keep the suite fast; the CLI tests run the full gate.
    Tests that damage files copy the folder first."""
    from export.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp("exported")
    cache: dict[str, tuple[Path, Path, dict]] = {}

    def get(name: str) -> tuple[Path, Path, dict]:
        if name not in cache:
            ckpt = untrained_checkpoint(name, root / f"{name}.pt")
            out, parity = export_checkpoint(ckpt, root / name, progress=False,
                                            batch_sizes=(1, 2, 7, 64))
            cache[name] = (ckpt, out, parity)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def trained_run(image_folder, tmp_path_factory):
    """``(completed process, out dir)`` of one real ``python -m models.train --model net
    --epochs 1`` on the synthetic folder: out/net.pt and out/net.json, shared by the tests."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("runs")
    env = dict(os.environ)
    env["CIFAR2_CACHE"] = str(out / "cache")
    proc = subprocess.run(
        [sys.executable, "-m", "models.train", "--model", "net", "--epochs", "1", "--seed", "1",
         "--data-dir", str(image_folder), "--out", str(out), "--device", "cpu", "--threads", "1"],
        cwd=Path(__file__).resolve().parents[1], env=env, check=False, capture_output=True,
        text=True, timeout=300)
    return proc, out


@pytest.fixture(scope="module")
def one_thread():
    """torch on one CPU thread for a test module, restored afterwards: on a busy 2-core machine
    two OpenMP threads per process oversubscribe the cores and small models train ~4x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read_reply(sock, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one HTTP/1.1 reply read off a raw
    socket; the body is read to its Content-Length (none for a reply to HEAD)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the server closed the connection after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    length = 0 if head_only else int(headers.get("content-length", 0))
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body
