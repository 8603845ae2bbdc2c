"""The official `openai` Python client's audio.speech against /v1/audio/speech (run by
tests/tts.rs): a whole wav, a streamed pcm, and a refused mp3."""
import json
import os

import openai

URL, TOKEN, OUT = os.environ["GW_URL"], os.environ["GW_TOKEN"], os.environ["GW_OUT"]
client = openai.OpenAI(base_url=URL, api_key=TOKEN, max_retries=0, timeout=300)
out = {}
r = client.audio.speech.create(model="tts-1", voice="alloy", input="The quick brown fox jumps over the lazy dog.",
                               response_format="wav", extra_body={"seed": 3})
r.write_to_file(os.path.join(OUT, "client.wav"))
out["wav_bytes"] = len(r.content)
chunks = 0
size = 0
with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Hello there. This is streamed. Sentence by sentence.", response_format="pcm") as s:
    for c in s.iter_bytes():
        chunks += 1
        size += len(c)
out["pcm"] = {"chunks": chunks, "bytes": size}
try:
    client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="mp3")
    out["mp3"] = None
except openai.APIError as e:
    out["mp3"] = [type(e).__name__, getattr(e, "status_code", None), str(e)]
print(json.dumps(out))
