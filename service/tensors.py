"""/predict input: uint8 [N, 3, 32, 32] from JSON nested lists or from an .npy file.

The .npy form is read with allow_pickle=False, so an upload can never run code.
"""

from __future__ import annotations

import io
import re
from typing import Annotated, Any

import numpy as np
from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from service.config import MAX_IMAGES

SHAPE = (3, 32, 32)
# The exact header numpy.save writes for a C-order uint8 [N,3,32,32] array: parsed with one
# regex instead of numpy's ast.literal_eval, which was 3% of a single-image request.
_FAST_HEADER = re.compile(rb"\{'descr': '\|u1', 'fortran_order': False, "
                          rb"'shape': \((\d+), 3, 32, 32\), \} *\n")


def parse_tensor(value: Any, max_images: int = MAX_IMAGES) -> np.ndarray:
    """JSON lists or .npy bytes -> validated uint8 [N,3,32,32]; ValueError names the problem."""
    if hasattr(value, "read"):  # an uploaded file object
        value = value.read()
    if isinstance(value, (bytes, bytearray)):
        arr = _load_npy(bytes(value))
    elif isinstance(value, list):
        arr = _from_lists(value)
    elif isinstance(value, np.ndarray):
        arr = value
    else:
        # ValueError, not TypeError: pydantic turns only ValueError into a 400.
        raise ValueError("images must be nested lists [N][3][32][32] of integers 0..255 "  # noqa: TRY004
                         "(JSON) or an .npy file of dtype uint8 (multipart field 'images')")
    if arr.ndim != 4 or tuple(arr.shape[1:]) != SHAPE or arr.shape[0] == 0:
        raise ValueError(f"images must have shape [N,3,32,32] with N >= 1, got "
                         f"{list(arr.shape)}")
    if arr.shape[0] > max_images:
        raise ValueError(f"{arr.shape[0]} images in one request; the limit is {max_images}")
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255), got dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


def _load_npy(data: bytes) -> np.ndarray:
    if not data.startswith(b"\x93NUMPY"):
        raise ValueError("the body is not an .npy file (it lacks the \\x93NUMPY magic); write "
                         "it with numpy.save(f, array_uint8), or send JSON {\"images\": [...]}")
    start = 10 if data[6:7] == b"\x01" else 12  # header length field: 2 bytes in v1, 4 after
    header_len = int.from_bytes(data[8:start], "little")
    m = _FAST_HEADER.fullmatch(data, start, start + header_len)
    if m and len(data) == start + header_len + int(m.group(1)) * 3072:
        return np.frombuffer(data, np.uint8, offset=start + header_len).reshape(-1, *SHAPE)
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises many types for a bad file
        raise ValueError(f"not a readable .npy file ({str(e)[:150]}); write it with "
                         "numpy.save(f, array_uint8)") from None
    if not isinstance(arr, np.ndarray):
        raise ValueError("an .npz archive was sent; send one array saved with numpy.save")  # noqa: TRY004
    return arr


def _from_lists(value: list) -> np.ndarray:
    try:
        arr = np.array(value)
    except (ValueError, RecursionError):
        raise ValueError("images is a ragged nested list; it must be [N][3][32][32]") from None
    if arr.dtype.kind not in "iuf":  # excludes object and bool arrays too
        raise ValueError(f"images must hold integers 0..255, got {arr.dtype} values")
    if arr.ndim != 4 or tuple(arr.shape[1:]) != SHAPE or arr.shape[0] == 0:
        raise ValueError(f"images must have shape [N,3,32,32] with N >= 1, got "
                         f"{list(arr.shape)}")
    if arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0):
        raise ValueError("images must hold integers 0..255, got fractional values; the "
                         "normalisation happens inside the model")
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > 255:
        raise ValueError(f"pixel values must be within 0..255, got {lo}..{hi}")
    return arr.astype(np.uint8)


# The pydantic type of /predict's input: validated before BentoML batches it.
ImageTensor = Annotated[
    np.ndarray,
    PlainValidator(parse_tensor),
    PlainSerializer(lambda a: a.tolist()),
    WithJsonSchema({"type": "array", "description": "uint8 [N,3,32,32] as nested lists; or "
                    "an .npy file in the multipart field 'images'",
                    "items": {"type": "array"}}),
]
