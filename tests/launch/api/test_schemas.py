"""A request's schemas, regexes and grammars under ``limits.schemas`` (``launch.api.schemas``):
sizes and shapes refused by the rule that names them, grammars the engine could not build
refused with xgrammar's reason, and grammars over the compile budget refused, the worker that
built them ended when they run past twice the budget plus a second."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from engine.config import SchemaLimits
from engine.embedded_model import tokenizer_files_dir
from launch.api.rejections import RequestRejected
from launch.api.request_models import ChatRequest
from launch.api.schemas import GrammarBudget, check_shape, items_of
from tests.utils import rejected_by

VOCAB = 151936  # Qwen2-VL's embedding rows


def body(**kw) -> ChatRequest:
    return ChatRequest.model_validate({"model": "m", "messages": [{"role": "user",
                                                                   "content": "hi"}], **kw})


def answer(schema) -> dict:
    return {"response_format": {"type": "json_schema",
                                "json_schema": {"name": "a", "schema": schema}}}


def tool(parameters) -> dict:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


def obj(**props) -> dict:
    return {"type": "object", "properties": props}


refused = rejected_by


@pytest.fixture(scope="module")
def budget():
    b = GrammarBudget(SchemaLimits(), str(tokenizer_files_dir()), VOCAB, compact=True)
    yield b
    b.close()


def test_items_are_every_place_the_engine_builds_a_grammar_from():
    items = items_of(body(tools=[tool(obj(a={"type": "string"}))],
                          structured_outputs={"regex": "[a-z]+"}, **answer(obj())))
    assert [(k, p) for k, _, p in items] == [
        ("json", "tools[0].function.parameters"),
        ("json", "response_format.json_schema.schema"),
        ("regex", "structured_outputs.regex")]


@pytest.mark.parametrize("limit, just_under, just_over, param, rule", [
    ("max_enum_members", obj(c={"enum": list(range(4))}), obj(c={"enum": list(range(5))}),
     "response_format.json_schema.schema", "4 enum and const|5 enum and const"),
    ("max_depth", obj(c=obj(d={"type": "string"})), obj(c=obj(d=obj())),
     "response_format.json_schema.schema.properties.c.properties.d.properties",
     "nests 6 .* limit is 5"),
    ("max_pattern_chars", obj(c={"type": "string", "pattern": "a" * 4}),
     obj(c={"type": "string", "pattern": "a" * 5}),
     "response_format.json_schema.schema.properties.c.pattern", "5 characters; the limit is 4"),
])
def test_shape_limits_hold_just_under_and_refuse_just_over(limit, just_under, just_over, param,
                                                          rule):
    lim = SchemaLimits(**{limit: 5 if limit == "max_depth" else 4})
    check_shape(items_of(body(**answer(just_under))), lim)
    err = refused(lambda: check_shape(items_of(body(**answer(just_over))), lim), param, rule)
    assert f"limits.schemas.{limit}" in err.message


def test_bytes_count_every_schema_of_the_request_together():
    schema = obj(city={"type": "string"})
    size = len(json.dumps(schema, separators=(",", ":")))
    lim = SchemaLimits(max_bytes=max(256, 2 * size))
    two = body(tools=[tool(schema)], **answer(schema))
    check_shape(items_of(two), lim)
    over = SchemaLimits(max_bytes=256)
    big = obj(city={"type": "string", "description": "x" * (256 - size)})
    err = refused(lambda: check_shape(items_of(body(tools=[tool(schema)], **answer(big))), over),
                  "response_format.json_schema.schema", "the limit is 256")
    assert f"are {size + len(json.dumps(big, separators=(',', ':')))} bytes" in err.message


def test_choices_count_as_enum_members():
    lim = SchemaLimits(max_enum_members=3)
    check_shape(items_of(body(structured_outputs={"choice": ["a", "b", "c"]})), lim)
    refused(lambda: check_shape(items_of(body(structured_outputs={"choice": list("abcd")})), lim),
            "structured_outputs.choice", "4 choices; the limit is 3")


@pytest.mark.parametrize("schema, match", [
    (obj(x={"type": "string", "pattern": "(?<=a)b"}),
     "grammar cannot be built from this: Regex parsing error at position 3: Lookbehind is not "
     "supported"),
    (obj(x={"$ref": "#/$defs/missing"}), "Cannot find field \\$defs"),
    (obj(x={"type": "integer", "minimum": 10, "maximum": 1}), "minimum greater than maximum"),
])
def test_a_grammar_the_engine_cannot_build_is_refused_with_xgrammars_reason(budget, schema,
                                                                          match):
    for req in (body(tools=[tool(schema)]), body(**answer(schema))):
        param = items_of(req)[0][2]
        err = refused(lambda: budget.check(items_of(req)), param, match)
        assert not re.search(r"\.(cc|h|py):\d", err.message), err.message  # no source line


def test_compile_budget_holds_just_under_and_refuses_just_over(budget):
    """The CPU a grammar took is kept by content hash, so the same schema measured once is
    judged against budgets just above and just below what it took."""
    schema = obj(c={"enum": [f"member-{i:04d}" for i in range(600)]})
    items = items_of(body(**answer(schema)))
    took = budget._cpu_s("json", json.dumps(schema, separators=(",", ":"),
                                           ensure_ascii=False), 10)
    assert isinstance(took, float) and took > 0, took
    under = GrammarBudget(SchemaLimits(compile_budget_s=took * 1.01), "", VOCAB, True)
    over = GrammarBudget(SchemaLimits(compile_budget_s=took * 0.99), "", VOCAB, True)
    under.seen = over.seen = budget.seen  # what the shared worker measured; no worker of theirs
    under.check(items)
    err = refused(lambda: over.check(items), "response_format.json_schema.schema",
                  "took .* of CPU by this one; the limit is")
    assert "limits.schemas.compile_budget_s" in err.message


def test_a_build_past_twice_the_budget_is_ended_and_builds_beside_it_are_served(budget):
    """A 30-character regex with nested repetition takes seconds of compile: its build is
    killed at 2 x budget + 1 s, a small schema sent meanwhile is answered while it runs, and
    the worker (its tokenizer loaded) goes on without a restart."""
    lim = SchemaLimits(compile_budget_s=0.2)
    short = GrammarBudget(lim, str(tokenizer_files_dir()), VOCAB, compact=True)
    try:
        short.check(items_of(body(**answer(obj()))))  # starts the worker (not timed)
        worker = short.proc.pid
        slow = obj(p={"type": "string", "pattern": "([a-z]{1,30}[0-9]{2,20}){1,50}"})
        outcome: dict = {}

        def send_slow():
            try:
                short.check(items_of(body(**answer(slow))))
            except RequestRejected as err:
                outcome["err"] = err
            outcome["at"] = time.monotonic()

        start = time.monotonic()
        slow_thread = threading.Thread(target=send_slow)
        slow_thread.start()
        short.check(items_of(body(**answer(obj(a={"type": "integer"})))))
        small_done = time.monotonic()
        slow_thread.join()
        assert "at" in outcome and small_done < outcome["at"], "the small build waited"
        err = outcome["err"]
        assert err.status == 400 and err.param == "response_format.json_schema.schema"
        assert "over 1.40 s (ended)" in err.message, err.message
        assert outcome["at"] - start < 1.4 + 1, err.message  # ended, not waited for
        assert short.proc.pid == worker and short.proc.poll() is None
    finally:
        short.close()


def test_a_schema_nested_past_any_allowed_depth_is_a_400_not_a_recursion_error():
    """The walk stops at the first node past the limit, so a document nested 900 deep (as
    deep as the JSON parser takes) costs no deeper recursion than the limit."""
    deep: dict = {"type": "string"}
    for _ in range(450):
        deep = {"type": "object", "properties": {"a": deep}}
    refused(lambda: check_shape(items_of(body(**answer(deep))), SchemaLimits(max_depth=200)),
            "response_format.json_schema.schema" + ".properties.a" * 100, "nests 201")
