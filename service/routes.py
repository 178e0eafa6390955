"""The request layer: every inference route and every encoding, on one path.

    read the body -> decode (one small decoder per encoding) -> uint8 [N,3,32,32]
      -> the model's batcher (service/batcher.py, shared by every route) -> ONNX Runtime
      -> encode the route's reply + X-Batch-Size / X-Queue-Ms

| route | encodings (decoder) |
| --- | --- |
| POST /predict | JSON ``{"images": ...}``, raw .npy body, multipart .npy upload (service/tensors.py) |
| POST /classify, /compare | multipart image files (service/multipart.py, service/images.py) |
| POST /v2/models/{m}[/versions/{v}]/infer | V2 JSON, V2 JSON + binary tensors (service/v2.py) |
| GET /v2, /v2/health/*, /v2/models/{m}[/versions/{v}][/ready] | V2 metadata and health |

Why in front of BentoML's app (service/frontdoor.py): on 2 CPU cores BentoML's per-request
pipeline (pydantic IO models, its multipart spooling, Prometheus and timeout middlewares) cost
several times the model; JSON /predict went through it at 10% of a bare uvicorn app. The
``@bentoml.api`` methods stay, for the OpenAPI page and ``bentoml.SyncHTTPClient``'s schema,
and give the same answers through service/inference.py: CIFAR2_FAST_PATH=off sends /predict,
/classify and /compare through them, for comparison. The V2 routes exist only here.

Every reply is JSON (or V2 binary); every client error is ``{"error": ...}`` with a 4xx naming
the problem; nothing escapes as a traceback: this layer is outside BentoML's error handling.
Its requests are counted in /metrics as cifar2_request_* (service/metrics.py).
"""

from __future__ import annotations

import logging
import re
import time
import zlib
from urllib.parse import parse_qsl

import orjson
from bentoml import get_current_service

from service import bodies, config, drain, inference, info, metrics, requestlog, v2
from service.errors import BadInput
from service.limits import RequestLimits
from service.multipart import Form, boundary_of, parse_form
from service.replies import Reply
from service.requestlog import RequestLog
from service.serde import NPY_MEDIA_TYPES
from service.tensors import json_may_hold_bools, parse_tensor

logger = logging.getLogger("cifar2.service")

_V2 = re.compile(r"/v2(?:/health/(?P<health>live|ready)|/models/(?P<model>[^/]+)"
                 r"(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer)?)?/?")


class Request:
    """What a handler sees: the scope's headers and the whole (decompressed) body."""

    def __init__(self, scope, body: bytes):
        self.scope = scope
        self.body = body
        self.media_type = self.header("content-type").split(";", 1)[0].strip().lower()

    def header(self, name: str, default: str = "") -> str:
        """One request header (``name`` in lower case, as ASGI gives them)."""
        value = header_value(self.scope, name.encode("latin-1"))
        return default if value is None else value.decode("latin-1")

    def form(self) -> Form:
        if self.media_type == "application/x-www-form-urlencoded":  # text fields, no files
            form = Form(fields=dict(parse_qsl(self.body.decode("latin-1"))))
            form.texts_in.update(form.fields)
            return form
        if self.media_type != "multipart/form-data":
            raise BadInput(f"{self.scope['path']} takes multipart/form-data (image files in the "
                           f"field 'images'), got Content-Type {self.media_type or 'none'!r}",
                           status=415)
        return parse_form(self.body, boundary_of(self.header("content-type")), config.MAX_IMAGES)


def header_value(scope, key: bytes) -> bytes | None:
    """The first value of header ``key`` (lower case), looked up in the scope's list rather than
    copied into a dict on every request: a request reads two or three."""
    for k, v in scope["headers"]:
        if k == key:
            return v
    return None


# --- the decoders of /predict: JSON, .npy body, multipart .npy upload -------------------------

def predict_images(request: Request):
    kind = request.media_type
    if kind in NPY_MEDIA_TYPES:
        return _tensor(request.body)
    if kind == "application/json":
        try:
            doc = orjson.loads(request.body)
        except ValueError as e:  # orjson's errors, too deep nesting included, are ValueErrors
            raise BadInput(f"the body is not valid JSON ({e})") from None
        if not isinstance(doc, dict) or "images" not in doc:
            raise BadInput('the JSON body must be {"images": [[[[...]]]]}, uint8 [N,3,32,32] '
                           "as nested lists")
        return _tensor(doc["images"], json_may_hold_bools(request.body))
    if kind == "multipart/form-data":
        form = request.form()
        if form.files.get("images"):
            return _tensor(form.files["images"][0])
        if "images" in form.fields:
            try:
                return _tensor(orjson.loads(form.fields["images"]))
            except ValueError as e:
                raise BadInput(f"the field 'images' is not JSON nested lists ({e})") from None
        raise BadInput("no field 'images'; upload an .npy file: -F 'images=@batch.npy'")
    raise BadInput(f"/predict takes application/json, application/x-npy or multipart/form-data, "
                   f"got Content-Type {kind or 'none'!r}", status=415)


def _tensor(value, may_hold_bools: bool = True):
    try:
        return parse_tensor(value, may_hold_bools=may_hold_bools)
    except ValueError as e:
        raise BadInput(str(e)) from None



async def form_images(request: Request):
    """(form, images) of /classify and /compare: image files in the field 'images'."""
    form = request.form()
    if "images" in form.texts_in:
        raise BadInput("a file field holds text; upload the file itself "
                       "(curl -F 'images=@photo.jpg'), URLs are not fetched")
    return form, await inference.decode_files(form.files.get("images", []), config.MAX_IMAGES)


# --- the handlers: (service, request, **path params) -> Reply ---------------------------------

async def predict(service, request: Request) -> Reply:
    ran = await inference.run(service, "convnet", predict_images(request), "/predict")
    return Reply.json(ran.probs, headers=inference.batch_headers(ran))


async def classify(service, request: Request) -> Reply:
    form, images = await form_images(request)
    key = inference.model_key(service, form.text("model", "convnet"))
    ran = await inference.run(service, key, images, "/classify")
    return Reply.json(inference.classify_reply(service, key, ran),
                      headers=inference.batch_headers(ran))


async def compare(service, request: Request) -> Reply:
    _, images = await form_images(request)
    conv, dense = await inference.run_both(service, images, "/compare")
    return Reply.json(inference.compare_reply(service, conv, dense),
                      headers=inference.batch_headers(conv, dense))


async def v2_infer(service, request: Request, model: str, version: str | None) -> Reply:
    served = _v2_model(service, model, version)
    infer = v2.decode_infer(request.body, request.header(v2.HEADER_LENGTH, None),
                            config.MAX_IMAGES)
    ran = await inference.run(service, model, infer.images, "/v2/infer")
    body, header_length = v2.encode_infer(model, served.version, infer,
                                          {"logits": ran.logits, "probs": ran.probs})
    headers = inference.batch_headers(ran)
    if header_length is None:
        return Reply.json_bytes(body, headers=headers)
    headers.append((b"inference-header-content-length", str(header_length).encode()))
    return Reply(200, body, b"application/octet-stream", headers)


async def v2_get(service, request: Request, model: str | None, version: str | None,
                 action: str | None, health: str | None) -> Reply:
    if health == "live":
        return Reply.json({"live": True})
    if health == "ready":
        return _ready_reply(service)
    if model is None:
        return Reply.json({"name": "cifar2", "version": config.VERSION,
                           "extensions": v2.EXTENSIONS})
    served = _v2_model(service, model, version)
    if action == "/ready":
        return Reply.json({"name": model, "version": served.version, "ready": True})
    return Reply.json(v2.model_metadata(model, served.version, served.tag, served.classes))


def _ready_reply(service) -> Reply:
    if service is not None and service.ready:
        return Reply.json({"ready": True})
    reason = getattr(service, "error", None) or "starting"
    return Reply.error(503, f"not ready: {reason}", [(b"retry-after", b"5")])


def _v2_model(service, model: str, version: str | None):
    if model not in inference.MODELS:
        raise BadInput(f"unknown model {model!r}; this server has "
                       f"{' and '.join(repr(m) for m in inference.MODELS)}",
                       status=404)
    if service is None or not service.ready:
        raise BadInput(f"model {model!r} is not ready: "
                       f"{getattr(service, 'error', None) or 'starting'}", status=503)
    served = service.models[model]
    if version is not None and version != served.version:
        raise BadInput(f"model {model!r} has no version {version!r}; this server runs version "
                       f"{served.version!r} ({served.tag})", status=404)
    return served


POST_ROUTES = {"/predict": predict, "/classify": classify, "/compare": compare}


class RequestLayer:
    """ASGI middleware answering the inference routes; everything else goes to ``app``.

    Its routes take one lane, with the front's checks made as plain calls instead of four
    middlewares each wrapping the request's receive and send (~7 us of a ~45 us request, CPU
    in-process: ``python -m bench.asgi_path``): the request id and error log line
    (service/requestlog.py, ``log``), the body cap and load shedding (service/limits.py,
    ``limits``), the readiness gate (service/info.py) and the drain (service/drain.py). Without
    ``log`` (tests, benchmarks) the checks are skipped."""

    def __init__(self, app, fast_routes: bool = True, log: RequestLog | None = None,
                 limits: RequestLimits | None = None):
        self.app = app
        self.post_routes = POST_ROUTES if fast_routes else {}
        self.log = log
        self.limits = limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route, handler, params = self._match(scope["method"], scope["path"])
        if route is None:
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        rid, token = requestlog.begin(scope)
        limits = self.limits if self.limits is not None and self.limits.covers(scope["path"]) \
            else None
        started = reply = None
        sending = False
        drain.STATE.in_flight += 1
        try:
            if self.log is not None:  # the checks, as the middlewares make them
                reply = ((limits and limits.refusal(scope)) or info.not_ready(scope)
                         or drain.refusal(scope))
            if reply is None:
                cap = limits.max_body_bytes if limits is not None else None
                body, reply = await bodies.read_or_refusal(receive, cap,
                                                           lambda: limits.too_large(None))
                if body is None and reply is None:  # the client left before sending it all
                    requestlog.client_left(scope, rid)
                    return None
                if reply is None:
                    if limits is not None:
                        started = limits.started()
                    reply = await self._answer(handler, scope, body, params)
            headers = [*reply.headers, (requestlog.ID_HEADER, rid.encode())]
            if limits is not None:
                headers = limits.with_retry_after(reply.status, headers)
            reply.headers = drain.closing(headers) if drain.STATE.draining else headers
            sending = True
            await reply.send(send, scope["method"] == "HEAD")
            if started is not None:
                limits.answered(reply.status, started)
        except Exception:  # noqa: BLE001 - the last stop: logged once (unhandled), answered if we can
            requestlog.unhandled(scope, reply.status if sending else None, rid, t0)
            if not sending:
                await requestlog.send_500(send, rid)
            reply = Reply(reply.status if sending else 500, b"")
        finally:
            if started is not None:
                limits.finished()
            drain.STATE.in_flight -= 1
            requestlog.request_id.reset(token)
        metrics.request_done(route, reply.status, time.perf_counter() - t0)
        if reply.status >= 400 and self.log is not None:
            self.log.replied(scope, reply.status, reply.body, rid, t0)
        return None

    def _match(self, method: str, path: str):
        """(route label for /metrics, handler, path params), or (None, ...) to pass through."""
        if method == "POST" and path in self.post_routes:
            return path, self.post_routes[path], {}
        if not path.startswith("/v2"):
            return None, None, None
        m = _V2.fullmatch(path)
        if m is None:
            return "/v2", _not_found, {}
        p = m.groupdict()
        if p["action"] == "/infer":
            if method != "POST":
                return "/v2/infer", _method_not_allowed("POST"), {}
            return "/v2/infer", v2_infer, {"model": p["model"], "version": p["version"]}
        if method not in ("GET", "HEAD"):
            return "/v2", _method_not_allowed("GET"), {}
        return "/v2", v2_get, p

    async def _answer(self, handler, scope, body, params) -> Reply:
        try:
            body = _decompressed(body, scope)
            return await handler(get_current_service(), Request(scope, body), **params)
        except BadInput as e:
            return Reply.json(e.body(), e.status)
        except TimeoutError as e:
            return Reply.error(504, str(e))
        except Exception as e:  # the model failed: log it, answer JSON, keep serving
            logger.exception("%s %s failed", scope["method"], scope["path"])
            return Reply.error(500, f"inference failed: {type(e).__name__}")


async def _not_found(service, request: Request) -> Reply:
    return Reply.error(404, f"no route {request.scope['path']}; the V2 routes are /v2, "
                       "/v2/health/{live,ready}, /v2/models/{convnet,dense}[/versions/{v}]"
                       "[/ready|/infer]")


def _method_not_allowed(allowed: str):
    async def handler(service, request: Request) -> Reply:
        return Reply.error(405, f"use {allowed} {request.scope['path']}",
                           [(b"allow", allowed.encode())])
    return handler


def _decompressed(body: bytes, scope) -> bytes:
    """A gzip or deflate request body (tritonclient's request compression), inflated to at
    most the body limit, so a small bomb cannot become a large allocation."""
    encoding = (header_value(scope, b"content-encoding") or b"identity").strip().lower()
    if encoding in (b"identity", b""):
        return body
    if encoding not in (b"gzip", b"deflate"):
        raise BadInput(f"Content-Encoding {encoding.decode('latin-1')!r} is not supported; "
                       "send identity, gzip or deflate", status=415)
    inflater = zlib.decompressobj(wbits=47)  # 47: gzip or zlib header, detected
    try:
        out = inflater.decompress(body, config.MAX_BODY_BYTES + 1)
    except zlib.error as e:
        raise BadInput(f"the {encoding.decode()} body does not decompress ({e})") from None
    if len(out) > config.MAX_BODY_BYTES:
        raise BadInput(f"the decompressed body exceeds {config.MAX_BODY_BYTES} bytes; send "
                       "fewer images per request or raise CIFAR2_MAX_BODY_MB", status=413)
    return out
