"""Request parsing that BentoML 1.4 lacks: raw .npy bodies, and multipart without surprises.

BentoML picks a parser by Content-Type from ``_bentoml_impl.serde.ALL_SERDE``; we register two:
- ``application/x-npy`` (and ``application/octet-stream``): the body IS the .npy file. The
  cheapest form for programmatic clients: no multipart framing, no JSON floats.
- ``multipart/form-data``: BentoML's own parser, except that (0) our image and field limits
  replace Starlette's (1,000 files), (1) a non-file field holding
  binary (an .npy upload in /predict's ``images`` field) is passed on as bytes instead of
  crashing the JSON decoder with a 500, and (2) a text value in a file field is refused with a
  400 instead of being fetched as a URL by the server (which failed with a 500, and is an SSRF).
"""

from __future__ import annotations

import json
import typing as t
from http import HTTPStatus

from _bentoml_impl import serde as bentoml_serde
from bentoml.exceptions import BadInput as BentoBadInput
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from service import config
from service.multipart import MAX_FIELDS

NPY_MEDIA_TYPES = ("application/x-npy", "application/octet-stream")


class NpySerde(bentoml_serde.JSONSerde):
    media_type = "application/x-npy"

    async def parse_request(self, request, cls):
        body = await request.body()
        fields = list(cls.model_fields)
        if len(fields) != 1:
            raise BentoBadInput(f"{request.url.path} does not accept a raw .npy body; "
                                "send multipart/form-data")
        return cls.model_validate({fields[0]: body})


class SafeMultipartSerde(bentoml_serde.MultipartSerde):
    @staticmethod
    async def ensure_file(obj: t.Any) -> UploadFile:
        if isinstance(obj, UploadFile):
            return obj
        raise BentoBadInput("a file field holds text; upload the file itself "
                            "(curl -F 'images=@photo.jpg'), URLs are not fetched")

    async def parse_request(self, request, cls):
        # Starlette stops at 1,000 files and fields with its own 400 (a 500 before BentoML
        # maps it); our limits are the ones to enforce, with our messages.
        try:
            form = await request.form(max_files=config.MAX_IMAGES, max_fields=MAX_FIELDS,
                                      max_part_size=config.MAX_BODY_BYTES)
        except (HTTPException, MultiPartException) as e:
            detail = getattr(e, "detail", None) or getattr(e, "message", str(e))
            if "files" in detail:
                raise BentoBadInput(f"more than {config.MAX_IMAGES} files in one request; the "
                                    f"limit is {config.MAX_IMAGES} (split the request or raise "
                                    "CIFAR2_MAX_IMAGES)",
                                    error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from None
            raise BentoBadInput(f"the multipart form was refused: {detail}") from None
        data: dict[str, t.Any] = {}
        for k in form:
            if k in cls.multipart_fields:
                files = [await self.ensure_file(v) for v in form.getlist(k)]
                annotation = cls.model_fields[k].annotation
                data[k] = files if t.get_origin(annotation) is list else files[0]
                continue
            v = form[k]
            if isinstance(v, UploadFile):
                data[k] = await v.read()  # raw bytes: the field's validator decides
                continue
            try:
                data[k] = json.loads(v)
            except ValueError:
                data[k] = v
        return cls.model_validate(data)


def install() -> None:
    for media_type in NPY_MEDIA_TYPES:
        bentoml_serde.ALL_SERDE[media_type] = NpySerde
    for media_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        bentoml_serde.ALL_SERDE[media_type] = SafeMultipartSerde
