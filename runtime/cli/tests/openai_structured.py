"""Structured outputs, tool calls and the Responses API through the official `openai` client.

Usage: python openai_structured.py PORT MODEL. The server runs a random-weight model: what
is checked is what constrained decoding guarantees whatever the weights. Prints
`SKIP: <reason>` and exits 0 when `jsonschema` is missing; exits non-zero (with the reason)
on the first mismatch; prints OK when everything behaved as the OpenAI API documents.
"""
import concurrent.futures
import json
import sys
from enum import Enum
from typing import List, Literal, Optional

import openai
from pydantic import BaseModel, ConfigDict, Field

try:
    import jsonschema
except ImportError:
    print("SKIP: the `jsonschema` package is not installed")
    sys.exit(0)

port, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)


def check(cond, what):
    if not cond:
        sys.exit(f"FAIL: {what}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Color(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Address(Strict):
    city: str = Field(max_length=10)
    zip: int = Field(ge=10000, le=99999)


class Person(Strict):
    """Nested objects, an enum, an optional field, an array, numbers with bounds."""
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    favourite: Color
    nickname: Optional[str] = Field(default=None, max_length=6)
    address: Address
    scores: List[int] = Field(max_length=3)


class Reading(Strict):
    value: float = Field(ge=-5, le=5)
    unit: Literal["c", "f"]
    ok: bool


class Item(Strict):
    sku: str = Field(pattern=r"^[A-Z]{3}[0-9]{2}$")
    qty: int = Field(ge=1, le=9)


class Order(Strict):
    items: List[Item] = Field(min_length=1, max_length=2)
    rush: Optional[bool] = None


msgs = [{"role": "user", "content": "Answer in JSON."}]

# parse(): the client turns each model into a strict schema and parses the answer back.
for cls in (Person, Reading, Order):
    r = client.chat.completions.parse(model=model, messages=msgs, response_format=cls,
                                      max_tokens=300, temperature=1, seed=11)
    m = r.choices[0].message
    check(r.choices[0].finish_reason == "stop", f"{cls.__name__}: {r}")
    check(isinstance(m.parsed, cls), f"{cls.__name__} parsed: {m}")


# 100 seeded samples at temperature 1, several at once: every one valid under its schema.
def sample(i):
    cls = (Person, Reading, Order)[i % 3]
    schema = cls.model_json_schema()
    rf = {"type": "json_schema", "json_schema": {"name": cls.__name__, "schema": schema}}
    r = client.chat.completions.create(model=model, messages=msgs, response_format=rf,
                                       max_tokens=300, temperature=1, seed=i)
    text = r.choices[0].message.content
    try:
        jsonschema.validate(json.loads(text), schema)
    except Exception as e:  # noqa: BLE001 - the reason is the report
        return f"seed {i} ({cls.__name__}): {e}: {text!r}"
    return None


with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
    failures = [f for f in pool.map(sample, range(100)) if f]
check(not failures, f"{len(failures)} of 100 invalid, first: {failures[:1]}")

# Tools: required and named always call, with arguments valid under the function's schema.
weather = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                            "unit": {"enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": False}
tools = [{"type": "function", "function": {"name": "get_weather", "parameters": weather,
                                           "description": "The weather in a city"}}]


def calls_of(stream):
    calls, finish = {}, None
    for chunk in stream:
        for ch in chunk.choices:
            finish = ch.finish_reason or finish
            for tc in ch.delta.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                c["id"] = tc.id or c["id"]
                if tc.function and tc.function.name:
                    c["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    c["arguments"] += tc.function.arguments
    return [calls[i] for i in sorted(calls)], finish


for seed in range(6):
    choice = "required" if seed % 2 else {"type": "function", "function": {"name": "get_weather"}}
    # One call at most: a random model would add calls to the array until max_tokens.
    kw = dict(model=model, messages=[{"role": "user", "content": "Weather in Oslo?"}],
              tools=tools, tool_choice=choice, max_tokens=120, seed=seed,
              parallel_tool_calls=False)
    r = client.chat.completions.create(**kw)
    c = r.choices[0]
    check(c.finish_reason == "tool_calls" and c.message.tool_calls, f"seed {seed}: {r}")
    for call in c.message.tool_calls:
        check(call.type == "function" and call.function.name == "get_weather", f"{call}")
        jsonschema.validate(json.loads(call.function.arguments), weather)
    streamed, finish = calls_of(client.chat.completions.create(stream=True, **kw))
    whole = [{"name": t.function.name, "arguments": t.function.arguments}
             for t in c.message.tool_calls]
    check(finish == "tool_calls", f"streamed finish {finish}")
    check([{"name": s["name"], "arguments": s["arguments"]} for s in streamed] == whole,
          f"streamed {streamed} != {whole}")
    check(all(s["id"] for s in streamed), f"streamed ids: {streamed}")

# The round trip: call, result, final answer.
conv = [{"role": "user", "content": "What is the weather in Oslo?"}]
r = client.chat.completions.create(model=model, messages=conv, tools=tools,
                                   tool_choice="required", max_tokens=120, seed=3,
                                   parallel_tool_calls=False)
msg = r.choices[0].message
conv.append(msg.model_dump(exclude_none=True))
for call in msg.tool_calls:
    conv.append({"role": "tool", "tool_call_id": call.id, "content": "4 C and snow"})
final = client.chat.completions.create(model=model, messages=conv, tools=tools,
                                       tool_choice="none", max_tokens=8, seed=3)
check(final.choices[0].message.content and not final.choices[0].message.tool_calls,
      f"final answer: {final}")


class GetWeather(Strict):
    city: str = Field(max_length=12)


r = client.chat.completions.parse(model=model, messages=conv[:1],
                                  tools=[openai.pydantic_function_tool(GetWeather)],
                                  tool_choice="required", max_tokens=120, seed=5,
                                  parallel_tool_calls=False)
parsed = r.choices[0].message.tool_calls[0].function.parsed_arguments
check(isinstance(parsed, GetWeather), f"parsed_arguments: {r}")

# The Responses API, streamed and not.
kw = dict(model=model, input="Say hello", instructions="Be brief.", max_output_tokens=10,
          temperature=0)
resp = client.responses.create(**kw)
check(resp.output_text and resp.usage.output_tokens == 10, f"response: {resp}")
check(resp.status == "incomplete", f"status: {resp.status}")
deltas, done = [], None
for ev in client.responses.create(stream=True, **kw):
    if ev.type == "response.output_text.delta":
        deltas.append(ev.delta)
    elif ev.type in ("response.completed", "response.incomplete"):
        done = ev.response
check("".join(deltas) == resp.output_text, f"streamed {deltas!r} != {resp.output_text!r}")
check(done is not None and done.output_text == resp.output_text, f"final event: {done}")
r = client.responses.create(model=model, input="weather?", tool_choice="required",
                            tools=[{"type": "function", "name": "get_weather",
                                    "parameters": weather}], max_output_tokens=120,
                            parallel_tool_calls=False)
fc = [o for o in r.output if o.type == "function_call"]
check(fc and fc[0].name == "get_weather", f"responses tool call: {r.output}")
jsonschema.validate(json.loads(fc[0].arguments), weather)
if hasattr(client.responses, "parse"):
    r = client.responses.parse(model=model, input="a reading", text_format=Reading,
                               max_output_tokens=200)
    check(isinstance(r.output_parsed, Reading), f"responses.parse: {r}")

# Bad input: 400s; a grammar that cannot finish in max_tokens stops with `length`.
for bad in (dict(tools=tools, tool_choice={"type": "function", "function": {"name": "nope"}}),
            dict(tools=tools, tool_choice="auto"),
            dict(response_format={"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "object",
                                        "properties": {"a": {"type": "no-such-type"}}}}})):
    try:
        client.chat.completions.create(model=model, messages=msgs, max_tokens=5, **bad)
        sys.exit(f"FAIL: accepted {bad}")
    except openai.BadRequestError as e:
        check(isinstance(e.body, dict) and e.body.get("param"), f"400 body: {e.body}")
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=4,
                                   extra_body={"structured_outputs": {"regex": "a{500}"}})
check(r.choices[0].finish_reason == "length", f"unfinishable grammar: {r}")
try:
    client.responses.create(model=model, input="x", previous_response_id="resp_123")
    sys.exit("FAIL: previous_response_id was accepted")
except openai.BadRequestError:
    pass

print("OK")
