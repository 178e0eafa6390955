"""FLOPs per image, counted from an ONNX graph (the file the GPU runs, not the PyTorch module).

    python -m bench.gpu.flops artifacts/net/model.onnx

Conv, Gemm and MatMul count 2 FLOPs per multiply-add, as torch's FlopCounterMode does (the
figure bench/bench_backends.py sets against the CPU); every other node counts one operation per
output element, reported apart ("elementwise"): small next to the convolutions, but not nothing
for the dense baseline's preprocessing. Shapes come from ONNX shape inference at batch 1.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path

import onnx
from onnx import shape_inference

MAC_OPS = ("Conv", "Gemm", "MatMul")


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Every tensor's shape at batch 1: the symbolic batch dimension is pinned, then inferred."""
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].Clear()
            dims[0].dim_value = 1
    # Inferred again from the pinned input: the exporter's symbolic shapes would shadow it.
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = {}
    for vi in (list(inferred.graph.input) + list(inferred.graph.value_info)
               + list(inferred.graph.output)):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    shapes.update({init.name: list(init.dims) for init in inferred.graph.initializer})
    return shapes


def count(path: str | Path) -> dict:
    """{"flops_per_image": conv/gemm/matmul FLOPs, "elementwise_per_image": other ops,
    "by_op": FLOPs per op type, "uncounted": nodes whose shapes were unknown}."""
    model = onnx.load(str(path))
    shapes = _shapes(model)
    by_op: Counter = Counter()
    elementwise, uncounted = 0, []
    for node in model.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if node.op_type == "Conv" and out and node.input[1] in shapes:
            w = shapes[node.input[1]]  # [Cout, Cin/group, kH, kW]
            by_op["Conv"] += 2 * math.prod(out) * math.prod(w[1:])
        elif node.op_type in ("Gemm", "MatMul") and out and node.input[0] in shapes:
            by_op[node.op_type] += 2 * math.prod(out) * shapes[node.input[0]][-1]
        elif node.op_type in MAC_OPS:
            uncounted.append(node.name or node.op_type)
        elif out:
            elementwise += math.prod(out)
    return {"flops_per_image": int(sum(by_op.values())), "elementwise_per_image": int(elementwise),
            "by_op": dict(by_op), "uncounted": uncounted}


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["artifacts/net/model.onnx"]:
        print(arg, count(arg))
