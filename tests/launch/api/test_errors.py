import pytest

from launch.api.errors import GENERIC_5XX, normalize_error


def test_fastapi_detail_becomes_openai_shape():
    out = normalize_error(404, {"detail": 'Got request for model "x". Could not find base model with ID "x".'})
    assert out == {"error": {"message": 'Got request for model "x". Could not find base model with ID "x".',
                             "type": "not_found_error", "param": None, "code": 404}}


def test_ray_internal_details_are_removed_and_param_extracted():
    msg = ("Message: max_tokens=100000 cannot be greater than max_model_len=4096. Please request "
           "fewer output tokens. (parameter=max_tokens, value=100000) (Request ID: 1d), Internal "
           "exception: ray.llm._internal.serve.core.configs.openai_api_models.OpenAIHTTPException "
           "(Request ID: 1d), original exception: ")
    out = normalize_error(400, {"error": {"message": msg, "type": "OpenAIHTTPException", "param": None, "code": 400}})
    err = out["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "max_tokens"
    assert err["message"].startswith("max_tokens=100000 cannot be greater than max_model_len=4096")
    assert "ray.llm" not in err["message"] and "Request ID" not in err["message"]


def test_validation_detail_names_the_field():
    out = normalize_error(422, {"detail": [{"loc": ["body", "messages"], "msg": "Field required"}]})
    assert out["error"]["param"] == "messages"
    assert out["error"]["message"] == "messages: Field required"


def test_5xx_never_shows_a_traceback():
    out = normalize_error(500, {"error": {"message": 'Traceback (most recent call last):\n  File "x.py"'}})
    assert out["error"] == {"message": GENERIC_5XX, "type": "api_error", "param": None, "code": 500}


def test_non_dict_param_dropped():
    out = normalize_error(400, {"error": {"message": "Invalid request format", "type": "json_invalid",
                                          "param": {}, "code": "invalid_parameter"}})
    assert out["error"] == {"message": "Invalid request format", "type": "invalid_request_error",
                            "param": None, "code": "invalid_parameter"}


def errors_app():
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse, StreamingResponse

    from launch.api.errors import OpenAIErrors

    app = FastAPI()

    @app.get("/stream")
    async def stream():
        async def chunks():
            for i in range(3):
                yield f"data: {i}\n\n"
        return StreamingResponse(chunks(), media_type="text/event-stream",
                                 headers={"x-request-id": "r1"})

    @app.get("/missing")
    async def missing():
        raise HTTPException(404, "no such thing")

    @app.get("/busy")
    async def busy():
        return JSONResponse({"error": {"message": "later", "code": "overloaded"}, "extra": 1},
                            status_code=503, headers={"Retry-After": "3", "X-Other": "x"})

    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret internals")

    app.add_middleware(OpenAIErrors)
    return app


def test_asgi_middleware_passes_success_through_and_rewrites_errors():
    from fastapi.testclient import TestClient

    client = TestClient(errors_app(), raise_server_exceptions=False)
    r = client.get("/stream")
    assert r.status_code == 200 and r.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert r.headers["x-request-id"] == "r1"
    r = client.get("/missing")
    assert r.status_code == 404 and r.json() == {"error": {
        "message": "no such thing", "type": "not_found_error", "param": None, "code": 404}}
    assert int(r.headers["content-length"]) == len(r.content)
    r = client.get("/busy")
    assert r.status_code == 503 and r.headers["retry-after"] == "3" and "x-other" not in r.headers
    assert r.json() == {"error": {"message": "later", "type": "service_unavailable",
                                  "param": None, "code": "overloaded"}, "extra": 1}
    r = client.get("/boom")
    assert r.status_code == 500 and "secret" not in r.text
    assert r.json()["error"] == {"message": GENERIC_5XX, "type": "api_error", "param": None,
                                 "code": 500}


def test_asgi_middleware_an_error_cut_short_still_leaves_as_openai_json():
    from fastapi.testclient import TestClient

    from launch.api.errors import OpenAIErrors

    async def app(scope, receive, send):  # starts a 400, fails before its body ends
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b'{"detail": "x', "more_body": True})
        raise RuntimeError("internal detail")

    r = TestClient(OpenAIErrors(app), raise_server_exceptions=False).get("/")
    assert r.status_code == 500 and "internal" not in r.text
    assert r.json()["error"]["message"] == GENERIC_5XX


@pytest.mark.parametrize("message, param, text", [
    ("Invalid request format: Field required at ('body', 'messages', 0, "
     "'ChatCompletionDeveloperMessageParam', 'role')", "messages[0].role",
     "messages[0].role: Field required"),
    ("Invalid request format: Input should be a valid dictionary at ('body', 'messages', 0, "
     "'ChatCompletionDeveloperMessageParam')", "messages[0]",
     "messages[0]: Input should be a valid dictionary"),
    ("Invalid request format: Input should be a valid integer at ('body', 'max_tokens')",
     "max_tokens", "max_tokens: Input should be a valid integer"),
    ("Invalid request format: JSON decode error at ('body', 51)", None,
     "JSON decode error (body character 51)"),
])
def test_ray_validation_errors_name_the_field_not_the_value(message, param, text):
    """Ray's validation handler puts the offending value (a user's text, a whole message) in
    ``param``; the field comes from the error's location instead."""
    out = normalize_error(400, {"error": {"message": message, "type": "missing",
                                          "param": "the user's secret text", "code": "invalid_parameter"}})
    assert out["error"]["param"] == param and out["error"]["message"] == text


def test_a_location_inside_a_nested_validator_names_no_param():
    message = ("Invalid request format: Input should be a valid string at ('body', 0, "
               "'ChatCompletionMessageFunctionToolCallParam', 'id')")
    out = normalize_error(400, {"error": {"message": message, "param": 1, "code": "invalid_parameter"}})
    assert out["error"]["param"] is None
    assert out["error"]["message"] == "[0].id: Input should be a valid string"


def test_qualified_exception_names_are_dropped():
    out = normalize_error(400, {"error": {"message": "vllm.exceptions.VLLMValidationError: Stream "
                                          "options can only be defined when `stream=True`."}})
    assert out["error"]["message"] == "Stream options can only be defined when `stream=True`."
