"""The CIFAR-2 BentoML service: the convnet next to the dense baseline, on ONNX Runtime.

    bentoml serve                                 # from the repo root; http://localhost:3000
    CIFAR2_CONVNET=cifar2-net_res:latest CIFAR2_DEVICE=cpu bentoml serve

Endpoints: POST /classify, /compare (image files), /predict (uint8 tensors, adaptive batching);
GET /info, /livez, /readyz, /metrics. Knobs: service/config.py (environment variables).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from pathlib import Path
from typing import Literal

import anyio
import bentoml
import numpy as np
from starlette.exceptions import HTTPException

from service import config, info, serde
from service.batcher import MicroBatcher
from service.errors import BadInput
from service.frontdoor import FrontDoorService
from service.images import check_count, decode_images
from service.runtime import ServedModel
from service.tensors import ImageTensor

logger = logging.getLogger("cifar2.service")
serde.install()
CONVNET = bentoml.models.BentoModel(config.CONVNET_TAG)
DENSE = bentoml.models.BentoModel(config.DENSE_TAG)


@bentoml.service(
    name="cifar2",
    service_class=FrontDoorService,  # limits, readiness gate, .npy lane in front of BentoML
    workers=config.WORKERS,
    traffic={"timeout": config.REQUEST_TIMEOUT_S},
    logging={"access": {"enabled": config.ACCESS_LOG}},
    # OpenTelemetry spans cost ~8% of a small request even with no exporter configured;
    # CIFAR2_TRACING=on puts them back for the API routes.
    tracing={"excluded_urls": [] if config.TRACING else ["/(predict|classify|compare)$"]},
)
class CIFAR2:
    # Class scope, so that `bentoml build` packs both models into the Bento.
    convnet_model = CONVNET
    dense_model = DENSE

    def __init__(self) -> None:
        self.models: dict[str, ServedModel] = {}
        self.warmup_ms: dict[str, dict[int, float]] = {}
        self.error: str | None = None
        try:
            for key, ref in (("convnet", CONVNET), ("dense", DENSE)):
                if ref.stored is None:
                    raise RuntimeError(
                        f"model {ref.tag} is not in the BentoML store ({_store_path()}); "
                        "register it with `make models` or `python -m export RUN.pt --register`,"
                        " or point CIFAR2_CONVNET / CIFAR2_DENSE at a registered tag")
                model = ServedModel(key, ref.stored, config.DEVICE, config.ORT_THREADS)
                self.warmup_ms[key] = model.warmup(config.WARMUP_BATCH_SIZES)
                self.models[key] = model
        except Exception as e:  # noqa: BLE001 - readiness reports it; the process stays up
            self.error = f"{type(e).__name__}: {e}"
            logger.error("cifar2 service is NOT ready: %s", self.error)
        # Everything loaded so far (BentoML, ORT, pydantic schemas) lives for the whole process:
        # keep it out of the garbage collector's full passes, which otherwise scan it all and
        # stall the event loop for tens of ms (they showed as p99 spikes under load).
        gc.freeze()
        # Requests allocate many short-lived objects; at Python's default threshold (700) the
        # young generation is collected every few requests, and those passes showed as p99
        # spikes. A larger young generation (CIFAR2_GC_THRESHOLD) cut p99 at c=32 from
        # 19-101 ms to 12-17 ms and raised req/s ~15% in alternating A/B runs with wrk.
        gc.set_threshold(config.GC_THRESHOLD, 50, 100)
        self.batchers = {key: MicroBatcher(m.probs, config.MAX_BATCH_SIZE, config.BATCHING,
                                           config.BATCH_CONCURRENCY, config.REQUEST_TIMEOUT_S)
                         for key, m in self.models.items()}

    @property
    def ready(self) -> bool:
        return self.error is None  # __init__ loads every model or records why not

    def __is_ready__(self) -> bool:
        if self.error:
            raise HTTPException(status_code=503, detail=f"not ready: {self.error}")
        return self.ready

    @bentoml.api(route="/classify")
    async def classify(self, images: list[Path] = [],  # noqa: B006 (pydantic copies it)
                       model: Literal["convnet", "dense"] = "convnet") -> dict:
        """Classify image files (JPEG, PNG, WebP, BMP, GIF; any size, resized to 32x32)."""
        try:
            batch = await self._decode(images)
        except BadInput as e:
            return e.response()
        probs, _ = await self.batchers[model](batch)
        served = self.models[model]
        return {"model": model, "model_tag": served.tag,
                "predictions": _predictions(probs, served.classes)}

    @bentoml.api(route="/compare")
    async def compare(self, images: list[Path] = []) -> dict:  # noqa: B006
        """Run the same images through the convnet and the dense baseline, side by side."""
        try:
            batch = await self._decode(images)
        except BadInput as e:
            return e.response()
        (p_conv, ms_conv), (p_dense, ms_dense) = await asyncio.gather(
            self.batchers["convnet"](batch), self.batchers["dense"](batch))
        classes = self.models["convnet"].classes
        conv, dense = _predictions(p_conv, classes), _predictions(p_dense, classes)
        agree = p_conv.argmax(1) == p_dense.argmax(1)
        return {
            "models": {k: {"model_tag": self.models[k].tag, "inference_ms": ms}
                       for k, ms in (("convnet", ms_conv), ("dense", ms_dense))},
            "agreement": round(float(agree.mean()), 6),
            "predictions": [{"convnet": c, "dense": d, "agree": bool(a)}
                            for c, d, a in zip(conv, dense, agree)],
        }

    @bentoml.api(route="/predict", batchable=config.BATCHING,
                 max_batch_size=config.MAX_BATCH_SIZE, max_latency_ms=config.MAX_LATENCY_MS)
    def predict(self, images: ImageTensor) -> np.ndarray:
        """uint8 [N,3,32,32] (JSON nested lists, or an .npy body / upload) -> convnet
        probabilities [N,2]. Concurrent requests are batched together (adaptive batching)."""
        return self.models["convnet"].probs(images)

    async def _decode(self, paths: list[Path]) -> np.ndarray:
        check_count(len(paths), config.MAX_IMAGES)  # before reading any file
        return await anyio.to_thread.run_sync(_read_and_decode, paths)

    def describe(self) -> dict:
        """The /info document."""
        import onnxruntime

        return {
            "service": "cifar2",
            "ready": self.ready,
            "error": self.error,
            "device": config.DEVICE,
            "models": {k: m.card() for k, m in self.models.items()},
            "requested_tags": {"convnet": str(CONVNET.tag), "dense": str(DENSE.tag)},
            "warmup_ms": self.warmup_ms,
            "batching": {
                "enabled": config.BATCHING, "max_batch_size": config.MAX_BATCH_SIZE,
                "max_latency_ms": config.MAX_LATENCY_MS, "fast_npy_predict": config.FAST_NPY,
                "concurrent_batches": config.BATCH_CONCURRENCY,
                "bentoml_adaptive": "/predict with JSON or multipart (and .npy bodies when "
                                    "fast_npy_predict is off); batch sizes in /metrics as "
                                    "bentoml_service_adaptive_batch_size",
                # Natural batching (service.batcher): /classify, /compare, .npy /predict.
                "natural": {k: b.stats() for k, b in self.batchers.items()},
            },
            "limits": {"max_body_bytes": config.MAX_BODY_BYTES, "max_images": config.MAX_IMAGES,
                       "max_in_flight_per_worker": config.MAX_IN_FLIGHT,
                       "max_image_pixels": config.MAX_IMAGE_PIXELS},
            "workers": config.WORKERS, "ort_threads": config.ORT_THREADS,
            "versions": {"bentoml": bentoml.__version__, "onnxruntime": onnxruntime.__version__,
                         "numpy": np.__version__, "python": sys.version.split()[0]},
            "torch_imported": "torch" in sys.modules,
        }


# BentoML derives each response's media type from the output's JSON schema, rebuilt on every
# request (~13% of a /predict call); all our outputs are JSON, so say so once.
for _api in CIFAR2.apis.values():
    _api.output_spec.media_type = "application/json"
CIFAR2.add_asgi_middleware(info.InfoRoute)


def _read_and_decode(paths: list[Path]) -> np.ndarray:
    """The uploads BentoML spooled to files -> uint8 [N,3,32,32]; off the event loop."""
    return decode_images([Path(p).read_bytes() for p in paths], config.MAX_IMAGES)


def _predictions(probs: np.ndarray, classes: list[str]) -> list[dict]:
    return [{"label": classes[int(p.argmax())],
             "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)}}
            for p in probs]


def _store_path() -> str:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.bentoml_home.get())
