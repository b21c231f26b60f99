"""What the image-affinity router routes on: a key per image or video of a chat request, read
from the request body as the client sent it.

A key is the hash of the item's reference: a data URL's whole text (so its content) or a
URL. Nothing is fetched or decoded here, and nothing here rejects a request: whatever the body
holds, the worst outcome is no keys, and the front door of the replica it reaches judges it. The
engine's own cache key (``launch.api.media.content_key``) is the hash of the validated bytes,
made by the replica: a key a client could send alongside the body would let it name another
item's cache entry, so the replica never takes one from outside.
"""

from __future__ import annotations

import hashlib
from typing import Any

# The chat content parts that carry media (``launch.api.messages.MEDIA_PARTS``; a test keeps
# the two equal).
MEDIA_PART_TYPES = ("image_url", "video_url")
MAX_KEYS = 16  # per request: more items add nothing to the choice of a replica


def media_keys(request: Any) -> list[str]:
    """The keys of a request's media in order of appearance, each once; [] for a request
    without media or a body that is not a chat request. ``request``: Ray's routing payload
    (the body's fields as attributes) or a dict."""
    messages = (request.get("messages") if isinstance(request, dict)
                else getattr(request, "messages", None))
    if not isinstance(messages, list):
        return []
    keys: list[str] = []
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            ref = _reference(part)
            if ref is None:
                continue
            key = hashlib.blake2b(ref.encode("utf-8", "surrogatepass"),
                                  digest_size=12).hexdigest()
            if key not in keys:
                keys.append(key)
                if len(keys) == MAX_KEYS:
                    return keys
    return keys


def _reference(part: Any) -> str | None:
    if not isinstance(part, dict) or part.get("type") not in MEDIA_PART_TYPES:
        return None
    holder = part.get(part["type"])
    url = holder.get("url") if isinstance(holder, dict) else holder
    return url if isinstance(url, str) and url else None
