"""Bearer tokens with scopes for serving (`ServingConfig.auth`).

Each route needs a scope, from one table: the decision routes `act`, deploy and rollback
`admin`; `/healthz`, `/metrics` and the API docs none. A call without a valid token is answered
401 (with `WWW-Authenticate: Bearer`), one whose token lacks the scope 403, each with an
`ErrorBody` naming what is missing, never the token. Tokens are compared as SHA-256 digests with
`hmac.compare_digest`, against every configured token, so the time taken says nothing about how
much of a guess was right or which token it resembled.

Tokens from `tokens_file` rotate without a restart: `Tokens` looks at the file at most once per
`RELOAD_CHECK_S` and reads it again when it changed; a file that no longer holds valid tokens is
logged and the tokens read before stay in force (never no tokens, never an open door).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.config import AuthConfig
from serving.errors import ServingError
from serving.schemas import send_error_body

ScopeName = Literal["act", "admin"]
RELOAD_CHECK_S = 1.0
log = logging.getLogger(__name__)

# Route (path after an optional /v1/apps/{app} prefix) → the scope it needs; None: open.
_SCOPES: tuple[tuple[re.Pattern[str], ScopeName | None], ...] = (
    (re.compile(r"^/v1/(act|decisions)(/batch)?$"), "act"),
    (re.compile(r"^/v1/admin/"), "admin"),
)
_APP_PREFIX = re.compile(r"^/v1/apps/[^/]+/")


class AuthConfigError(ServingError):
    """The tokens could not be read: missing, not JSON, or not the expected shape."""


class _Token(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str = Field(min_length=16)
    scopes: list[ScopeName] = Field(min_length=1)


_TOKENS = TypeAdapter(dict[str, _Token])


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scopes: frozenset[str]
    digest: bytes  # sha256 of the token


def load_principals(config: AuthConfig) -> list[Principal]:
    """The configured tokens (digests only are kept), from `tokens_file` or else `tokens_env`."""
    if config.tokens_file is not None:
        where = f"tokens_file {config.tokens_file}"
        try:
            text = config.tokens_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise AuthConfigError(f"serving.auth: cannot read {where}: {exc.strerror}") from exc
    else:
        where = f"environment variable {config.tokens_env}"
        text = os.environ.get(config.tokens_env, "")
        if not text:
            raise AuthConfigError(
                f"serving.auth is enabled but {where} is not set; put the tokens there as "
                '{"<name>": {"token": "...", "scopes": ["act"]}} or set serving.auth.tokens_file'
            )
    try:
        tokens = _TOKENS.validate_python(json.loads(text))
        if not tokens:
            raise ValueError("expected a non-empty object of name → {token, scopes}")
    except (ValueError, ValidationError) as exc:
        # never echo the content: it holds the secrets
        detail = (
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
            if isinstance(exc, ValidationError)
            else "not valid JSON"
            if isinstance(exc, json.JSONDecodeError)
            else str(exc)
        )
        raise AuthConfigError(f"serving.auth: {where} does not hold valid tokens: {detail}") from None
    return [
        Principal(name, frozenset(entry.scopes), hashlib.sha256(entry.token.encode()).digest())
        for name, entry in tokens.items()
    ]


class Tokens:
    """The tokens in force: read once at start (errors stop the server), then, for a
    `tokens_file`, again whenever the file changes."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.principals = load_principals(config)
        self._seen = self._stamp()
        self._checked = time.monotonic()

    def _stamp(self) -> tuple[int, int, int] | None:
        if self.config.tokens_file is None:
            return None
        try:
            stat = self.config.tokens_file.stat()
        except OSError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def current(self) -> list[Principal]:
        if self.config.tokens_file is None or time.monotonic() - self._checked < RELOAD_CHECK_S:
            return self.principals
        self._checked = time.monotonic()
        stamp = self._stamp()
        if stamp == self._seen:
            return self.principals
        self._seen = stamp
        try:
            self.principals = load_principals(self.config)
        except AuthConfigError as exc:
            log.error("%s; the tokens read before stay in force until the file is fixed", exc)
        else:
            log.warning(
                "serving.auth: tokens reloaded from %s (%d names)",
                self.config.tokens_file,
                len(self.principals),
            )
        return self.principals


def required_scope(path: str) -> ScopeName | None:
    """The scope `path` needs (None: open)."""
    route = _APP_PREFIX.sub("/v1/", path, count=1)
    return next((scope for pattern, scope in _SCOPES if pattern.match(route)), None)


def authenticate(principals: list[Principal], authorization: str | None) -> Principal | None:
    """The principal whose token the `Authorization: Bearer …` header carries, or None."""
    if not authorization:
        return None
    kind, _, token = authorization.partition(" ")
    if kind.lower() != "bearer" or not token:
        return None
    digest = hashlib.sha256(token.strip().encode()).digest()
    found = None
    for principal in principals:  # every one compared: no early exit
        if hmac.compare_digest(principal.digest, digest):
            found = principal
    return found


class AuthMiddleware:
    """401/403 with an `ErrorBody` before the app runs, per `required_scope`."""

    def __init__(self, app: ASGIApp, tokens: Tokens) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (needed := required_scope(scope.get("path", ""))) is None:
            await self.app(scope, receive, send)
            return
        principal = authenticate(self.tokens.current(), Headers(scope=scope).get("authorization"))
        if principal is None:
            await _refuse(
                send,
                401,
                "Unauthorized",
                f"this route needs a bearer token with scope {needed!r}: send 'Authorization: Bearer <token>' "
                "(tokens are set in serving.auth)",
            )
            return
        if needed not in principal.scopes:
            await _refuse(
                send,
                403,
                "Forbidden",
                f"token {principal.name!r} has scopes {sorted(principal.scopes)}, but this route needs {needed!r}",
            )
            return
        scope.setdefault("state", {})["principal"] = principal.name
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, error: str, message: str) -> None:
    headers = ((b"www-authenticate", b"Bearer"),) if status == 401 else ()
    await send_error_body(send, status, error, message, headers)
