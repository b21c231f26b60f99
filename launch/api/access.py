"""The outermost ASGI gate of the API: bearer API keys, JSON content type, request-body cap.

Keys are never in the config: ``access.api_keys_env`` names an environment variable
(comma-separated keys) and ``access.api_keys_file`` a file (one key per line, re-read when it
changes, so keys rotate without a restart; two keys can be valid at once); ``access.keys``
names further keys, each read from its own variable or file. A request carries the name of the
key it came with (``key_name``, for usage counting and quotas; never the key itself). With no
key configured the API is open (local development). Keys are compared in constant time. ``/health``
is always open. The body cap answers 413 from Content-Length, or while the body streams in.
Before a 413 the rest of the body is read and dropped (up to ``DRAIN_FACTOR`` times the cap), so
a client that sends the whole body before reading the answer gets the 413, not a broken pipe.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from engine.config import NO_KEY, UNNAMED_KEYS, AccessSettings

from .errors import error_body, send_json
from .rejections import count_rejection

OPEN_PATHS = {"/health", "/-/healthz", "/-/routes"}
KEY_NAME_STATE = "qwen_vl_key_name"  # request.state field: the authenticated key's name
DRAIN_FACTOR = 4  # bodies larger than this many caps are not read; the connection just closes


class KeySource:
    def __init__(self, env_name: str | None, file: str | None):
        self.env_name, self.file = env_name, file
        self._file_keys: tuple[bytes, list[str]] | None = None

    def keys(self) -> list[str] | None:
        """The valid keys; [] means 'configured but none readable' (fail closed); None: open."""
        keys: list[str] = []
        configured = False
        if self.env_name and os.environ.get(self.env_name, "").strip():
            configured = True
            keys += [k.strip() for k in os.environ[self.env_name].split(",") if k.strip()]
        if self.file:
            configured = True
            keys += self._read_file()
        return keys if configured else None

    def _read_file(self) -> list[str]:
        try:
            # Read on every request (a few lines, from the page cache): a rewrite is seen at
            # once, however fast it follows the last, as is a new file moved into place (how
            # Kubernetes updates a mounted Secret). Parsed again only when the bytes change.
            raw = Path(self.file).read_bytes()
            if self._file_keys is None or self._file_keys[0] != raw:
                lines = raw.decode(errors="replace").splitlines()
                self._file_keys = (raw, [ln.strip() for ln in lines if ln.strip()])
            return self._file_keys[1]
        except OSError:
            return []


def key_matches(token: str, keys: list[str]) -> bool:
    ok = False
    for k in keys:  # no early exit: the time does not depend on which key matched
        ok |= hmac.compare_digest(token.encode(), k.encode())
    return ok


class KeyRing:
    """Every key source by name: the unnamed keys (``default``) and ``access.keys``."""

    def __init__(self, access: AccessSettings):
        self.sources = {UNNAMED_KEYS: KeySource(access.api_keys_env, access.api_keys_file)}
        for name, ref in access.keys.items():
            self.sources[name] = KeySource(ref.env, ref.file)

    def keys(self) -> dict[str, list[str]] | None:
        """Valid keys by name; None when no source is configured (an open API)."""
        found = {name: src.keys() for name, src in self.sources.items()}
        if all(keys is None for keys in found.values()):
            return None
        return {name: keys for name, keys in found.items() if keys}

    def name_of(self, token: str, keys: dict[str, list[str]]) -> str | None:
        """The name of the key ``token`` is, or None. Every key is compared, matched or not."""
        match = None
        for name, named in keys.items():
            if key_matches(token, named) and match is None:
                match = name
        return match


def key_name(scope) -> str:
    """The name of the key a request was authenticated with (``AccessGate`` sets it)."""
    return scope.get("state", {}).get(KEY_NAME_STATE, NO_KEY)


class AccessGate:
    def __init__(self, app, *, max_body_bytes: int, access: AccessSettings,
                 open_paths: frozenset[str] = frozenset()):
        self.app = app
        self.open_paths = OPEN_PATHS | set(open_paths)
        self.max_body_bytes = max_body_bytes
        self.ring = KeyRing(access)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode().lower(): v.decode(errors="replace") for k, v in scope["headers"]}
        if scope["path"] not in self.open_paths:
            keys = self.ring.keys()
            if keys is not None:
                auth = headers.get("authorization", "")
                token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
                name = self.ring.name_of(token, keys) if token else None
                scope.setdefault("state", {})[KEY_NAME_STATE] = name
                if name is None:
                    count_rejection("auth")
                    msg = "missing API key (Authorization: Bearer <key>)" if not token \
                        else "invalid API key"
                    return await send_json(send, 401, error_body(401, msg, code="invalid_api_key"),
                                            {"www-authenticate": "Bearer"})
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if scope["method"] == "POST" and ctype != "application/json":
            count_rejection("content_type")
            return await send_json(send, 400, error_body(
                400, f"Content-Type must be application/json; got {ctype or 'none'!r}"))
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            count_rejection("body_too_large")
            if int(declared) <= DRAIN_FACTOR * self.max_body_bytes:
                await _drain(receive, 0, DRAIN_FACTOR * self.max_body_bytes)
            return await send_json(send, 413, _too_large(int(declared), self.max_body_bytes))
        total = 0
        over = False
        body_done = False

        async def limited_receive():
            nonlocal total, over, body_done
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                total += len(message.get("body", b""))
                if total > self.max_body_bytes:
                    over = True  # the app sees a disconnect; we answer 413 below
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not over:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over:
            count_rejection("body_too_large")
            if not body_done:
                await _drain(receive, total, DRAIN_FACTOR * self.max_body_bytes)
            await send_json(send, 413, _too_large(total, self.max_body_bytes))


async def _drain(receive, seen: int, limit: int) -> None:
    """Read and drop the rest of a request body, stopping at ``limit`` bytes in all."""
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _too_large(size: int, limit: int) -> dict:
    return error_body(413, f"request body is {size} bytes or more; the limit is {limit}",
                      code="request_too_large")
