"""Records faster-whisper's log-mel features, once, for the Rust feature extractor to match:
its Slaney mel filters (80 x 201) and the features of hello.wav exactly as
`WhisperModel.transcribe` computes them (160 samples of padding, the global max - 8 floor).

    /tmp/speechvenv/bin/python models/tests/data/speech/record_whisper_features.py
Writes models/tests/data/speech/whisper_features.safetensors.
"""

import os
import wave

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor
from safetensors.numpy import save_file

here = os.path.dirname(os.path.abspath(__file__))


def pcm(name):
    with wave.open(os.path.join(here, name + ".wav")) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


fe = FeatureExtractor(feature_size=80)
tensors = {"mel_filters": np.ascontiguousarray(fe.mel_filters.astype(np.float32))}
for clip in ["hello"]:
    tensors[clip + ".features"] = np.ascontiguousarray(fe(pcm(clip)).astype(np.float32))
    print(clip, tensors[clip + ".features"].shape)
save_file(tensors, os.path.join(here, "whisper_features.safetensors"))
