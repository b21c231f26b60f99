"""Whether a config a load test derives can run here: the project's own checks, in one place for
the scenarios and for calibrate's merged config."""

from __future__ import annotations

from engine.checkpoint_fit import check_checkpoint
from engine.config import ConfigError, ServingConfig, parse_config


def check(data: dict, origin: str) -> tuple[ServingConfig | None, str | None]:
    """The project's own validation, the config's and the deploy step's checkpoint check:
    (config, None), or (None, why it cannot run here)."""
    try:
        cfg = parse_config(data, origin)
        check_checkpoint(cfg)
        return cfg, None
    except ConfigError as err:
        return None, str(err).strip().removeprefix(f"invalid config {origin}:").strip()
