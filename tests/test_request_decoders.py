"""The request layer's decoders on their own: multipart forms and V2 infer bodies.
Over real HTTP they are tested in test_service_http.py and test_v2_http.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service import v2
from service.errors import BadInput
from service.multipart import boundary_of, content_params, parse_form

B = b"xyzBOUNDARYzyx"


def form_body(*parts: tuple[str, str | None, bytes], boundary: bytes = B) -> bytes:
    """parts: (field name, filename or None, data) -> a multipart/form-data body."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename
                                                       else "")
        out += (b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode()
                + b"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    return out + b"--" + boundary + b"--\r\n"


def test_files_and_fields_in_order_with_binary_data_intact():
    payload = bytes(range(256)) + b"\r\n--not-the-boundary\r\n"
    form = parse_form(form_body(("images", "a.png", b"A"), ("model", None, b"dense"),
                                ("images", "b.png", payload)), B, max_files=8)
    assert form.files == {"images": [b"A", payload]} and form.fields == {"model": "dense"}


@pytest.mark.parametrize("n", [1, 1000, 1024])
def test_exactly_the_image_limit_is_accepted(n):
    form = parse_form(form_body(*[("images", "x.png", b"x")] * n), B, max_files=1024)
    assert form.file_count() == n


def test_one_over_the_limit_is_413_before_anything_is_decoded():
    with pytest.raises(BadInput, match="more than 1024 files.*CIFAR2_MAX_IMAGES") as e:
        parse_form(form_body(*[("images", "x.png", b"x")] * 1025), B, max_files=1024)
    assert e.value.status == 413


@pytest.mark.parametrize("body, words", [
    (b"no boundary at all", "does not contain its boundary"),
    (b"--" + B + b"\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue", "truncated"),
    (b"--" + B + b"\r\nContent-Disposition: form-data; name=\"a\"", "part headers"),
    (b"--" + B + b"\r\nX: y\r\n\r\nv\r\n--" + B + b"--", "Content-Disposition"),
    (b"--" + B + b"junk\r\n", "CRLF"),
    (b"--" + B + b"\r\n" + b"X: " + b"y" * 9000 + b"\r\n\r\nv\r\n--" + B + b"--", "8192 bytes"),
])
def test_malformed_bodies_are_400_naming_the_problem(body, words):
    with pytest.raises(BadInput, match=words) as e:
        parse_form(body, B, max_files=8)
    assert e.value.status == 400


def test_too_many_fields_is_413():
    with pytest.raises(BadInput, match="form fields") as e:
        parse_form(form_body(*[("f", None, b"v")] * 17), B, max_files=8)
    assert e.value.status == 413


def test_content_type_parameters():
    assert boundary_of('multipart/form-data; boundary="a b;c"') == b"a b;c"
    assert content_params(' form-data; name="x"; filename=y.png') == {"name": "x",
                                                                      "filename": "y.png"}
    with pytest.raises(BadInput, match="boundary"):
        boundary_of("multipart/form-data")


X = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)


def binary_request(images: np.ndarray, size: int | None = None, **extra) -> tuple[bytes, str]:
    header = {"inputs": [{"name": "images", "shape": list(images.shape), "datatype": "UINT8",
                          "parameters": {"binary_data_size": images.nbytes if size is None
                                         else size}}], **extra}
    h = json.dumps(header).encode()
    return h + images.tobytes(), str(len(h))


def test_v2_binary_and_json_inputs_decode_to_the_same_pixels():
    body, length = binary_request(X, id="r1", outputs=[{"name": "probs"}])
    as_binary = v2.decode_infer(body, length, 1024)
    as_json = v2.decode_infer(json.dumps({"inputs": [{
        "name": "images", "shape": [3, 3, 32, 32], "datatype": "UINT8",
        "data": X.tolist()}]}).encode(), None, 1024)
    flat = v2.decode_infer(json.dumps({"inputs": [{
        "name": "images", "shape": [3, 3, 32, 32], "datatype": "UINT8",
        "data": X.ravel().tolist()}], "parameters": {"binary_data_output": True}}).encode(),
        None, 1024)
    for r in (as_binary, as_json, flat):
        assert np.array_equal(r.images, X)
    assert as_binary.id == "r1" and as_binary.outputs == (("probs", False),)
    assert as_json.outputs == (("logits", False), ("probs", False))
    assert flat.outputs == (("logits", True), ("probs", True))


def test_v2_reply_binary_after_the_json_header():
    request = v2.decode_infer(*binary_request(X, outputs=[
        {"name": "probs", "parameters": {"binary_data": True}}, {"name": "logits"}]), 1024)
    probs = np.arange(6, dtype=np.float32).reshape(3, 2)
    body, length = v2.encode_infer("convnet", "v1", request, {"probs": probs, "logits": -probs})
    header = json.loads(body[:length])
    assert header["outputs"][0] == {"name": "probs", "datatype": "FP32", "shape": [3, 2],
                                    "parameters": {"binary_data_size": 24}}
    assert header["outputs"][1]["data"] == (-probs).ravel().tolist()
    assert np.array_equal(np.frombuffer(body[length:], "<f4").reshape(3, 2), probs)


@pytest.mark.parametrize("make, words, status", [
    (lambda: binary_request(X, size=100), "binary_data_size 100", 400),
    (lambda: (binary_request(X)[0][:-5], binary_request(X)[1]), "the body has 9211 bytes", 400),
    (lambda: (binary_request(X)[0], "99999"), "Inference-Header-Content-Length", 400),
    (lambda: (binary_request(X)[0], "abc"), "Inference-Header-Content-Length", 400),
    (lambda: (b"{not json", None), "not valid JSON", 400),
    (lambda: (b"[1, 2]", None), "JSON object", 400),
    (lambda: (b"[" * 100_000 + b"]" * 100_000, None), "not valid JSON", 400),  # too deep
    (lambda: binary_request(X.astype(np.float32).view(np.uint8)[:, :3]), "shape", 400),
    (lambda: (json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 32, 32],
                                      "datatype": "FP32", "data": [0.5] * 3072}]}).encode(),
              None), "datatype 'FP32'", 400),
    (lambda: (json.dumps({"inputs": [{"name": "x", "shape": [1, 3, 32, 32],
                                      "datatype": "UINT8", "data": [0] * 3072}]}).encode(),
              None), "unknown input 'x'", 400),
    (lambda: (json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 32, 32],
                                      "datatype": "UINT8", "data": [300] * 3072}]}).encode(),
              None), "0..255", 400),
    (lambda: (json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 32, 32],
                                      "datatype": "UINT8", "data": [1] * 3000}]}).encode(),
              None), "has 3000 values", 400),
    (lambda: binary_request(np.zeros((2000, 3, 32, 32), np.uint8)), "limit is 1024", 413),
    (lambda: binary_request(X, outputs=[{"name": "softmax"}]), "unknown output", 400),
])
def test_v2_bad_requests_name_the_problem(make, words, status):
    body, length = make()
    with pytest.raises(BadInput, match=words) as e:
        v2.decode_infer(body, length, 1024)
    assert e.value.status == status


def test_json_booleans_are_not_pixels():
    from service.tensors import parse_tensor

    pixels = X[:1].tolist()
    pixels[0][0][0][0] = True
    with pytest.raises(ValueError, match="boolean"):
        parse_tensor(pixels)
    body = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 32, 32],
                                   "datatype": "UINT8", "data": pixels}]}).encode()
    with pytest.raises(BadInput, match="boolean"):
        v2.decode_infer(body, None, 1024)
    # a true elsewhere in the request (binary_data_output) is fine
    ok = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 32, 32],
                                 "datatype": "UINT8", "data": X[:1].tolist()}],
                     "parameters": {"binary_data_output": True}}).encode()
    assert np.array_equal(v2.decode_infer(ok, None, 1024).images, X[:1])
