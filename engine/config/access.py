"""``access:``: API keys, their names and quotas."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from .base import _Strict


KEY_NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"  # a Prometheus label value and a log field as it is
UNNAMED_KEYS = "default"  # the name of every key read from api_keys_env / api_keys_file
NO_KEY = "anonymous"  # the name requests get when no key is configured (an open API)


class NamedKey(_Strict):
    """Where one named key's secret is read from: exactly one of ``env`` and ``file``."""

    env: str | None = Field(None, description="Environment variable holding the key "
                            "(comma-separated: several valid at once, for rotation).")
    file: str | None = Field(None, description="File with the key, one per line (re-read when "
                             "it changes: rotation).")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.env is None) == (self.file is None):
            raise ValueError("set exactly one of env and file")
        return self


class Quota(_Strict):
    """A key's limits; each counts over the last 60 seconds (a sliding window), or at once."""

    requests_per_minute: int | None = Field(None, ge=1, description="Requests admitted in any "
                                            "60 seconds; None: no limit.")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="Prompt + completion tokens in any 60 seconds. A request "
        "reserves an upper bound of its prompt plus max_tokens x n when admitted; the "
        "reservation becomes its actual usage when it ends. None: no limit.")
    concurrent_requests: int | None = Field(None, ge=1, description="Requests in flight at "
                                            "once; None: no limit.")


class AccessSettings(_Strict):
    """API keys: never in the config, only where to read them from."""

    api_keys_env: str | None = Field(
        "QWEN_VL_API_KEYS", description="Environment variable holding comma-separated keys.")
    api_keys_file: str | None = Field(
        None, description="File with one key per line (re-read when it changes: rotation).")
    metrics: Literal["off", "key", "open"] = Field(
        "off", description="/metrics on the API port (the node's Ray and vLLM metrics): off, "
        "behind the API key, or open. Prometheus can always scrape server.metrics_port.")
    keys: dict[str, NamedKey] = Field(
        default_factory=dict, description="Named keys: name -> where its secret is read from. "
        "Requests are counted per name (metrics, access log) and quotas apply per name. Keys "
        f"from api_keys_env/api_keys_file are named '{UNNAMED_KEYS}'.")
    quotas: dict[str, Quota] = Field(
        default_factory=dict, description="Quotas per key name (a name of keys, or "
        f"'{UNNAMED_KEYS}', or '{NO_KEY}' for an API without keys). Over a quota: 429 with "
        "Retry-After before any engine work. Counted in one Ray actor that every engine "
        "replica on every node shares.")
    quota_store_timeout_s: float = Field(
        2, gt=0, description="How long a request waits for the quota actor's answer.")
    quota_store_unavailable: Literal["open", "closed"] = Field(
        "open", description="When the quota actor does not answer in time: open admits the "
        "request uncounted (a quota outage is not an API outage); closed refuses it with 503 "
        "and Retry-After.")

    @model_validator(mode="after")
    def _names(self):
        for name in self.keys:
            if not re.match(KEY_NAME, name) or name in (UNNAMED_KEYS, NO_KEY):
                raise ValueError(f"access.keys: {name!r} is not a usable key name (lower-case "
                                 f"letters, digits, '_.-', at most 63; not '{UNNAMED_KEYS}' or "
                                 f"'{NO_KEY}')")
        unknown = sorted(set(self.quotas) - set(self.keys) - {UNNAMED_KEYS, NO_KEY})
        if unknown:
            raise ValueError(f"access.quotas: {unknown} name no key in access.keys (nor "
                             f"'{UNNAMED_KEYS}' / '{NO_KEY}')")
        return self
