"""The official `openai` Python client's audio.transcriptions and audio.translations against
/v1/audio (run by tests/speech.rs)."""
import json
import os
import sys

import openai

URL, TOKEN, CLIPS = os.environ["GW_URL"], os.environ["GW_TOKEN"], os.environ["GW_CLIPS"]
client = openai.OpenAI(base_url=URL, api_key=TOKEN, max_retries=0, timeout=300)
out = {}
with open(os.path.join(CLIPS, "hello.wav"), "rb") as f:
    r = client.audio.transcriptions.create(model="whisper-1", file=f)
out["json"] = r.text
with open(os.path.join(CLIPS, "french.wav"), "rb") as f:
    r = client.audio.transcriptions.create(
        model="base", file=f, response_format="verbose_json", timestamp_granularities=["segment"]
    )
out["verbose"] = {"language": r.language, "duration": r.duration, "text": r.text,
                  "segments": [[s.start, s.end, s.text] for s in r.segments]}
with open(os.path.join(CLIPS, "meeting.wav"), "rb") as f:
    out["srt"] = client.audio.transcriptions.create(model="tiny", file=f, response_format="srt")
with open(os.path.join(CLIPS, "german.wav"), "rb") as f:
    r = client.audio.translations.create(model="base", file=f)
out["translation"] = r.text
try:
    client.audio.transcriptions.create(model="tiny", file=("notes.wav", b"not audio at all" * 64))
    out["junk"] = None
except openai.APIError as e:
    out["junk"] = [type(e).__name__, getattr(e, "status_code", None)]
print(json.dumps(out))
