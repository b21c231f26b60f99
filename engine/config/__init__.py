"""The one typed config: the single source of truth for engine, Ray Serve application and chart.

Loaded from YAML with ``yaml.safe_load``; every model forbids unknown keys, so a typo fails with
the key named. One module per section (as vLLM's ``vllm/config/``); ``serving`` joins them and
checks across them, ``load`` reads a file. ``engine.vllm_args`` maps a config onto vLLM's engine
arguments and checks each name against vLLM's own ``EngineArgs`` fields, so a flag renamed
upstream fails at load time, not deep in engine start-up.
"""

from .base import ConfigError
from .model import ModelSource
from .engine import EngineSettings
from .multimodal import MultimodalSettings, VIDEO_FRAME_CAP
from .limits import LimitsSettings, SchemaLimits, UrlPolicy
from .tools import TOOL_USE_TEMPLATE, ToolsSettings
from .access import AccessSettings, KEY_NAME, NO_KEY, NamedKey, Quota, UNNAMED_KEYS
from .deployment import Autoscaling, DeploymentSettings, RoutingSettings
from .server import (
    DEREGISTRATION_ENV, HAPROXY_BINARY_ENV, HAPROXY_PAGES_SCRIPT, HAPROXY_RETRY_ENV,
    PROXY_CHECK_ENV, RAY_FAST_PATH_ENV, RAY_NODE_ENV, ROUTER_BODY_ENV, ServerSettings,
    haproxy_pages_binary,
)
from .alerts import AlertSettings
from .serving import CPU_BLOCK_MULTIPLE, ServingConfig
from .load import load_config, parse_config

__all__ = [
    "AccessSettings",
    "AlertSettings",
    "Autoscaling",
    "CPU_BLOCK_MULTIPLE",
    "ConfigError",
    "DEREGISTRATION_ENV",
    "DeploymentSettings",
    "EngineSettings",
    "HAPROXY_BINARY_ENV",
    "HAPROXY_PAGES_SCRIPT",
    "HAPROXY_RETRY_ENV",
    "KEY_NAME",
    "LimitsSettings",
    "ModelSource",
    "MultimodalSettings",
    "NO_KEY",
    "NamedKey",
    "PROXY_CHECK_ENV",
    "Quota",
    "RAY_FAST_PATH_ENV",
    "RAY_NODE_ENV",
    "ROUTER_BODY_ENV",
    "RoutingSettings",
    "SchemaLimits",
    "ServerSettings",
    "ServingConfig",
    "TOOL_USE_TEMPLATE",
    "ToolsSettings",
    "UNNAMED_KEYS",
    "UrlPolicy",
    "VIDEO_FRAME_CAP",
    "haproxy_pages_binary",
    "load_config",
    "parse_config",
]
