"""What both peer apps share: the ORT session, the request contract of ours, the replies.

Runs in the peers' virtual environment, with the repository root on PYTHONPATH: it imports
export.runtime (onnxruntime + numpy only) and service.images (Pillow; the service's own JPEG
decoding), never bentoml, so the peers open and decode exactly as our service does.
"""

from __future__ import annotations

import numpy as np

from export.runtime import open_session, run_session
from service.errors import BadInput
from service.images import decode_images

CLASSES = ("airplane", "bird")  # the order of the convnet's two outputs
MAX_IMAGES = 1024  # our service's default limit per request


class Model:
    """One CPU ONNX Runtime session with one intra-op thread, as each of our workers has."""

    def __init__(self, path: str):
        self.session, _ = open_session(path, "cpu", 1)

    def probs_split(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """One model call for many requests' images; the probabilities split back per request."""
        probs = run_session(self.session, np.concatenate(arrays))[1]
        return np.split(probs, np.cumsum([len(a) for a in arrays])[:-1])


def images_from_json(payload) -> np.ndarray:
    """Our /predict JSON body {"images": [N][3][32][32] of 0..255} -> uint8 [N,3,32,32]."""
    if not isinstance(payload, dict) or "images" not in payload:
        raise BadInput('send a JSON object {"images": [N][3][32][32] integers 0..255}')
    try:
        arr = np.asarray(payload["images"])
    except ValueError:
        raise BadInput("images are ragged nested lists; send [N][3][32][32]") from None
    if arr.ndim != 4 or arr.shape[1:] != (3, 32, 32) or not 1 <= len(arr) <= MAX_IMAGES:
        raise BadInput(f"images must have shape [N,3,32,32] with 1 <= N <= {MAX_IMAGES}, "
                       f"got {list(arr.shape)}")
    if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255:
        raise BadInput("images must be integers 0..255")
    return arr.astype(np.uint8)


def images_from_files(files: list[bytes]) -> np.ndarray:
    """The bytes of our /classify multipart field 'images' -> uint8 [N,3,32,32]."""
    return decode_images(files, MAX_IMAGES)


def classify_reply(probs: np.ndarray) -> dict:
    """The shape of our /classify reply: one label and its probabilities per image."""
    return {"model": "convnet", "predictions": [
        {"label": CLASSES[int(p.argmax())],
         "probabilities": {c: round(float(v), 6) for c, v in zip(CLASSES, p)}} for p in probs]}
