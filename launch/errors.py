"""The one place where errors become OpenAI error JSON.

Every non-2xx JSON response of the API passes through ``normalize_error``:
``{"error": {"message", "type", "param", "code"}}`` with the type chosen by HTTP status, and
without internal details (Ray's "Internal exception: ray.llm...", request-id noise, tracebacks).
"""

from __future__ import annotations

import json
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
_PARAM = re.compile(r"\(parameter=([^,)]+)|at \('body', '([^']+)'")
GENERIC_5XX = "The server had an error while processing your request."


def error_type(status: int) -> str:
    return TYPE_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")


def clean_message(message: str, status: int) -> str:
    text = _INTERNAL.sub("", message or "").strip()
    text = text.removeprefix("Message: ").strip()
    if status >= 500 and ("Traceback" in text or "File \"" in text or not text):
        return GENERIC_5XX
    return text.splitlines()[0][:1000] if text else "error"


def error_body(status: int, message: str, param: str | None = None,
               code: str | int | None = None, type_: str | None = None) -> dict[str, Any]:
    return {"error": {"message": clean_message(message, status), "type": type_ or error_type(status),
                      "param": param, "code": code if code is not None else status}}


def normalize_error(status: int, body: Any) -> dict[str, Any]:
    """Map any error body (Ray's, vLLM's, FastAPI's ``detail``) onto the OpenAI shape."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        message = str(err.get("message") or "")
        param = err.get("param") if isinstance(err.get("param"), str) else None
        if param is None and (m := _PARAM.search(message)):
            param = (m.group(1) or m.group(2)).strip()
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


async def openai_errors_middleware(request, call_next):
    """Starlette HTTP middleware: rewrite every error response into the OpenAI shape."""
    from starlette.responses import JSONResponse

    try:
        response = await call_next(request)
    except Exception:  # never a traceback to the client
        return JSONResponse(error_body(500, GENERIC_5XX), status_code=500)
    if response.status_code < 400:
        return response
    raw = b"".join([chunk async for chunk in response.body_iterator])
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = {"detail": raw.decode(errors="replace")}
    headers = {k: v for k, v in response.headers.items()
               if k.lower() in ("retry-after", "www-authenticate", "x-request-id")}
    extra = {k: v for k, v in body.items() if k not in ("error", "detail")} \
        if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
    return JSONResponse({**normalize_error(response.status_code, body), **extra},
                        status_code=response.status_code, headers=headers)


def one_line(text: str) -> str:
    """The most telling line of a (possibly 200-line) error text.

    Takes the last ``...Error:``/``...Exception:`` line; for a pydantic validation error (vLLM's
    config classes) the reason is on the next line, so it is appended.
    """
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for marker in ("Error:", "Exception:", "error:"):
        hits = [i for i, ln in enumerate(lines) if marker in ln and not ln.startswith("File ")]
        if hits:
            i = hits[-1]
            line = lines[i]
            if "validation error" in line and i + 1 < len(lines):
                line += ": " + lines[i + 1].removeprefix("Value error, ")
            return line[:500]
    return (lines[-1] if lines else "")[:500]
