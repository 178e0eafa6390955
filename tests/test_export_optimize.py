"""The exact graph rewrites of export/optimize.py: same outputs to the last bit, and applied
only where they are exact."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export import formats
from export.graph import serving_graph
from export.optimize import pool_before_activation
from export.pipeline import load_model
from export.runtime import open_session, run_session
from tests.conftest import untrained_checkpoint


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("name, expected", [("net", 2), ("net_batchnorm", 2), ("net_depth", 0)])
def test_exported_graph_pools_before_tanh_with_identical_outputs(name, expected, tmp_path,
                                                                 monkeypatch):
    ckpt = untrained_checkpoint(name, tmp_path / f"{name}.pt")
    meta, model = load_model(ckpt)
    graph = serving_graph(model, meta)
    monkeypatch.setattr(formats, "pool_before_activation", lambda m: 0)
    plain = formats.write_onnx(graph, tmp_path / "plain.onnx")
    monkeypatch.undo()
    rewritten = formats.write_onnx(graph, tmp_path / "rewritten.onnx")

    before, after = onnx.load(str(plain)), onnx.load(str(rewritten))
    assert _ops(before).count("Tanh") == _ops(after).count("Tanh")
    moved = [i for i, op in enumerate(_ops(after)[:-1])
             if op == "MaxPool" and _ops(after)[i + 1] == "Tanh"]
    assert len(moved) == expected
    assert pool_before_activation(onnx.load(str(plain))) == expected

    rng = np.random.default_rng(0)
    plain_sess, _ = open_session(plain, "cpu", threads=1)
    new_sess, _ = open_session(rewritten, "cpu", threads=1)
    for n in (1, 7, 64):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        images[0] = 255 if n > 1 else 0  # saturated pixels: tanh near +-1, where ties happen
        for want, got in zip(run_session(plain_sess, images), run_session(new_sess, images)):
            np.testing.assert_array_equal(got, want)


def _graph(activation: str, extra_consumer: bool = False, indices: bool = False,
           act_is_output: bool = False) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])]
    nodes = [helper.make_node(activation, ["x"], ["a"]),
             helper.make_node("MaxPool", ["a"], ["y", "i"] if indices else ["y"],
                              kernel_shape=[2, 2], strides=[2, 2])]
    if extra_consumer:
        nodes.append(helper.make_node("Neg", ["a"], ["n"]))
        outputs.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, [1, 1, 4, 4]))
    if act_is_output:
        outputs.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 1, 4, 4]))
    if indices:
        outputs.append(helper.make_tensor_value_info("i", TensorProto.INT64, [1, 1, 2, 2]))
    return helper.make_model(helper.make_graph(nodes, "g", [x], outputs),
                             opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("activation", ["Tanh", "Sigmoid"])
def test_a_lone_monotone_activation_before_maxpool_moves_after_it(activation):
    model = _graph(activation)
    assert pool_before_activation(model) == 1
    assert _ops(model) == ["MaxPool", activation]
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("case", [
    {"activation": "Relu"},  # fused into the Conv by ONNX Runtime: nothing to save
    {"activation": "Neg"},  # decreasing: max and it do not commute
    {"activation": "Tanh", "extra_consumer": True},  # something else reads every value
    {"activation": "Tanh", "act_is_output": True},
    {"activation": "Tanh", "indices": True},
])
def test_rewrites_only_where_exact(case):
    model = _graph(**case)
    ops = _ops(model)
    assert pool_before_activation(model) == 0
    assert _ops(model) == ops
