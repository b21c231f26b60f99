"""The request models of the routes we serve: vLLM's, made total.

vLLM's request models run validators that assume the shape they validate (``messages`` a list),
and a wrong shape raises ``TypeError`` inside validation, which pydantic does not turn into a
validation error: the client would get a 500. These subclasses check the shape first and turn
any such slip into a validation error, so FastAPI answers it as a 400 naming the field.
"""

from __future__ import annotations

from typing import Union

from pydantic import ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.serve.tokenize.protocol import (
    DetokenizeRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)


def _invalid(model: str, field: str, message: str, value) -> ValidationError:
    return ValidationError.from_exception_data(model, [InitErrorDetails(
        type=PydanticCustomError("invalid_shape", message), loc=(field,), input=value)])


def _validated(cls, data, handler, *, required: tuple[str, ...] = (),
               lists: tuple[str, ...] = ()):
    """``required`` fields must be present and lists; ``lists`` fields, when set (not null),
    lists; then vLLM's own validation, with any TypeError-like slip as a validation error."""
    if isinstance(data, dict):
        for field in required:
            if field not in data:
                raise _invalid(cls.__name__, field, f"{field} is required", None)
        for field in required + lists:
            value = data.get(field)
            if field in data and not isinstance(value, list) and \
                    (value is not None or field in required):
                raise _invalid(cls.__name__, field, f"{field} must be a list", value)
    try:
        return handler(data)
    except (TypeError, AttributeError, KeyError) as err:
        raise ValueError(f"malformed request ({type(err).__name__}: {err})") from None


def _total(base: type, name: str, *, required: tuple[str, ...] = (),
           lists: tuple[str, ...] = ()) -> type:
    """``base`` with its shape checked first (``_validated``)."""
    def check(cls, data, handler):
        return _validated(cls, data, handler, required=required, lists=lists)

    return type(name, (base,), {"__module__": __name__, "__doc__": base.__doc__,
                                "_total": model_validator(mode="wrap")(classmethod(check))})


ChatRequest = _total(ChatCompletionRequest, "ChatRequest", required=("messages",),
                     lists=("tools",))
CompletionsRequest = _total(CompletionRequest, "CompletionsRequest")
TokenizeChat = _total(TokenizeChatRequest, "TokenizeChat", required=("messages",),
                      lists=("tools",))
TokenizeText = _total(TokenizeCompletionRequest, "TokenizeText")
DetokenizeBody = _total(DetokenizeRequest, "DetokenizeBody", required=("tokens",))

# /tokenize takes a prompt (vLLM's completion form) or messages (rendered by the chat template,
# tools included), as vLLM's own server does.
TokenizeBody = Union[TokenizeText, TokenizeChat]
