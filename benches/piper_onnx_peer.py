"""Piper's voice on onnxruntime (what piper-tts runs), for benches/tts_bench.rs: the same phoneme
ids per sentence, scales [0, 1, 0] (deterministic), `intra_op_num_threads` threads, one warm-up,
then the median of `runs` timed passes over all sentences. Prints one JSON line.

    python3 -m venv /tmp/speechvenv && /tmp/speechvenv/bin/pip install onnxruntime==1.32.0
"""
import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

onnx_path, ids_path, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sentences = json.load(open(ids_path))


def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024


before = rss_mb()
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
t = time.perf_counter()
session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
load = time.perf_counter() - t
scales = np.array([0.0, 1.0, 0.0], dtype=np.float32)


def speak(ids):
    x = np.array([ids], dtype=np.int64)
    return session.run(None, {"input": x, "input_lengths": np.array([len(ids)], dtype=np.int64), "scales": scales})[0]


def once():
    samples, first = 0, None
    t = time.perf_counter()
    for ids in sentences:
        samples += speak(ids).size
        if first is None:
            first = time.perf_counter() - t
    return time.perf_counter() - t, first, samples


once()
growth = rss_mb() - before
times, firsts, samples = [], [], 0
for _ in range(runs):
    dt, first, samples = once()
    times.append(dt)
    firsts.append(first)
print(json.dumps({"seconds": statistics.median(times), "first_sentence": statistics.median(firsts), "samples": samples,
                  "load": load, "rss_growth_mb": growth, "onnxruntime": ort.__version__}), flush=True)
