"""The official `openai` Python client's embeddings.create against /v1/embeddings (run by tests/embeddings.rs)."""
import json
import os

import openai

URL, TOKEN = os.environ["GW_URL"], os.environ["GW_TOKEN"]
client = openai.OpenAI(base_url=URL, api_key=TOKEN, max_retries=0, timeout=120)
out = {}
# The client asks for base64 by default and decodes it itself.
r = client.embeddings.create(model="minilm", input="This is an example sentence")
out["default"] = r.data[0].embedding[:3]
out["dim"] = len(r.data[0].embedding)
out["usage"] = r.usage.prompt_tokens
r = client.embeddings.create(model="minilm", input=["A man is eating food.", "A man is eating a piece of bread."], encoding_format="float")
a, b = r.data[0].embedding, r.data[1].embedding
out["cos"] = sum(x * y for x, y in zip(a, b))
r = client.embeddings.create(model="minilm", input="This is an example sentence", dimensions=64)
out["dim64"] = len(r.data[0].embedding)
out["norm64"] = sum(x * x for x in r.data[0].embedding) ** 0.5
try:
    client.embeddings.create(model="minilm", input="word " * 400)
    out["too_long"] = None
except openai.APIError as e:
    out["too_long"] = [type(e).__name__, e.code]
print(json.dumps(out))
