"""The request models of the routes we serve: Ray Serve LLM's (vLLM's), made total.

vLLM's request models run validators that assume the shape they validate (``messages`` a list),
and a wrong shape raises ``TypeError`` inside validation, which pydantic does not turn into a
validation error: the client would get a 500. These subclasses check the shape first and turn
any such slip into a validation error, so FastAPI answers it as a 400 naming the field.
"""

from __future__ import annotations

from pydantic import ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest


def _invalid(model: str, field: str, message: str, value) -> ValidationError:
    return ValidationError.from_exception_data(model, [InitErrorDetails(
        type=PydanticCustomError("invalid_shape", message), loc=(field,), input=value)])


def _validated(cls, data, handler, lists: tuple[str, ...]):
    if isinstance(data, dict):
        for field in lists:
            if field in data and not isinstance(data[field], list) and \
                    (data[field] is not None or field == "messages"):
                raise _invalid(cls.__name__, field, f"{field} must be a list", data[field])
    try:
        return handler(data)
    except (TypeError, AttributeError, KeyError) as err:
        raise ValueError(f"malformed request ({type(err).__name__}: {err})") from None


class ChatRequest(ChatCompletionRequest):
    @model_validator(mode="wrap")
    @classmethod
    def _total(cls, data, handler):
        if isinstance(data, dict) and "messages" not in data:
            raise _invalid(cls.__name__, "messages", "messages is required", None)
        return _validated(cls, data, handler, ("messages", "tools"))


class CompletionsRequest(CompletionRequest):
    @model_validator(mode="wrap")
    @classmethod
    def _total(cls, data, handler):
        return _validated(cls, data, handler, ())
