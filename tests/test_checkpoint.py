"""The checkpoint round trip with weights_only=True, and the evaluate CLI that reads them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import (
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from models.data import load_split
from models.evaluate import BOOK, accuracy
from models.nets import build, model_args

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def test_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(0)
    args = model_args("net_batchnorm")
    model = build("net_batchnorm", **args)
    model.train()(torch.randn(8, 3, 32, 32) + 1)  # non-default BN stats must survive too
    model.eval()
    ckpt = make_checkpoint("net_batchnorm", args, model, metrics={"val_acc": 0.9, "history": [{"epoch": 1}]},
                           recipe={"name": "book", "lr": 0.01}, data_fingerprint="abc")
    path = save_checkpoint(ckpt, tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)  # the safe loader, no arbitrary unpickling
    assert raw["model"] == "net_batchnorm" and raw["recipe"]["name"] == "book"
    back = model_from_checkpoint(load_checkpoint(path))
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(back(x), model(x))


def test_evaluate_reevaluates_and_plots(trained_run, image_folder, tmp_path):
    proc, runs = trained_run
    assert proc.returncode == 0, proc.stderr
    net = runs / "net.pt"
    env = dict(os.environ)
    env.update(CIFAR2_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    png = tmp_path / "chart.png"
    proc = subprocess.run(
        [sys.executable, "-m", "models.evaluate", str(net),
         "--data-dir", str(image_folder), "--plot", str(png)],
        cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| net (seed 1) |")]
    assert len(rows) == 1
    # The re-evaluated accuracy is the model's real accuracy on the test split, 4 decimals.
    x, y = load_split(image_folder, "test", cache_dir=tmp_path / "cache")
    expected = accuracy(model_from_checkpoint(load_checkpoint(net)), x, y)
    assert f"| {expected:.4f} |" in rows[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_rejects_a_non_checkpoint(tmp_path):
    bad = tmp_path / "evil.pt"
    bad.write_bytes(b"this is not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "models.evaluate", str(bad), "--no-data"],
                          cwd=ROOT, check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "evil.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_book_table_covers_the_zoo():
    assert BOOK["net"] == (0.93, 0.89) and BOOK["dense"] == (0.998, 0.82) and len(BOOK) == 9
