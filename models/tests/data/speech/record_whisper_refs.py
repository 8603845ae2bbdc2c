"""Records faster-whisper's (CTranslate2's) greedy output on the speech clips, once, as the
reference the Rust whisper engine must match: the tokens of every segment, with and without
timestamps, and the language detected by the multilingual model.

A throwaway venv, never CI:
    python3 -m venv /tmp/speechvenv && /tmp/speechvenv/bin/pip install faster-whisper
    scripts/fetch-models.sh --dest .models whisper-base whisper-tiny.en
    /tmp/speechvenv/bin/python models/tests/data/speech/record_whisper_refs.py .models
Writes models/tests/data/speech/whisper_refs.json.
"""

import json
import os
import sys

import ctranslate2
import faster_whisper
from faster_whisper import WhisperModel

here = os.path.dirname(os.path.abspath(__file__))
store = sys.argv[1] if len(sys.argv) > 1 else ".models"
clips = ["hello", "system", "meeting", "french", "german", "long"]
out = {
    "recorder": "faster-whisper %s, ctranslate2 %s, compute_type float32, 1 thread"
    % (faster_whisper.__version__, ctranslate2.__version__),
    "decoding": "beam_size 1, best_of 1, temperature [0.0] (no fallback), condition_on_previous_text, no VAD",
    "models": {},
}
for name, multilingual in [("whisper-base", True), ("whisper-tiny.en", False)]:
    model = WhisperModel(os.path.join(store, name), device="cpu", compute_type="float32", cpu_threads=1)
    runs = {}
    for clip in clips:
        if not multilingual and clip in ("french", "german"):
            continue
        path = os.path.join(here, clip + ".wav")
        entry = {}
        for ts in (False, True):
            segments, info = model.transcribe(
                path,
                beam_size=1,
                best_of=1,
                temperature=[0.0],
                without_timestamps=not ts,
                condition_on_previous_text=True,
                vad_filter=False,
            )
            segs = [
                {"start": round(s.start, 2), "end": round(s.end, 2), "text": s.text, "tokens": list(s.tokens)}
                for s in segments
            ]
            entry["timestamps" if ts else "plain"] = segs
            entry["language"] = info.language
            entry["language_probability"] = round(info.language_probability, 4)
        runs[clip] = entry
        print(name, clip, entry["language"], "|", "".join(s["text"] for s in entry["plain"]))
    out["models"][name] = runs
with open(os.path.join(here, "whisper_refs.json"), "w") as f:
    json.dump(out, f, indent=1, ensure_ascii=False)
    f.write("\n")
