"""Chat messages checked for shape before anything renders them into a prompt.

vLLM's request model validates a message's ``content`` lazily (a pydantic ``ValidatorIterator``)
and accepts any role string, which the chat template renders verbatim. ``check_messages``
materialises every message (an invalid content part becomes a 400 naming the part, not an error
deep in the serving code), accepts only OpenAI's roles with their shapes, and refuses text that
carries Qwen2-VL's control tokens: typed into a message they would open a turn
(``<|im_start|>``) or a vision placeholder (``<|image_pad|>``) when the rendered prompt is
tokenized, so a request could forge a system turn or an image it never sent.

Qwen2-VL's grounding tokens (``<|object_ref_start|>``, ``<|box_start|>``, ``<|quad_start|>`` and
their ends) stay allowed: the model writes them in its answers, and clients send them back in
history and ask with them.
"""

from __future__ import annotations

from typing import Any, Iterator

from pydantic import ValidationError

from .rejections import RequestRejected, bad_request

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# Content part types each role may send (OpenAI: images and video in user messages only).
PART_TYPES = {
    "system": ("text",), "developer": ("text",), "tool": ("text",), "function": ("text",),
    "assistant": ("text",), "user": ("text", "image_url", "video_url"),
}
PART_TYPE_NAMES = PART_TYPES["user"]  # every type served, user messages taking them all
MEDIA_PARTS = {"image_url": "image", "video_url": "video"}
# The Qwen2-VL tokenizer's turn and vision control tokens (the same in every Qwen2-VL release;
# tests/launch/api/test_messages.py checks them against the tokenizer).
TURN_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                 "<|video_pad|>")
CONTROL_TOKENS = TURN_TOKENS + VISION_TOKENS
VOCAB_SIZE = 151936  # Qwen2-VL-2B's embedding rows (the smallest release's config vocab_size)
VISION_TOKEN_IDS = {151652: "<|vision_start|>", 151653: "<|vision_end|>",
                    151654: "<|vision_pad|>", 151655: "<|image_pad|>", 151656: "<|video_pad|>"}


def _unsupported_type(ptype: Any, param: str) -> RequestRejected:
    return bad_request(f"unsupported content part type {ptype!r}; supported: "
                       f"{', '.join(PART_TYPE_NAMES)}", f"{param}.type", "content_type")


def _materialise(value: Any, param: str, what: str) -> list:
    """A lazily validated iterable as a list; the first invalid item becomes a 400."""
    if isinstance(value, list):
        return value
    out: list = []
    it = iter(value)
    while True:
        try:
            out.append(next(it))
        except StopIteration:
            return out
        except (ValidationError, TypeError, ValueError) as err:
            raise _invalid_item(err, f"{param}[{len(out)}]", what) from None


def _invalid_item(err: Exception, param: str, what: str) -> RequestRejected:
    raw = None
    if isinstance(err, ValidationError) and err.errors():
        raw = err.errors()[0].get("input")
    if what == "content part":
        if not isinstance(raw, dict):
            return bad_request(f"a content part must be an object with a 'type', got "
                               f"{type(raw).__name__}", param, "content_type")
        ptype = raw.get("type")
        if ptype not in PART_TYPE_NAMES:
            return _unsupported_type(ptype, param)
        return bad_request(f"malformed {ptype} content part (expected "
                           f"{{'type': '{ptype}', '{ptype}': ...}})", param, "content_part")
    return bad_request(f"malformed {what}", param, "messages")


def check_messages(messages: list) -> list[tuple[dict, str, str]]:
    """Check every message in place; returns the media parts as (part, type, param)."""
    if not messages:
        raise bad_request("messages must not be empty", "messages", "messages")
    media: list[tuple[dict, str, str]] = []
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request("a message must be an object", param, "messages")
        role = msg.get("role")
        if role not in ROLES:
            shown = role if isinstance(role, str) and len(role) <= 40 else f"{str(role)[:40]}..."
            raise bad_request(f"role {shown!r} is not one of {', '.join(ROLES)}", f"{param}.role",
                              "role")
        content = msg.get("content")
        if content is not None and not isinstance(content, str):
            content = msg["content"] = _materialise(content, f"{param}.content", "content part")
        if msg.get("tool_calls") is not None:
            msg["tool_calls"] = _materialise(msg["tool_calls"], f"{param}.tool_calls",
                                             "tool call")
        _check_shape(msg, role, content, param)
        if isinstance(content, list):
            media += _check_parts(content, role, f"{param}.content")
        for where, text in _texts(msg, param):
            _check_text(text, where)
    return media


def _check_shape(msg: dict, role: str, content: Any, param: str) -> None:
    if role == "assistant":
        if content is None and not msg.get("tool_calls") and not msg.get("function_call"):
            raise bad_request("an assistant message needs content or tool_calls",
                              f"{param}.content", "messages")
    elif role == "function":
        if not isinstance(msg.get("name"), str) or not msg.get("name"):
            raise bad_request("a function message needs the function's name", f"{param}.name",
                              "messages")
    elif content is None:
        raise bad_request(f"a {role} message needs content", f"{param}.content", "messages")
    if role == "tool" and (not isinstance(msg.get("tool_call_id"), str)
                           or not msg["tool_call_id"]):
        raise bad_request("a tool message needs the tool_call_id it answers",
                          f"{param}.tool_call_id", "messages")


def _check_parts(parts: list, role: str, param: str) -> list[tuple[dict, str, str]]:
    media = []
    for j, part in enumerate(parts):
        where = f"{param}[{j}]"
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype not in PART_TYPE_NAMES:
            raise _unsupported_type(ptype, where)
        if ptype not in PART_TYPES[role]:
            raise bad_request(f"{ptype} parts are allowed in user messages only, not in a {role} "
                              "message", f"{where}.type", "content_type")
        extra = sorted(set(part) - {"type", ptype, "uuid"})
        if extra:
            raise bad_request(f"a {ptype} part has only 'type' and '{ptype}'; unexpected: "
                              f"{', '.join(map(str, extra))}", f"{where}.{extra[0]}",
                              "content_part")
        if ptype == "text" and not isinstance(part.get("text"), str):
            raise bad_request("a text part needs 'text' (a string)", f"{where}.text",
                              "content_part")
        if ptype in MEDIA_PARTS:
            media.append((part, ptype, f"{where}.{ptype}"))
    return media


def _texts(msg: dict, param: str) -> Iterator[tuple[str, str]]:
    """Every string of a message that a chat template may render, with its param."""
    content = msg.get("content")
    if isinstance(content, str):
        yield f"{param}.content", content
    elif isinstance(content, list):
        for j, part in enumerate(content):
            if part.get("type") == "text":
                yield f"{param}.content[{j}].text", part["text"]
    for key in ("name", "tool_call_id"):
        if isinstance(msg.get(key), str):
            yield f"{param}.{key}", msg[key]
    for k, call in enumerate(msg.get("tool_calls") or ()):
        fn = call.get("function") if isinstance(call, dict) else None
        for key in ("name", "arguments"):
            if isinstance(fn, dict) and isinstance(fn.get(key), str):
                yield f"{param}.tool_calls[{k}].function.{key}", fn[key]


def check_rendered_tree(value: Any, param: str) -> None:
    """Every string in a JSON value the chat template renders whole (a tool definition: its
    name, description, and every key, description, title, enum member and default of its
    parameter schema), keys included, with ``param`` the path to it."""
    if isinstance(value, str):
        _check_text(value, param)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                _check_text(key, f"{param}.{key}" if key.isidentifier() else f"{param}[{key!r}]")
            check_rendered_tree(item, f"{param}.{key}" if isinstance(key, str) and
                                key.isidentifier() else f"{param}[{key!r}]")
    elif isinstance(value, list):
        for k, item in enumerate(value):
            check_rendered_tree(item, f"{param}[{k}]")


def _check_text(text: str, param: str) -> None:
    _check_unicode(text, param)
    if "<|" not in text:
        return
    found = [(text.find(token), token) for token in CONTROL_TOKENS if token in text]
    if found:
        token = min(found)[1]  # the first one in the text
        raise bad_request(f"text contains the model's control token {token}; turn and vision "
                          "markers cannot be sent as text (send images and videos as "
                          "image_url/video_url parts)", param, "control_token")


def _check_unicode(text: str, param: str) -> None:
    """JSON may carry lone UTF-16 surrogates (``"\\ud800"``), which no tokenizer can encode."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise bad_request(f"text is not valid Unicode: a lone surrogate at character {err.start}",
                          param, "bad_text") from None


def check_prompt(prompt: Any, param: str = "prompt", vocab_size: int = VOCAB_SIZE) -> None:
    """A completions prompt is raw model input (turn tokens are the caller's own), but it has
    no images or videos: vision placeholders, as text or as token ids, are refused, and so are
    ids outside the served model's embedding (``vocab_size`` rows)."""
    if isinstance(prompt, str):
        _check_unicode(prompt, param)
        for token in VISION_TOKENS:
            if token in prompt:
                raise bad_request(f"prompt contains the vision token {token}; /v1/completions "
                                  "takes no images or videos (use /v1/chat/completions)", param,
                                  "control_token")
    elif isinstance(prompt, list):
        for k, item in enumerate(prompt):
            if isinstance(item, int):
                check_token_id(item, f"{param}[{k}]", vocab_size, "prompt token id")
            if isinstance(item, int) and item in VISION_TOKEN_IDS:
                raise bad_request(f"prompt contains the vision token id {item} "
                                  f"({VISION_TOKEN_IDS[item]}); /v1/completions takes no "
                                  "images or videos", f"{param}[{k}]", "control_token")
            if isinstance(item, (str, list)):
                check_prompt(item, f"{param}[{k}]", vocab_size)


def check_token_ids(ids: list, param: str, vocab_size: int = VOCAB_SIZE) -> None:
    """Token ids to detokenize: each one a row of the served model's embedding."""
    for k, item in enumerate(ids):
        check_token_id(item, f"{param}[{k}]", vocab_size)


def check_token_id(item: int, param: str, vocab_size: int, what: str = "token id") -> None:
    if not 0 <= item < vocab_size:
        raise bad_request(f"{what} {item} is outside the vocabulary (0 to {vocab_size - 1})", param,
                          "token_id")
