"""The official `openai` Python client against a running pagedrt server.

Usage: python openai_client.py PORT MODEL API_KEY. Exits non-zero (with the reason) on the
first mismatch; prints OK when every call behaved as the OpenAI API documents.
"""
import sys

import openai

port, model, key = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)


def check(cond, what):
    if not cond:
        sys.exit(f"FAIL: {what}")


models = client.models.list()
check([m.id for m in models.data] == [model], f"models.list: {models}")

c = client.completions.create(model=model, prompt="Hello", max_tokens=8, temperature=0,
                              extra_body={"ignore_eos": True})
check(len(c.choices) == 1 and c.choices[0].finish_reason == "length", f"completion: {c}")
check(c.usage.completion_tokens == 8 and c.usage.prompt_tokens > 0, f"usage: {c.usage}")
text = c.choices[0].text

parts = []
for chunk in client.completions.create(model=model, prompt="Hello", max_tokens=8,
                                       temperature=0, stream=True,
                                       extra_body={"ignore_eos": True}):
    parts.extend(ch.text for ch in chunk.choices)
check("".join(parts) == text, f"streamed completion {parts!r} != {text!r}")

lp = client.completions.create(model=model, prompt="Hello", max_tokens=3, temperature=0,
                               logprobs=2, extra_body={"ignore_eos": True})
check(len(lp.choices[0].logprobs.token_logprobs) == 3, f"logprobs: {lp}")

chat = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Hi!"}], max_tokens=6, temperature=0,
    n=2, extra_body={"ignore_eos": True})
check(len(chat.choices) == 2, f"chat n=2: {chat}")
check(chat.choices[0].message.role == "assistant", f"chat role: {chat}")
check(chat.choices[0].message.content == chat.choices[1].message.content,
      "greedy samples of one prompt agree")

deltas, usage = [], None
stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Hi!"}], max_tokens=6, temperature=0,
    stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for ch in chunk.choices:
        if ch.delta.content:
            deltas.append(ch.delta.content)
check("".join(deltas) == chat.choices[0].message.content,
      f"streamed chat {deltas!r} != {chat.choices[0].message.content!r}")
check(usage is not None and usage.completion_tokens == 6, f"stream usage: {usage}")

try:
    client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    sys.exit("FAIL: an unknown model was accepted")
except openai.NotFoundError as e:
    check(e.body.get("code") == "model_not_found" if isinstance(e.body, dict) else True,
          f"404 body: {e.body}")

try:
    client.completions.create(model=model, prompt="x", max_tokens=1, temperature=-1)
    sys.exit("FAIL: a negative temperature was accepted")
except openai.BadRequestError:
    pass

bad = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0)
try:
    bad.models.list()
    sys.exit("FAIL: a wrong key was accepted")
except openai.AuthenticationError:
    pass

print("OK")
