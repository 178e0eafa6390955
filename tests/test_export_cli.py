"""`python -m export` end to end: the registered model, and every bad input the CLI refuses."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import untrained_checkpoint

from export.__main__ import main
from models.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None, module: str = "export"):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **(env or {})})


def read_store(home: Path, tag: str):
    """The stored model as BentoML reads it. BentoML fixes BENTOML_HOME at first use in a
    process, so the store under ``home`` is opened directly rather than through the global."""
    from bentoml._internal.models import ModelStore

    return ModelStore(str(home / "models")).get(tag)


def test_export_and_register_end_to_end(tmp_path):
    ckpt = untrained_checkpoint("net", tmp_path / "net.pt")
    home = tmp_path / "bentoml"
    r = run_cli(ckpt, "--out", tmp_path / "art", "--register", "--quiet",
                env={"BENTOML_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    assert "onnxruntime_cpu   CPUExecutionProvider" in r.stdout
    tag = r.stdout.strip().splitlines()[-1].removeprefix("registered ")
    assert tag.startswith("cifar2-net:")
    stored = read_store(home, "cifar2-net:latest")
    assert str(stored.tag) == tag
    assert stored.info.labels == {"model": "net", "recipe": "untrained", "parity": "passed"}
    meta = stored.info.metadata
    assert meta["classes"] == ["airplane", "bird"] and meta["params"] == 18090
    assert meta["mean"] == load_checkpoint(ckpt)["mean"] and meta["val_acc"] == 0.5
    assert meta["io"]["input"]["name"] == "images"
    cuda_formats = {"onnxruntime_cuda", "onnxruntime_cuda_fp16"}  # only where ORT runs on CUDA
    assert set(meta["parity"]) - cuda_formats == {"torchscript", "torch_export", "onnxruntime_cpu"}
    assert all(p["passed"] and p["max_abs"] <= 1e-4 for p in meta["parity"].values())
    assert set(meta["versions"]) == {"torch", "onnx", "onnxruntime"}
    files = {p.name for p in Path(stored.path).iterdir()}
    assert {"model.onnx", "model.ts", "model.pt2", "parity.json", "model.json"} <= files
    # The full gate ran: every batch size of the gate, odd ones included.
    parity = json.loads((tmp_path / "art" / "parity.json").read_text())
    assert list(parity["formats"]["onnxruntime_cpu"]["batches"]) == [
        f"random:{n}" for n in (1, 2, 7, 64, 256, 1000)]
    # verify reads the store too
    v = run_cli("cifar2-net:latest", env={"BENTOML_HOME": str(home)}, module="export.verify")
    assert v.returncode == 0 and "verify passed" in v.stdout, v.stderr


@pytest.fixture(scope="module")
def failing_checkpoint(tmp_path_factory) -> Path:
    """Logits of ~1e6: float32 rounding alone then differs between runtimes by far more than
    1e-4, so ONNX Runtime fails the gate honestly (no runtime is faked)."""
    path = tmp_path_factory.mktemp("huge") / "dense.pt"
    ckpt = load_checkpoint(untrained_checkpoint("dense", path))
    ckpt["state_dict"]["layers.3.weight"] *= 1e7
    save_checkpoint(ckpt, path)
    return path


def dense_in_store() -> int:
    """cifar2-dense versions in this process's store (conftest's throwaway one)."""
    import bentoml

    return sum(m.tag.name == "cifar2-dense" for m in bentoml.models.list())


def test_parity_failure_names_format_batch_and_difference(failing_checkpoint, tmp_path, capsys):
    stored = dense_in_store()
    assert main([str(failing_checkpoint), "--out", str(tmp_path / "a"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "parity FAILED: onnxruntime_cpu: batch random size" in err
    assert "max |Δlogits|" in err and "> 0.0001" in err
    assert json.loads((tmp_path / "a" / "parity.json").read_text())["passed"] is False
    # The same export with --register: exit 2 and nothing stored.
    assert main([str(failing_checkpoint), "--out", str(tmp_path / "a"), "--quiet",
                 "--register"]) == 2
    err = capsys.readouterr().err
    assert "not registering: parity failed" in err and "Traceback" not in err
    assert dense_in_store() == stored


def test_register_refuses_missing_or_failed_parity(exported, tmp_path):
    import shutil

    from export.register import RegisterError, register

    art = shutil.copytree(exported("net")[1], tmp_path / "net")
    parity = json.loads((art / "parity.json").read_text())
    (art / "parity.json").write_text(json.dumps({**parity, "passed": False}))
    with pytest.raises(RegisterError, match="parity failed"):
        register(art)
    (art / "parity.json").unlink()
    with pytest.raises(RegisterError, match="parity is missing"):
        register(art)


def expect_exit_2(capsys, *args) -> str:
    """Run the CLI in-process (it is the same main()) and return its one-line error."""
    assert main(list(map(str, args))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_missing_checkpoint(capsys, tmp_path):
    err = expect_exit_2(capsys, tmp_path / "nope.pt")
    assert "nope.pt: no such checkpoint file" in err


class _Marker:
    """Unpickling this would create the marker file: the attack weights_only exists to stop."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_arbitrary_pickle_is_never_unpickled(capsys, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "cifar2-checkpoint/1", "x": _Marker(marker)}, evil)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_Marker(marker)))
    for path in (evil, plain):
        err = expect_exit_2(capsys, path)
        assert "not a readable cifar2 checkpoint" in err
    assert not marker.exists()


def test_not_our_checkpoint(capsys, tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    assert "not a cifar2 checkpoint" in expect_exit_2(capsys, other)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    assert "not a readable cifar2 checkpoint" in expect_exit_2(capsys, text)


def test_unknown_model_name(capsys, tmp_path):
    path = untrained_checkpoint("net", tmp_path / "net.pt")
    ckpt = load_checkpoint(path)
    ckpt["model"] = "resnet9000"
    save_checkpoint(ckpt, path)
    err = expect_exit_2(capsys, path)
    assert "unknown model 'resnet9000'" in err and "net_res" in err


def test_weights_that_do_not_fit_the_model(capsys, tmp_path):
    path = untrained_checkpoint("net", tmp_path / "net.pt")
    ckpt = load_checkpoint(path)
    ckpt["model_args"] = {"n_chans1": 32}
    save_checkpoint(ckpt, path)
    assert "weights do not fit model 'net'" in expect_exit_2(capsys, path)


def test_bad_data_dir_fails_before_writing(capsys, tmp_path):
    ckpt = untrained_checkpoint("net", tmp_path / "net.pt")
    err = expect_exit_2(capsys, ckpt, "--out", tmp_path / "art", "--data-dir", tmp_path / "none",
                        "--quiet")
    assert "data dir does not exist" in err
    assert not (tmp_path / "art").exists()
