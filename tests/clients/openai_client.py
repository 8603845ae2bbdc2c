"""The official `openai` Python client against the gateway's /v1 surface (run by tests/openai_api.rs)."""
import json
import os

import openai

URL, TOKEN = os.environ["GW_URL"], os.environ["GW_TOKEN"]
client = openai.OpenAI(base_url=URL, api_key=TOKEN, max_retries=0, timeout=300)
out = {}

out["models"] = [m.id for m in client.models.list()]

c = client.completions.create(
    model="smollm2",
    prompt="<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    max_tokens=32,
    temperature=0,
)
out["completion"] = c.choices[0].text

msgs = [{"role": "user", "content": "Say hello."}]
r = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=5, temperature=0)
out["chat_text"] = r.choices[0].message.content
out["chat_finish"] = r.choices[0].finish_reason
out["chat_tokens"] = r.usage.completion_tokens

parts = []
with client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=5, temperature=0, stream=True) as s:
    for chunk in s:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
out["stream_text"] = "".join(parts)

for key, call in [
    ("bad_key_error", lambda: openai.OpenAI(base_url=URL, api_key="wrong-key-0123456789", max_retries=0).models.list()),
    ("missing_model_error", lambda: client.chat.completions.create(model="nope", messages=msgs)),
    ("overflow_error", lambda: client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "x " * 10000}])),
]:
    try:
        call()
        out[key] = None
    except openai.APIError as e:
        out[key] = type(e).__name__

print(json.dumps(out))
