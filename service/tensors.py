"""/predict input: uint8 [N, 3, 32, 32] from JSON nested lists or from an .npy file.

An .npy upload is read from its header and raw bytes only: object arrays (pickles) are refused
unread, so an upload can never run code.
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


def parse_tensor(value: Any, max_images: int = MAX_IMAGES, may_hold_bools: bool = True
                 ) -> np.ndarray:
    """JSON lists or .npy bytes -> validated uint8 [N,3,32,32]; ValueError names the problem.
    ``may_hold_bools=False`` skips the search for JSON booleans in lists (the caller knows the
    JSON text has no ``true`` / ``false``)."""
    if hasattr(value, "read"):  # an uploaded file object
        value = value.read()
    if isinstance(value, (bytes, bytearray)):
        arr = _load_npy(bytes(value))
    elif isinstance(value, list):
        arr = _from_lists(value, may_hold_bools)
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
    # Any other header: numpy's own header reader (a literal, never a pickle), then the data
    # must be exactly what the header declares: no fewer bytes, and no more either.
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read(f)
    except Exception as e:  # noqa: BLE001 - numpy raises many types for a bad header
        raise ValueError(f"not a readable .npy file ({str(e)[:150]}); write it with "
                         "numpy.save(f, array_uint8)") from None
    if dtype.hasobject:
        raise ValueError("the .npy holds Python objects (a pickle); it is refused unread. "
                         "Save a uint8 array with numpy.save")
    count = int(np.prod(shape, dtype=object))  # exact, however large the declared shape
    size, sent = count * dtype.itemsize, len(data) - f.tell()
    if size != sent:
        raise ValueError(f"the .npy header declares shape {list(shape)} of {dtype} ({size} "
                         f"bytes of data), but the file carries {sent} bytes; write it with "
                         "numpy.save(f, array_uint8)")
    arr = np.frombuffer(data, dtype, count=count, offset=f.tell())
    return arr.reshape(shape, order="F" if fortran_order else "C")


def _from_lists(value: list, may_hold_bools: bool) -> np.ndarray:
    try:
        arr = np.array(value)
    except (ValueError, RecursionError):
        raise ValueError("images is a ragged nested list; it must be [N][3][32][32]") from None
    if arr.dtype.kind not in "iuf" or may_hold_bools and contains_bool(value):
        raise ValueError(f"images must hold integers 0..255, got "
                         f"{'boolean' if arr.dtype.kind in 'iuf' else arr.dtype} values")
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


def json_may_hold_bools(json_text: bytes) -> bool:
    """False when the JSON text has no true / false at all: contains_bool need not look."""
    return b"true" in json_text or b"false" in json_text


def contains_bool(nested: list) -> bool:
    """Whether JSON true / false hide among nested lists of numbers: numpy takes them as 1 / 0
    in an integer array, and a boolean is not a pixel."""
    stack = [nested]
    while stack:
        items = stack.pop()
        for v in items:
            if v is True or v is False:
                return True
            if isinstance(v, list):
                stack.append(v)
    return False


# The pydantic type of /predict's input: validated before BentoML batches it.
ImageTensor = Annotated[
    np.ndarray,
    PlainValidator(parse_tensor),
    PlainSerializer(lambda a: a.tolist()),
    WithJsonSchema({"type": "array", "description": "uint8 [N,3,32,32] as nested lists; or "
                    "an .npy file in the multipart field 'images'",
                    "items": {"type": "array"}}),
]
