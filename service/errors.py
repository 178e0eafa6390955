"""The one client-error type: a 4xx status, a message naming the problem, the image index."""

from __future__ import annotations

from starlette.responses import JSONResponse


class BadInput(ValueError):
    def __init__(self, message: str, index: int | None = None, status: int = 400):
        super().__init__(message if index is None else f"image {index}: {message}")
        self.message = message
        self.index = index
        self.status = status

    def body(self) -> dict:
        """The API's error shape (service/replies.py)."""
        return {"error": str(self)} if self.index is None else {"error": str(self),
                                                                 "index": self.index}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)
