"""The front door's one error type. ``launch.api.errors`` maps it to OpenAI error JSON."""

from __future__ import annotations

from .metric_records import inc_counter


class RequestRejected(Exception):
    """A client request refused before it reaches an engine.

    ``status``: HTTP status (400 bad input, 401 auth, 404 unknown model, 413 too large);
    ``param``: the offending field (``messages[0].content[1].image_url``);
    ``reason``: a short label for the rejected-requests metric; ``code``: the error's code
    (default: the status); ``retry_after``: seconds, sent as Retry-After (503s that pass).
    """

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 reason: str = "invalid_request", code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.reason = reason
        self.code = code
        self.retry_after = retry_after


def bad_request(message: str, param: str, reason: str,
                code: str | None = None) -> RequestRejected:
    """A 400 for a field of the request: the one way the front door writes one, so that each
    names its field (``param``) and its reason."""
    return RequestRejected(400, message, param=param, reason=reason, code=code)


def count_rejection(reason: str) -> None:
    """Increment ``qwen_vl_rejected_requests`` (exported by Ray as
    ``ray_qwen_vl_rejected_requests_total``) for ``reason``. A no-op outside a Ray worker."""
    inc_counter("qwen_vl_rejected_requests", "Requests refused by the front door, by reason.",
                {"reason": reason})
