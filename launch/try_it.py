"""The self-contained request ``qwen-vl serve`` prints once the stack is healthy."""

from __future__ import annotations

import json

from engine.config import ServingConfig

from launch.cluster.connect import base_url

# A 28x28 red PNG (the smallest image accepted), so the example needs no file.
_PNG = ("iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAIAAAD9b0jDAAAAKElEQVR42mM8ISfHQG3AxEADMGroqKGjho4aOmroqKGjho4aOvgMBQB+BAE8FfyCFgAAAABJRU5ErkJggg==")


def curl_example(cfg: ServingConfig) -> str:
    url = base_url(cfg.server.host, cfg.server.port)
    body = {
        "model": cfg.model.served_name,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_PNG}"}},
            {"type": "text", "text": "What is in this image?"},
        ]}],
        "max_tokens": 32,
    }
    return (
        f"curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f"  -d '{json.dumps(body)}'"
    )
