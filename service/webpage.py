"""GET /ui: the web page that shows both models side by side (files in service/ui/).

    bentoml serve        # then open http://localhost:3000/ui

An ASGI middleware rather than a mounted app, like /info (service/info.py): BentoML mounts apps
under a prefix and redirects /ui to /ui/. The files are read once when the worker starts and
looked up by exact name, so no request path can reach a file outside service/ui/.

/ui serves index.html; every URL in the page is relative (ui/app.js, compare, info), so the page
also works behind a proxy that serves the service under a path prefix.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from service.replies import send_json

PATH = "/ui"
ROOT = Path(__file__).resolve().parent / "ui"
# The samples' README.md as plain text, which browsers show instead of downloading.
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".json": "application/json",
         ".png": "image/png", ".md": "text/plain; charset=utf-8", ".svg": "image/svg+xml"}
# The page loads nothing from elsewhere: no CDN, no external fonts (it must work offline).
# blob: for the thumbnails of the user's own files.
CSP = (b"default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
       b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'")


class StaticFile:
    def __init__(self, path: Path):
        self.body = path.read_bytes()
        self.etag = f'"{hashlib.sha256(self.body).hexdigest()[:16]}"'.encode()
        self.type = TYPES[path.suffix].encode()
        # Revalidate the page's code on every load (ETag -> 304), so that a new release is never
        # mixed with a cached old app.js; the sample images never change under a name.
        self.cache = b"public, max-age=86400" if "samples" in path.parts else b"no-cache"


def load(root: Path = ROOT) -> dict[str, StaticFile]:
    """URL path -> file, for every servable file under root ("/ui" is index.html)."""
    files = {f"{PATH}/{p.relative_to(root).as_posix()}": StaticFile(p)
             for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in TYPES}
    files[PATH] = files.pop(f"{PATH}/index.html")
    return files


class WebPage:
    def __init__(self, app, files: dict[str, StaticFile] | None = None):
        self.app = app
        self.files = load() if files is None else files

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != PATH and not path.startswith(PATH + "/"):
            return await self.app(scope, receive, send)
        if scope["method"] not in ("GET", "HEAD"):
            return await send_json(send, 405, {"error": f"{path} accepts only GET and HEAD"},
                                   ((b"allow", b"GET, HEAD"),))
        if path == PATH + "/":  # relative, so that it also works under a path prefix
            return await _send(send, 308, [(b"location", b"../ui"), (b"content-length", b"0")],
                               b"")
        file = self.files.get(path)
        if file is None:
            return await send_json(send, 404, {"error": f"no file {path} in the web page; "
                                                        f"open {PATH}"})
        headers = [(b"content-type", file.type), (b"cache-control", file.cache),
                   (b"etag", file.etag), (b"x-content-type-options", b"nosniff"),
                   (b"content-security-policy", CSP), (b"referrer-policy", b"no-referrer")]
        if file.etag in _if_none_match(scope):
            return await _send(send, 304, headers, b"")
        body = b"" if scope["method"] == "HEAD" else file.body
        await _send(send, 200, headers + [(b"content-length", str(len(file.body)).encode())],
                    body)


def _if_none_match(scope) -> list[bytes]:
    for name, value in scope.get("headers", ()):
        if name == b"if-none-match":
            return [v.strip() for v in value.split(b",")]
    return []


async def _send(send, status: int, headers: list, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
