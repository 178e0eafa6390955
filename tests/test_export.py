"""Export + parity for every model in the zoo, and the properties of the exported files."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
import torch

from export import formats
from export.graph import serving_graph
from export.parity import TOLERANCES, check_format, compare, random_batches
from export.pipeline import eager, export_checkpoint, fp16_check, load_model
from export.runtime import open_session, run_session
from models.checkpoint import sha256_of
from models.nets import MODELS

FORMATS = ("torchscript", "torch_export", "onnxruntime_cpu")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_zoo_model_exports_and_passes_parity(exported, name):
    ckpt, out, parity = exported(name)
    assert parity["passed"], parity.get("failures")
    assert json.loads((out / "parity.json").read_text())["passed"] is True
    for fmt in FORMATS:
        r = parity["formats"][fmt]
        assert r["passed"] and r["max_abs"] <= TOLERANCES["max_abs_logits"]
        assert r["argmax_agreement"] == 1.0
        assert r["max_probs_sum_err"] <= TOLERANCES["probs_sum_abs"]
        # Every batch size asked for was run, the odd ones included.
        assert sorted(int(k.split(":")[1]) for k in r["batches"]) == [1, 2, 7, 64]
    assert parity["formats"]["onnxruntime_cpu"]["provider"] == "CPUExecutionProvider"
    card = json.loads((out / "model.json").read_text())
    assert card["model"] == name and card["checkpoint_sha256"] == sha256_of(ckpt)
    assert card["io"]["input"] == {"name": "images", "dtype": "uint8", "shape": ["N", 3, 32, 32]}
    # (where ONNX Runtime runs on CUDA, the fp16 variant is added)
    assert set(card["files"]) - {formats.FP16_FILE} == {
        "model.onnx", "model.ts", "model.pt2", "parity.json"}
    for file, digest in card["files"].items():
        assert sha256_of(out / file) == digest


def test_onnx_is_one_checked_file_with_a_dynamic_batch(exported):
    _, out, _ = exported("net")
    assert sorted(p.name for p in out.iterdir() if p.name != formats.FP16_FILE) == [
        "model.json", "model.onnx", "model.pt2", "model.ts", "parity.json"]  # no .data file
    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    (inp,) = proto.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert inp.type.tensor_type.shape.dim[0].dim_param  # symbolic, not a frozen batch size
    assert [o.name for o in proto.graph.output] == ["logits", "probs"]
    sess, provider = open_session(out / "model.onnx", "cpu")
    assert provider == "CPUExecutionProvider"
    images = np.random.default_rng(1).integers(0, 256, (4096, 3, 32, 32), dtype=np.uint8)
    logits, probs = run_session(sess, images)
    assert logits.shape == probs.shape == (4096, 2) and logits.dtype == np.float32
    ckpt, model = load_model(exported("net")[0])
    ref = eager(serving_graph(model, ckpt), images)
    assert compare(ref, (logits, probs))["passed"]


def test_gate_fails_a_graph_left_in_train_mode(exported):
    """BatchNorm in train mode is the classic silent export bug; the gate must name it."""
    ckpt, model = load_model(exported("net_batchnorm")[0])
    graph = serving_graph(model, ckpt)
    batches = random_batches((1, 7))
    refs = [eager(graph, b.images) for b in batches]
    train_mode = serving_graph(load_model(exported("net_batchnorm")[0])[1], ckpt).train()
    result = check_format("eager_train_mode", lambda x: eager(train_mode, x), batches, refs)
    assert not result["passed"]
    assert re.match(r"eager_train_mode: batch random size (1|7): max \|Δlogits\| \S+ > 0.0001",
                    result["failure"])


def test_compare_flags_argmax_and_probabilities():
    logits = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert compare((logits, probs), (logits, probs))["passed"]
    swapped = logits[:, ::-1].copy()
    bad = compare((logits, probs), (swapped, probs))
    assert not bad["passed"] and "argmax agreement 0.0000%" in bad["reason"]
    not_normalised = compare((logits, probs), (logits, probs * 1.01))
    assert not not_normalised["passed"] and "probs sum" in not_normalised["reason"]
    shape = compare((logits, probs), (logits[:1], probs[:1]))
    assert not shape["passed"] and "shape" in shape["reason"]


def test_fp16_variant_code_path_on_cpu(exported, tmp_path):
    """The GPU-only fp16 check, run on ORT's CPU provider: the CUDA provider itself cannot be
    exercised on a machine without a GPU."""
    ckpt, model = load_model(exported("net")[0])
    batches = random_batches((7, 256))
    refs = [eager(serving_graph(model, ckpt), b.images) for b in batches]
    result = fp16_check(model, ckpt, tmp_path, batches, refs, device="cpu")
    assert result["passed"], result.get("failure")
    assert result["provider"] == "CPUExecutionProvider"
    assert 0 < result["max_abs"] < 0.05  # fp16 really is a different computation
    assert next(model.parameters()).dtype == torch.float32  # the fp32 model is untouched


def test_real_test_images_join_the_gate(image_folder, tmp_path, monkeypatch):
    """With a data dir, the test split (here the synthetic one) is a parity batch of its own."""
    from conftest import untrained_checkpoint

    monkeypatch.setenv("CIFAR2_CACHE", str(tmp_path / "cache"))
    ckpt = untrained_checkpoint("net", tmp_path / "net.pt")
    _, parity = export_checkpoint(ckpt, tmp_path / "net", data_dir=image_folder,
                                  progress=False, batch_sizes=(1, 2, 7, 64))
    assert parity["passed"] and parity["inputs"]["test_images"]["images"] == 32
    assert parity["formats"]["onnxruntime_cpu"]["batches"]["test:32"]["passed"]
    assert parity["formats"]["onnxruntime_cpu"]["images"] == 74 + 32


def test_torchscript_files_load_without_deprecation_warnings(exported, recwarn):
    formats.load_torchscript(exported("net")[1] / "model.ts")
    assert not [w for w in recwarn if "torch.jit" in str(w.message)]
