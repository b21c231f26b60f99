"""``limits:``: what the front door enforces before a request reaches an engine."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..vision import PATCH_FACTOR, TOKEN_PIXELS
from .base import _Strict


class UrlPolicy(_Strict):
    """How the front door fetches image/video URLs (the engine never fetches: it gets the
    validated bytes)."""

    schemes: list[Literal["https", "http", "data"]] = Field(
        default_factory=lambda: ["https", "data"], description="Allowed URL schemes.")
    allowed_domains: list[str] = Field(
        default_factory=list, description="If set, only these hosts (and their subdomains).")
    allowed_networks: list[str] = Field(
        default_factory=list, description="CIDRs that may be fetched although not public "
        "(loopback, private, link-local/metadata, fc00::/7 are refused otherwise; every "
        "resolved address is checked, redirects included), e.g. ['10.20.0.0/16'].")

    @model_validator(mode="after")
    def _cidrs(self):
        import ipaddress

        for net in self.allowed_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"allowed_networks: {net!r} is not a CIDR network") from None
        return self
    fetch_timeout_s: float = Field(10, gt=0, description="Deadline of a whole media URL fetch: "
                                   "connecting, headers, body and every redirect hop together.")
    max_redirects: int = Field(3, ge=0, description="Redirects followed per fetch (each hop "
                               "re-checked).")


class SchemaLimits(_Strict):
    """What one request's JSON schemas may be (tool parameters, ``response_format``
    json_schema, ``structured_outputs``): the engine builds a decoding grammar from each, and a
    large or pathological one holds up every structured request on its replica while it
    compiles. Sizes and shapes refuse the obvious; the compile budget bounds the rest."""

    max_bytes: int = Field(32 << 10, ge=256, description="All of a request's schemas, regexes "
                           "and grammars together, as compact JSON/text.")
    max_enum_members: int = Field(1024, ge=1, description="enum/const members in one request's "
                                  "schemas together.")
    max_depth: int = Field(32, ge=1, le=200, description="Nesting of JSON objects and arrays in a "
                           "schema document (a property of a property is 4 deeper than the "
                           "first: its properties map and itself).")
    max_pattern_chars: int = Field(1000, ge=1, description="Length of each regex (a schema's "
                                   "pattern or a structured_outputs regex).")
    compile_budget_s: float = Field(
        0.5, gt=0, description="CPU seconds the decoding grammar of one request may take to "
        "build with the served tokenizer, measured in the front door (in a worker process, "
        "ended at twice the budget plus one second); over it: a 400 naming the field.")


class LimitsSettings(_Strict):
    """What the front door enforces before a request reaches an engine."""

    max_body_bytes: int = Field(32 << 20, ge=1024, description="Request body (413 above).")
    max_image_bytes: int = Field(10 << 20, ge=1, description="Encoded bytes per image.")
    max_image_pixels: int = Field(
        50_000_000, ge=TOKEN_PIXELS, description="Decoded pixels per image, read from the header "
        "before decoding (decompression bombs are refused in milliseconds).")
    min_image_side: int = Field(PATCH_FACTOR, ge=1, description="Smallest width/height accepted.")
    max_aspect_ratio: float = Field(200, ge=1, description="Qwen2-VL's processor limit.")
    max_video_bytes: int = Field(128 << 20, ge=1, description="Encoded bytes per video file.")
    max_video_seconds: float = Field(
        3600, gt=0, description="Duration per video file, from its container header (a long "
        "video is sampled into multimodal.video_max_tokens whatever its length).")
    max_n: int = Field(4, ge=1, description="Choices per request.")
    max_tools: int = Field(128, ge=1, description="Tool definitions per request (each one is "
                           "rendered into the prompt).")
    max_tokens: int | None = Field(
        None, ge=1, description="Output tokens per request; None: engine.max_model_len.")
    url: UrlPolicy = Field(UrlPolicy(), description="How image and video URLs are fetched.")
    schemas: SchemaLimits = Field(SchemaLimits(), description="Size, shape and grammar-build "
                                  "time of a request's JSON schemas and regexes.")
    media_dir: str | None = Field(
        None, description="Local files may be referenced (file:// or a path) only inside it.")
    allow_request_chat_template: bool = Field(
        False, description="Let requests send their own Jinja chat template.")
