"""faster-whisper (CTranslate2) on the same directory and clip, for benches/stt_bench.rs:
greedy (beam 1) with faster-whisper's default temperature fallback, `cpu_threads` threads, one
warm-up, then the median of `runs` timed transcriptions. Prints one JSON line per compute type.

    python3 -m venv /tmp/speechvenv && /tmp/speechvenv/bin/pip install faster-whisper==1.2.1
"""
import json
import statistics
import sys
import time

from faster_whisper import WhisperModel

model_dir, clip, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024


for compute_type in sys.argv[5].split(","):
    before = rss_mb()
    model = WhisperModel(model_dir, device="cpu", compute_type=compute_type, cpu_threads=threads)

    def once():
        t = time.perf_counter()
        segments, info = model.transcribe(clip, beam_size=1, best_of=1, vad_filter=False)
        text = "".join(s.text for s in segments)
        return time.perf_counter() - t, text, info.duration

    once()
    # Resident after loading and one transcription (weights, caches, buffers) over before.
    growth = rss_mb() - before
    times, text, duration = [], "", 0.0
    for _ in range(runs):
        dt, text, duration = once()
        times.append(dt)
    print(json.dumps({"compute_type": compute_type, "seconds": statistics.median(times), "duration": duration,
                      "rss_growth_mb": growth, "text": text.strip()}), flush=True)
    del model
    import gc
    gc.collect()
