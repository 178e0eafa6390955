"""The CIFAR-2 BentoML service: the convnet next to the dense baseline, on ONNX Runtime.

    bentoml serve                                 # from the repo root; http://localhost:3000
    CIFAR2_CONVNET=cifar2-net_res:latest CIFAR2_DEVICE=cpu bentoml serve

Endpoints: POST /classify, /compare (image files), /predict (uint8 tensors); the Open Inference
Protocol (KServe V2) under /v2; GET /info, /livez, /readyz, /metrics. Every inference request
goes through one request layer (service/routes.py) and one batcher per model. Knobs:
service/config.py (environment variables).
"""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import Literal

import anyio
import bentoml
import numpy as np
from starlette.exceptions import HTTPException

from service import config, inference, info, serde, webpage
from service.batcher import MicroBatcher
from service.errors import BadInput
from service.frontdoor import FrontDoorService
from service.images import check_count
from service.runtime import ServedModel, thread_calls
from service.tensors import ImageTensor

logger = logging.getLogger("cifar2.service")
serde.install()
CONVNET = bentoml.models.BentoModel(config.CONVNET_TAG)
DENSE = bentoml.models.BentoModel(config.DENSE_TAG)


@bentoml.service(
    name="cifar2",
    service_class=FrontDoorService,  # limits, readiness gate, request layer in front of BentoML
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
        self.batchers = {key: MicroBatcher(m.run, config.MAX_BATCH_SIZE, config.BATCHING,
                                           config.BATCH_CONCURRENCY, config.REQUEST_TIMEOUT_S,
                                           inline_max=config.INLINE_MAX,
                                           max_queue_ms=config.MAX_QUEUE_MS,
                                           thread_calls=thread_calls(m.provider))
                         for key, m in self.models.items()}

    @property
    def ready(self) -> bool:
        return self.error is None  # __init__ loads every model or records why not

    def __is_ready__(self) -> bool:
        if self.error:
            raise HTTPException(status_code=503, detail=f"not ready: {self.error}")
        return self.ready

    # The request layer (service/routes.py) answers these three routes in front of BentoML;
    # the methods stay for the OpenAPI page, bentoml.SyncHTTPClient and CIFAR2_FAST_PATH=off,
    # and give the same answers through the same code (service/inference.py).
    @bentoml.api(route="/classify")
    async def classify(self, ctx: bentoml.Context, images: list[Path] = [],  # noqa: B006
                       model: Literal["convnet", "dense"] = "convnet") -> dict:
        """Classify image files (JPEG, PNG, WebP, BMP, GIF; any size, resized to 32x32)."""
        try:
            ran = await inference.run(self, model, await self._decode(images), "/classify")
        except BadInput as e:
            return e.response()
        _batch_headers(ctx, ran)
        return inference.classify_reply(self, model, ran)

    @bentoml.api(route="/compare")
    async def compare(self, ctx: bentoml.Context, images: list[Path] = []) -> dict:  # noqa: B006
        """Run the same images through the convnet and the dense baseline, side by side."""
        try:
            conv, dense = await inference.run_both(self, await self._decode(images), "/compare")
        except BadInput as e:
            return e.response()
        _batch_headers(ctx, conv, dense)
        return inference.compare_reply(self, conv, dense)

    @bentoml.api(route="/predict")
    async def predict(self, ctx: bentoml.Context, images: ImageTensor) -> np.ndarray:
        """uint8 [N,3,32,32] (JSON nested lists, or an .npy body / upload) -> convnet
        probabilities [N,2]. Concurrent requests are batched together."""
        try:
            ran = await inference.run(self, "convnet", images, "/predict")
        except BadInput as e:
            return e.response()
        _batch_headers(ctx, ran)
        return ran.probs

    async def _decode(self, paths: list[Path]) -> np.ndarray:
        check_count(len(paths), config.MAX_IMAGES)  # before reading any file
        return await inference.decode_files(
            await anyio.to_thread.run_sync(_read_all, paths), config.MAX_IMAGES)

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
                "concurrent_batches": config.BATCH_CONCURRENCY,
                "inline_max": config.INLINE_MAX,
                # Batch sizes each model's batches are padded up to (CIFAR2_PAD_BATCHES).
                "padded_to": {k: list(m.buckets) for k, m in self.models.items()},
                # One batcher per model (service.batcher), shared by every route and encoding.
                "natural": {k: b.stats() for k, b in self.batchers.items()},
            },
            "fast_path": config.FAST_PATH,
            "limits": {"max_body_bytes": config.MAX_BODY_BYTES, "max_images": config.MAX_IMAGES,
                       "max_in_flight_per_worker": config.MAX_IN_FLIGHT,
                       "max_queue_ms": config.MAX_QUEUE_MS,
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
CIFAR2.add_asgi_middleware(webpage.WebPage)  # GET /ui: the web page (service/ui/)


def _read_all(paths: list[Path]) -> list[bytes]:
    """The uploads BentoML spooled to files; read off the event loop."""
    return [Path(p).read_bytes() for p in paths]


def _batch_headers(ctx: bentoml.Context, *rans) -> None:
    for key, value in inference.batch_headers(*rans):
        ctx.response.headers[key.decode()] = value.decode()


def _store_path() -> str:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.bentoml_home.get())
