"""multipart/form-data parsed in memory, with the request limits checked while parsing.

Why our own: Starlette's parser (under BentoML) spools each file to a temporary file and stops
at 1,000 files with its own error, before any limit of ours is checked, so 1,001..1,024 images
failed with a 500. The body here is already in memory and bounded by CIFAR2_MAX_BODY_MB
(service/limits.py), so a part is a slice of it found with ``bytes.find``: no temp files, no
per-byte state machine. Counting files as the parts are found means a request over the image
limit is refused before a single image is decoded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from service.errors import BadInput

MAX_FIELDS = 16  # non-file fields: the routes take one ("model")
MAX_PART_HEADER_BYTES = 8192
_PARAM = re.compile(r';\s*([\w*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


@dataclass
class Form:
    files: dict[str, list[bytes]] = field(default_factory=dict)  # name -> file contents
    fields: dict[str, str] = field(default_factory=dict)  # name -> text value (last wins)
    texts_in: set[str] = field(default_factory=set)  # names sent as text, kept for errors

    def file_count(self) -> int:
        return sum(len(v) for v in self.files.values())

    def text(self, name: str, default: str) -> str:
        """A text field's value. BentoML's client sends fields JSON-encoded ('"dense"', as
        its OpenAPI document says), curl sends them plain ('dense'): both mean dense."""
        value = self.fields.get(name, default)
        if value.startswith('"'):
            try:
                decoded = json.loads(value)
            except ValueError:
                return value
            return decoded if isinstance(decoded, str) else value
        return value


def boundary_of(content_type: str) -> bytes:
    """The boundary parameter of a multipart Content-Type; BadInput when there is none."""
    boundary = content_params(content_type).get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise BadInput("multipart/form-data without a valid boundary parameter in Content-Type;"
                       " let your HTTP client build the form (curl -F, requests files=)")
    return boundary.encode("latin-1")


def content_params(header: str) -> dict[str, str]:
    """'type/sub; a=1; b="x"' -> {"a": "1", "b": "x"} (names lower-cased)."""
    return {k.lower(): _unquote(v) for k, v in _PARAM.findall(";" + header.split(";", 1)[-1])}


def parse_form(body: bytes, boundary: bytes, max_files: int) -> Form:
    """All parts of the body; refuses the request as soon as a limit is passed."""
    delimiter = b"--" + boundary
    form = Form()
    pos = body.find(delimiter)
    if pos < 0:
        raise BadInput("the multipart body does not contain its boundary; the body is not the "
                       "form its Content-Type announces")
    n_fields = 0
    while True:
        pos += len(delimiter)
        if body.startswith(b"--", pos):  # the closing delimiter
            return form
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise BadInput("malformed multipart body: a boundary line is not followed by CRLF")
        head_end = body.find(b"\r\n\r\n", line_end)
        if head_end < 0 or head_end - line_end > MAX_PART_HEADER_BYTES:
            raise BadInput("malformed multipart body: part headers are missing, unterminated or "
                           f"longer than {MAX_PART_HEADER_BYTES} bytes")
        name, filename = _disposition(body[line_end + 2:head_end])
        data_start = head_end + 4
        data_end = body.find(b"\r\n" + delimiter, data_start)
        if data_end < 0:
            raise BadInput("truncated multipart body: a part is not closed by the boundary")
        if filename is not None:
            form.files.setdefault(name, []).append(body[data_start:data_end])
            if form.file_count() > max_files:
                raise BadInput(f"more than {max_files} files in one request; the limit is "
                               f"{max_files} (split the request or raise CIFAR2_MAX_IMAGES)",
                               status=413)
        else:
            n_fields += 1
            if n_fields > MAX_FIELDS:
                raise BadInput(f"more than {MAX_FIELDS} form fields; the limit is {MAX_FIELDS}",
                               status=413)
            value = body[data_start:data_end]
            if name in form.files or _looks_binary(value):
                form.files.setdefault(name, []).append(value)  # an upload without a filename
            else:
                form.fields[name] = value.decode("utf-8", "replace")
                form.texts_in.add(name)
        pos = data_end + 2


def _disposition(raw_headers: bytes) -> tuple[str, str | None]:
    """(field name, filename or None) from a part's headers."""
    for line in raw_headers.decode("latin-1").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-disposition":
            params = content_params(value)
            if "name" not in params:
                break
            filename = params.get("filename", params.get("filename*"))
            return params["name"], filename
    raise BadInput("malformed multipart body: a part has no Content-Disposition with a name")


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _looks_binary(value: bytes) -> bool:
    """A field value that is not text (an .npy sent with -F 'images=<x.npy'): kept as a file."""
    if b"\0" in value[:512]:
        return True
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
