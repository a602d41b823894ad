"""Request limits (`ServingConfig.limits`): one walk over a parsed request, before any work for it.

The walk reads the request's fields as the schema declares them, so every kind and every
endpoint (`/v1/act`, `/v1/decisions` and their batches) is checked by the same few lines: a
string (ids, names, feature keys) against `max_string_chars`, a feature map against
`max_features`, any other list against `max_items`. The first violation is raised as
`RequestLimitError` (422), naming the field as the schema's errors do.

`BodyLimitMiddleware` refuses a body over `max_body_bytes` with 413 and an `ErrorBody` before
the app reads it: at once from its Content-Length, or, for a chunked body, as soon as the bytes
received pass the limit (a body within it is handed on as received).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.config import RequestLimits
from serving.errors import RequestLimitError
from serving.schemas import send_error_body


def check_limits(request: BaseModel, limits: RequestLimits, prefix: str = "") -> None:
    """Raise `RequestLimitError` for the first field of `request` over `limits`."""
    _walk(request, prefix.rstrip("."), limits)


def _walk(value: Any, field: str, limits: RequestLimits) -> None:
    if isinstance(value, str):
        if len(value) > limits.max_string_chars:
            raise RequestLimitError(
                field, len(value), "characters", "max_string_chars", limits.max_string_chars
            )
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _walk(getattr(value, name), f"{field}.{name}" if field else name, limits)
    elif isinstance(value, dict):  # feature maps: str → number
        if len(value) > limits.max_features:
            raise RequestLimitError(field, len(value), "features", "max_features", limits.max_features)
        for key in value:
            if len(key) > limits.max_string_chars:
                raise RequestLimitError(
                    f"{field} key {key[:32]!r}…",
                    len(key),
                    "characters",
                    "max_string_chars",
                    limits.max_string_chars,
                )
    elif isinstance(value, list):
        if len(value) > limits.max_items:
            raise RequestLimitError(field, len(value), "items", "max_items", limits.max_items)
        if value and not isinstance(value[0], float | int):  # numbers need no walk
            for i, item in enumerate(value):
                _walk(item, f"{field}.{i}", limits)


class BodyLimitMiddleware:
    """413 with an `ErrorBody` for a request body over `max_body_bytes` (pure ASGI, no copy when the
    Content-Length is given and within the limit)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_body_bytes:
                await self._refuse(send, int(length))
                return
            await self.app(scope, receive, send)
            return
        # chunked: read up to the limit, then replay what was read to the app
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                await self._refuse(send, None)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, length: int | None) -> None:
        what = f"has {length} bytes" if length is not None else "runs past that"
        message = (
            f"the request body {what}: serving.limits.max_body_bytes allows {self.max_body_bytes} bytes; "
            "send fewer decisions per call, or raise the limit in the environment file"
        )
        await send_error_body(send, 413, "RequestTooLarge", message)
