"""The one place where errors become OpenAI error JSON.

Every non-2xx JSON response of the API passes through ``normalize_error``:
``{"error": {"message", "type", "param", "code"}}`` with the type chosen by HTTP status, and
without internal details (Ray's "Internal exception: ray.llm...", request-id noise, tracebacks).
"""

from __future__ import annotations

import ast
import json
import logging
import re
from typing import Any

TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}
_INTERNAL = re.compile(
    r"\s*(\(Request ID: [^)]*\)|,?\s*Internal exception:.*|,?\s*original exception:.*)", re.S
)
_PARAM = re.compile(r"\(parameter=([^,)]+)")
# Ray's request-validation message: "Invalid request format: <msg> at ('body', 'messages', 0, ...)"
_VALIDATION = re.compile(r"^Invalid request format: (.*) at (\(.*\))$", re.S)
# Names in a pydantic error location that are union arms or types, not fields.
_NOT_FIELDS = {"str", "int", "float", "bool", "list", "dict", "none", "bytes", "literal"}
_QUALIFIED_EXCEPTION = re.compile(r"^(?:[a-z_][a-z0-9_]*\.)+[A-Za-z_]*(?:Error|Exception): ")
GENERIC_5XX = "The server had an error while processing your request."
log = logging.getLogger("ray.serve")


def error_type(status: int) -> str:
    return TYPE_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")


def clean_message(message: str, status: int) -> str:
    text = _INTERNAL.sub("", message or "").strip()
    text = text.removeprefix("Message: ").strip()
    text = _QUALIFIED_EXCEPTION.sub("", text)  # "vllm.exceptions.VLLMValidationError: ..."
    if status >= 500 and ("Traceback" in text or "File \"" in text or not text):
        return GENERIC_5XX
    return text.splitlines()[0][:1000] if text else "error"


def error_body(status: int, message: str, param: str | None = None,
               code: str | int | None = None, type_: str | None = None) -> dict[str, Any]:
    return {"error": {"message": clean_message(message, status), "type": type_ or error_type(status),
                      "param": param, "code": code if code is not None else status}}


def field_path(loc: str | tuple) -> str | None:
    """``('body', 'messages', 0, 'ChatCompletionUserMessageParam', 'role')`` ->
    ``messages[0].role``: fields and indexes only (pydantic's union-arm and type names go).
    None when ``loc`` is not a location."""
    if isinstance(loc, str):
        try:
            loc = ast.literal_eval(loc)
        except (ValueError, SyntaxError):
            return None
    if isinstance(loc, str):
        loc = (loc,)
    if not isinstance(loc, (tuple, list)):
        return None
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and re.fullmatch(r"[a-z_][a-z0-9_]*", part) \
                and part not in _NOT_FIELDS and not (part == "body" and not path):
            path += f".{part}" if path else part
    return path


def normalize_error(status: int, body: Any) -> dict[str, Any]:
    """Map any error body (Ray's, vLLM's, FastAPI's ``detail``) onto the OpenAI shape."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        message = str(err.get("message") or "")
        if (m := _VALIDATION.match(message)) and (path := field_path(m.group(2))) is not None:
            # Ray puts the offending *value* in param; the field is in the location (a body
            # that is not JSON has the character position there instead). A location that
            # does not start at the body (an error inside a nested validator) names no param.
            if re.fullmatch(r"\('body', \d+\)", m.group(2)):
                return error_body(status, f"{m.group(1)} (body character {path[1:-1]})",
                                  code=err.get("code"))
            rooted = re.match(r"\('body', '", m.group(2)) is not None
            return error_body(status, f"{path}: {m.group(1)}" if path else m.group(1),
                              param=path if path and rooted else None, code=err.get("code"))
        param = err.get("param") if isinstance(err.get("param"), str) else None
        if param is None and (m := _PARAM.search(message)):
            param = m.group(1).strip()
        code = err.get("code") if isinstance(err.get("code"), (str, int)) else None
        return error_body(status, message, param=param, code=code)
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # validation
            first = detail[0]
            loc = ".".join(str(p) for p in first.get("loc", []) if p != "body")
            return error_body(status, f"{loc}: {first.get('msg')}" if loc else str(first.get("msg")),
                              param=loc or None)
        return error_body(status, str(detail))
    return error_body(status, json.dumps(body) if body is not None else "")


def validation_error_body(errors: list[dict]) -> dict[str, Any]:
    """A request model's validation errors (FastAPI's ``RequestValidationError``) as a 400:
    the first error, its field as ``param`` (``messages[0].role``)."""
    first = errors[0] if errors else {"msg": "invalid request"}
    loc = tuple(first.get("loc") or ("body",))
    return normalize_error(400, {"error": {
        "message": f"Invalid request format: {first.get('msg', 'invalid request')} at {loc}",
        "code": "invalid_parameter"}})


KEPT_HEADERS = (b"retry-after", b"www-authenticate", b"x-request-id")


class OpenAIErrors:
    """ASGI middleware: rewrite every error response into the OpenAI shape.

    Plain ASGI, not Starlette's ``BaseHTTPMiddleware``: a successful response (a stream's every
    chunk included) passes straight through, with no task or memory stream per request. Only a
    response with status >= 400 is held back, read whole and rewritten by ``normalize_error``;
    an exception before the response started becomes a generic 500, never a traceback."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start: dict | None = None  # an error response's start message, held back
        sent = False  # something went to the client
        chunks: list[bytes] = []

        async def intercept(message):
            nonlocal start, sent
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
                return None
            if start is None:
                sent = True
                return await send(message)
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    sent = True
                    await _send_error(send, start, b"".join(chunks))
            return None

        try:
            await self.app(scope, receive, intercept)
        except Exception:  # never a traceback to the client; always one in the log
            log.exception("unhandled error answering %s %s", scope.get("method"),
                          scope.get("path"))
            if sent:
                raise
            await _send_error(send, {"status": 500, "headers": []}, b"")


async def _send_error(send, start: dict, raw: bytes) -> None:
    """The held-back error response ``start`` + ``raw``, in the OpenAI shape."""
    status = start["status"]
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = {"detail": raw.decode(errors="replace")}
    extra = {k: v for k, v in body.items() if k not in ("error", "detail")} \
        if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
    headers = {k.decode(): v.decode() for k, v in start.get("headers", [])
               if k.lower() in KEPT_HEADERS}
    await send_json(send, status, {**normalize_error(status, body), **extra}, headers)


async def send_json(send, status: int, body: dict, headers: dict | None = None) -> None:
    """Send a whole JSON response over ASGI ``send`` (the API's own middlewares answer so)."""
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})
