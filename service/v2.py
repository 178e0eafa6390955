"""The Open Inference Protocol (KServe V2) tensors: decode an infer request, encode its reply.

Spec: kserve/open-inference-protocol specification/protocol/inference_rest.md, and Triton's
binary tensor data extension (server docs/protocol/extension_binary_data.md), which
``tritonclient.http`` uses by default:

- request: ``Inference-Header-Content-Length: H``; the first H bytes are the JSON header, the
  rest the raw tensors in input order, each input saying ``parameters.binary_data_size``;
- reply: outputs asked for with ``parameters.binary_data`` (or the request's
  ``parameters.binary_data_output``) go raw after the JSON header, the same way.

One input, ``images`` UINT8 [N,3,32,32]; outputs ``logits`` and ``probs`` FP32 [N,2], both unless
the request names some. Every problem is a BadInput (400, or 413 over the image limit) whose
message names it; the request layer turns it into ``{"error": ...}``, what tritonclient reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from service.errors import BadInput
from service.tensors import SHAPE, contains_bool, json_may_hold_bools

INPUT = "images"
OUTPUTS = ("logits", "probs")
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data"]
BYTES_PER_IMAGE = int(np.prod(SHAPE))
HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class InferRequest:
    images: np.ndarray  # uint8 [N,3,32,32]
    id: str | None
    outputs: tuple[tuple[str, bool], ...]  # (name, as binary), in reply order


def model_metadata(name: str, version: str, tag: str, classes: list[str]) -> dict:
    """GET /v2/models/{name}: the served model's tensors; -1 is the batch dimension."""
    return {"name": name, "versions": [version], "platform": PLATFORM,
            "tag": tag, "classes": classes,
            "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [-1, *SHAPE]}],
            "outputs": [{"name": o, "datatype": "FP32", "shape": [-1, len(classes)]}
                        for o in OUTPUTS]}


def decode_infer(body: bytes, header_length: str | None, max_images: int) -> InferRequest:
    """An infer request body (JSON, or JSON + binary tensors) -> InferRequest."""
    if header_length is None:
        header, binary = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 < n <= len(body):
            raise BadInput(f"Inference-Header-Content-Length is {header_length!r}, but the body "
                           f"has {len(body)} bytes; it must be the length of the JSON header")
        header, binary = body[:n], body[n:]
    try:
        request = orjson.loads(header)
    except ValueError as e:  # orjson's errors, too deep nesting included, are ValueErrors
        raise BadInput(f"the inference request header is not valid JSON ({e})") from None
    if not isinstance(request, dict):
        raise BadInput("the inference request must be a JSON object with 'inputs'")
    images = _input(request.get("inputs"), binary, max_images,
                    json_may_hold_bools(header))
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadInput("'id' must be a string")
    params = _params(request, "the request")
    return InferRequest(images, request_id,
                        _outputs(request.get("outputs"), bool(params.get("binary_data_output"))))


def encode_infer(model: str, version: str, request: InferRequest,
                 tensors: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """(reply body, JSON header length when binary outputs follow it, else None)."""
    outputs, raw = [], []
    for name, binary in request.outputs:
        t = np.ascontiguousarray(tensors[name], dtype="<f4")
        out = {"name": name, "datatype": "FP32", "shape": list(t.shape)}
        if binary:
            out["parameters"] = {"binary_data_size": t.nbytes}
            raw.append(t.tobytes())
        else:
            out["data"] = t.ravel()  # orjson writes the array itself
        outputs.append(out)
    reply = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        reply["id"] = request.id
    header = orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raw:
        return header, None
    return b"".join([header, *raw]), len(header)


def _input(inputs, binary: bytes, max_images: int, may_hold_bools: bool) -> np.ndarray:
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadInput(f"'inputs' must be a list of one tensor, '{INPUT}' UINT8 [-1,3,32,32]")
    tensor = inputs[0]
    if tensor.get("name") != INPUT:
        raise BadInput(f"unknown input {tensor.get('name')!r}; this model takes one input, "
                       f"'{INPUT}' UINT8 [-1,3,32,32]")
    if tensor.get("datatype") != "UINT8":
        raise BadInput(f"input '{INPUT}' has datatype {tensor.get('datatype')!r}; this model "
                       "takes UINT8 pixels 0..255 (normalisation is inside the model)")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) != 4 or not all(type(d) is int for d in shape)
            or tuple(shape[1:]) != SHAPE or shape[0] < 1):
        raise BadInput(f"input '{INPUT}' has shape {shape!r}; it must be [N,3,32,32] with N >= 1")
    n = shape[0]
    if n > max_images:
        raise BadInput(f"{n} images in one request; the limit is {max_images} (split the "
                       "request or raise CIFAR2_MAX_IMAGES)", status=413)
    params = _params(tensor, f"input '{INPUT}'")
    if "shared_memory_region" in params:
        raise BadInput("shared-memory tensors are not supported; send the data in the body")
    want = n * BYTES_PER_IMAGE
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if type(size) is not int or size != want:
            raise BadInput(f"input '{INPUT}' declares binary_data_size {size!r}, but shape "
                           f"{shape} of UINT8 is {want} bytes")
        if len(binary) != size:
            raise BadInput(f"input '{INPUT}' declares binary_data_size {size}, but the body has "
                           f"{len(binary)} bytes after the JSON header")
        return np.frombuffer(binary, np.uint8).reshape(n, *SHAPE)
    if binary:
        raise BadInput(f"{len(binary)} bytes follow the JSON header, but input '{INPUT}' has no "
                       "binary_data_size parameter")
    if "data" not in tensor:
        raise BadInput(f"input '{INPUT}' has neither 'data' nor parameters.binary_data_size")
    return _from_json_data(tensor["data"], n, want, may_hold_bools)


def _from_json_data(data, n: int, want: int, may_hold_bools: bool) -> np.ndarray:
    try:
        arr = np.asarray(data)
    except (ValueError, RecursionError):
        raise BadInput(f"input '{INPUT}' data is a ragged nested list") from None
    if arr.size != want:
        raise BadInput(f"input '{INPUT}' data has {arr.size} values, but shape [{n},3,32,32] "
                       f"needs {want}")
    if arr.dtype.kind not in "iu" or (may_hold_bools and isinstance(data, list)
                                      and contains_bool(data)):
        # floats, bools, strings, objects: not UINT8 data
        kind = "boolean" if arr.dtype.kind in "iu" else arr.dtype
        raise BadInput(f"input '{INPUT}' data must be integers 0..255, got {kind} values")
    if arr.min() < 0 or arr.max() > 255:
        raise BadInput(f"input '{INPUT}' data must be within 0..255 (UINT8), got "
                       f"{arr.min()}..{arr.max()}")
    return arr.astype(np.uint8).reshape(n, *SHAPE)


def _outputs(requested, binary_default: bool) -> tuple[tuple[str, bool], ...]:
    if requested is None:
        return tuple((name, binary_default) for name in OUTPUTS)
    if not isinstance(requested, list) or not requested:
        raise BadInput("'outputs' must be a non-empty list of {\"name\": ...}")
    chosen = []
    for out in requested:
        name = out.get("name") if isinstance(out, dict) else None
        if name not in OUTPUTS:
            raise BadInput(f"unknown output {name!r}; this model has {', '.join(OUTPUTS)}")
        params = _params(out, f"output '{name}'")
        if params.get("classification"):
            raise BadInput("the classification extension is not supported; ask for 'probs'")
        if "shared_memory_region" in params:
            raise BadInput("shared-memory outputs are not supported")
        chosen.append((name, bool(params.get("binary_data", binary_default))))
    return tuple(chosen)


def _params(obj: dict, what: str) -> dict:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise BadInput(f"'parameters' of {what} must be a JSON object")
    return params
