#!/usr/bin/env python3
"""The official OpenAI Python client against `edgewise serve`. Exits non-zero on the first failure.
Usage: openai_client.py BASE_URL CHAT_MODEL EMBED_MODEL"""
import concurrent.futures
import json
import sys

import openai

base, chat_model, embed_model = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)

def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)

models = [m.id for m in client.models.list().data]
check(chat_model in models and embed_model in models, f"models list has both models: {models}")

q = [{"role": "user", "content": "What is 17 + 25? Reply with just the number."}]
r = client.chat.completions.create(model=chat_model, messages=q, temperature=0)
check(r.choices[0].message.content.strip() == "42", f"non-stream chat answers 42 ({r.choices[0].message.content!r})")
check(r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, "usage counts present")

chunks = list(client.chat.completions.create(model=chat_model, messages=q, temperature=0, stream=True,
                                             stream_options={"include_usage": True}))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(text.strip() == "42", f"streamed chat answers 42 ({text!r})")
check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0, "stream ends with usage")

tools = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
paris = client.chat.completions.create(model=chat_model, temperature=0, tools=tools,
                                       messages=[{"role": "user", "content": "What is the weather in Paris?"}])
r = paris
calls = r.choices[0].message.tool_calls or []
check(r.choices[0].finish_reason == "tool_calls" and len(calls) == 1, "tool call returned")
args = json.loads(calls[0].function.arguments)
check(calls[0].function.name == "get_weather" and isinstance(args.get("city"), str), f"tool call has valid JSON arguments {args}")

# Two independent questions: two calls in one turn (parallel_tool_calls defaults to true) ...
r = client.chat.completions.create(model=chat_model, temperature=0, tools=tools, messages=[
    {"role": "user", "content": "What is the weather in Paris and what is the weather in Tokyo?"}])
cities = sorted(json.loads(c.function.arguments).get("city", "") for c in r.choices[0].message.tool_calls or [])
check(cities == ["Paris", "Tokyo"], f"two questions give two parallel calls ({cities})")
# ... and one with parallel_tool_calls false.
r = client.chat.completions.create(model=chat_model, temperature=0, tools=tools, parallel_tool_calls=False, messages=[
    {"role": "user", "content": "What is the weather in Paris and what is the weather in Tokyo?"}])
check(len(r.choices[0].message.tool_calls or []) == 1, "parallel_tool_calls false gives one call")

# The tool result goes back and, with tool_choice left at auto, the model answers in text using it.
r2 = client.chat.completions.create(model=chat_model, temperature=0, tools=tools, messages=[
    {"role": "user", "content": "What is the weather in Paris?"},
    paris.choices[0].message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": calls[0].id, "content": json.dumps({"temp_c": 21, "sky": "sunny"})}])
answer = r2.choices[0].message.content or ""
check(r2.choices[0].finish_reason == "stop" and not r2.choices[0].message.tool_calls and "21" in answer
      and "<tool_call>" not in answer and not answer.lstrip().startswith("{"),
      f"the tool round trip ends in an answer that uses the result ({answer!r})")

# A question no tool fits is answered, not forced into the nearest tool, streamed or not.
for stream in (False, True):
    kwargs = dict(model=chat_model, temperature=0, tools=tools,
                  messages=[{"role": "user", "content": "What is the capital of France?"}])
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        called = any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    else:
        m = client.chat.completions.create(**kwargs).choices[0].message
        text, called = m.content or "", bool(m.tool_calls)
    check(not called and "Paris" in text, f"no tool fits: answered in text (stream={stream}, {text!r})")

r = client.chat.completions.create(model=chat_model, temperature=0, messages=[{"role": "user", "content": "Describe Oslo."}],
    response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": {
        "type": "object", "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
        "required": ["name", "country"], "additionalProperties": False}}})
obj = json.loads(r.choices[0].message.content)
check(set(obj) == {"name", "country"}, f"response_format json_schema gives valid JSON {obj}")

e = client.embeddings.create(model=embed_model, input=["pump pressure high", "valve open"])
check(len(e.data) == 2 and all(len(d.embedding) == 384 for d in e.data), "embeddings: 2 x 384 floats")
# [CLS] pump pressure high [SEP] + [CLS] valve open [SEP]: the tokenizer's count, not an estimate.
check(e.usage.prompt_tokens == 9, f"embedding usage counts BERT tokens ({e.usage.prompt_tokens})")

c = client.completions.create(model=chat_model, prompt="1, 2, 3, 4,", max_tokens=4, temperature=0)
check(c.choices[0].text.strip().startswith("5"), f"text completion continues ({c.choices[0].text!r})")

def ask(i):
    a, b = [(2, 3), (10, 20), (7, 8), (17, 25), (1, 1), (6, 6), (3, 4), (8, 1)][i]
    r = client.chat.completions.create(model=chat_model, temperature=0, max_tokens=8,
        messages=[{"role": "user", "content": f"What is {a} + {b}? Reply with just the number."}])
    return r.choices[0].message.content.strip(), str(a + b), r.choices[0].finish_reason

with concurrent.futures.ThreadPoolExecutor(8) as pool:
    results = list(pool.map(ask, range(8)))
good = sum(1 for got, want, fin in results if got == want and fin == "stop")
check(good == 8, f"8 concurrent clients all answered correctly and completely: {results}")

try:
    client.chat.completions.create(model="no-such-model", messages=q)
    check(False, "unknown model rejected")
except openai.NotFoundError as err:
    check(err.status_code == 404 and "no-such-model" in str(err), "unknown model -> 404 naming it")

try:
    client.chat.completions.create(model=chat_model, messages=[{"role": "user", "content": "word " * 5000}])
    check(False, "context overflow rejected")
except openai.BadRequestError as err:
    check(err.status_code == 400 and err.code == "context_length_exceeded" and "5000" not in str(err) and "tokens" in str(err),
          f"prompt over the context window -> 400 context_length_exceeded ({err})")
print("all openai client checks passed")
