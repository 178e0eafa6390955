"""`python -m export.verify`: a re-run of the gate that catches changed weights and broken files."""

from __future__ import annotations

import re
import shutil
import warnings

import onnx
import pytest
import torch
from onnx import numpy_helper

from export.verify import main, verify

FILES = ("model.onnx", "model.ts", "model.pt2", "parity.json", "model.json")


@pytest.fixture
def artifact(exported, tmp_path):
    """A private copy of net's artifact folder, free to damage."""
    return shutil.copytree(exported("net")[1], tmp_path / "net")


def test_untouched_artifact_verifies(artifact, capsys):
    assert main([str(artifact)]) == 0
    assert "verify passed" in capsys.readouterr().out


def test_one_changed_onnx_weight_fails_verify(artifact, capsys):
    proto = onnx.load(str(artifact / "model.onnx"))
    init = next(i for i in proto.graph.initializer if i.name.endswith("fc2.weight"))
    w = numpy_helper.to_array(init).copy()
    w[0, 0] += 0.5
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(proto, str(artifact / "model.onnx"))

    result = verify(artifact)
    assert not result["passed"]
    assert not result["formats"]["onnxruntime_cpu"]["passed"]
    assert result["formats"]["torchscript"]["passed"]  # the gate points at the changed file
    assert re.match(r"onnxruntime_cpu: batch random size \d+: max \|Δlogits\| \S+ > 0.0001 "
                    r"\(worst of \d+ failing batches\)",
                    result["formats"]["onnxruntime_cpu"]["failure"])
    assert result["changed_files"] == ["model.onnx"]
    assert main([str(artifact)]) == 1
    assert "FAILED: onnxruntime_cpu" in capsys.readouterr().err


def test_one_changed_torchscript_weight_fails_verify(artifact):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
        module = torch.jit.load(str(artifact / "model.ts"))
        with torch.no_grad():
            module.model.fc2.weight[0, 0] += 0.5
        torch.jit.save(module, str(artifact / "model.ts"))

    result = verify(artifact)
    assert not result["formats"]["torchscript"]["passed"]
    assert result["formats"]["onnxruntime_cpu"]["passed"]
    assert result["failures"][0].startswith("torchscript: batch random size ")


def test_one_changed_torch_export_weight_fails_verify(artifact):
    program = torch.export.load(str(artifact / "model.pt2"))
    with torch.no_grad():
        program.state_dict["model.fc2.weight"][0, 0] += 0.5
    torch.export.save(program, str(artifact / "model.pt2"))

    result = verify(artifact)
    assert not result["formats"]["torch_export"]["passed"]
    assert result["formats"]["torchscript"]["passed"]
    assert result["changed_files"] == ["model.pt2"]


@pytest.mark.parametrize("name", FILES)
def test_truncated_file_is_a_clear_error(artifact, capsys, name):
    path = artifact / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert main([str(artifact)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and name in err and "Traceback" not in err
    assert "truncated or corrupt" in err


@pytest.mark.parametrize("name", FILES)
def test_missing_file_is_a_clear_error(artifact, capsys, name):
    (artifact / name).unlink()
    assert main([str(artifact)]) == 2
    err = capsys.readouterr().err
    assert name in err and "missing" in err


def test_not_a_folder_nor_a_tag(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere/net")]) == 2
    assert "not an artifact folder" in capsys.readouterr().err
