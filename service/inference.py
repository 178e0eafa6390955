"""What every inference route does once its request is decoded: send the images to the model's
batcher, then shape the reply. One copy, used by the request layer (service/routes.py) and by
the ``@bentoml.api`` methods (service/service.py), so both paths give the same answers.
"""

from __future__ import annotations

import asyncio

import numpy as np

from service import metrics
from service.batcher import QueueFull, Ran
from service.errors import BadInput
from service.images import decode_images

# The served models, by the names clients use (routes, V2 model names, /info keys).
MODELS = ("convnet", "dense")

# Images decoded on the event loop; more go to a thread so the loop keeps reading requests.
# One small PNG or JPEG decodes in ~50-100 us, about what a thread hand-off costs.
INLINE_DECODE_IMAGES = 4


async def decode_files(files: list[bytes], max_images: int) -> np.ndarray:
    """Uploaded image files -> uint8 [N,3,32,32]; BadInput names the first bad file."""
    if len(files) <= INLINE_DECODE_IMAGES:
        return decode_images(files, max_images)
    return await asyncio.to_thread(decode_images, files, max_images)


def model_key(service, name) -> str:
    """The served model a request names; BadInput when there is none by that name."""
    if name not in service.batchers:
        known = " or ".join(f"'{k}'" for k in MODELS)
        raise BadInput(f"unknown model {name!r}; choose {known}", status=400)
    return name


async def run(service, key: str, images: np.ndarray, route: str) -> Ran:
    """The model's outputs for ``images``, batched with every other request for it; the batch
    figures go to /metrics under ``route``."""
    try:
        ran = await service.batchers[key](images)
    except QueueFull as e:
        metrics.rejected("queue_full")
        raise BadInput(str(e), status=503) from None
    metrics.batch_done(route, ran.batch_size, ran.queue_ms, ran.inference_ms)
    return ran


async def run_both(service, images: np.ndarray, route: str) -> tuple[Ran, Ran]:
    return tuple(await asyncio.gather(run(service, "convnet", images, route),
                                      run(service, "dense", images, route)))


def classify_reply(service, key: str, ran: Ran) -> dict:
    served = service.models[key]
    return {"model": key, "model_tag": served.tag,
            "predictions": predictions(ran.probs, served.classes)}


def compare_reply(service, conv: Ran, dense: Ran) -> dict:
    classes = service.models["convnet"].classes
    agree = conv.probs.argmax(1) == dense.probs.argmax(1)
    return {
        "models": {k: {"model_tag": service.models[k].tag, "inference_ms": r.inference_ms,
                       "batch_size": r.batch_size, "queue_ms": r.queue_ms}
                   for k, r in (("convnet", conv), ("dense", dense))},
        "agreement": round(float(agree.mean()), 6),
        "predictions": [{"convnet": c, "dense": d, "agree": bool(a)} for c, d, a in
                        zip(predictions(conv.probs, classes), predictions(dense.probs, classes),
                            agree)],
    }


def predictions(probs: np.ndarray, classes: list[str]) -> list[dict]:
    return [{"label": classes[int(p.argmax())],
             "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)}}
            for p in probs]


def batch_headers(*rans: Ran) -> list[tuple[bytes, bytes]]:
    """X-Batch-Size (images in the model call the request rode in) and X-Queue-Ms. A /compare
    request rides in two calls: the larger of each figure (the body has both)."""
    if len(rans) == 1:  # every route but /compare: skip the generators
        return [(b"x-batch-size", b"%d" % rans[0].batch_size),
                (b"x-queue-ms", b"%.3f" % rans[0].queue_ms)]
    return [(b"x-batch-size", b"%d" % max(r.batch_size for r in rans)),
            (b"x-queue-ms", b"%.3f" % max(r.queue_ms for r in rans))]
