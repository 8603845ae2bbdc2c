"""llama.cpp (llama-cpp-python) side of benches/text_bench.rs: the same GGUF, prompt, thread
count and greedy decoding, timed the same way. Prints one JSON object.

  python benches/llama_cpp_peer.py MODEL.gguf THREADS PROMPT_IDS_JSON N_DECODE REPS LONG_IDS_JSON [CHAT_MESSAGES_JSON]

With CHAT_MESSAGES_JSON it also times a streamed chat completion (create_chat_completion with
stream=True, greedy, N_DECODE tokens) the way a client of llama-cpp-python sees one, and the
model's load time (a fresh Llama() on the same file, median of 3).
"""
import json
import sys
import time

import llama_cpp

path, threads, prompt, n_decode, reps, long_prompt = (
    sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), json.loads(sys.argv[6]))
chat = json.loads(sys.argv[7]) if len(sys.argv) > 7 else None


def load():
    return llama_cpp.Llama(model_path=path, n_ctx=4096, n_threads=threads, n_threads_batch=threads, n_batch=2048, verbose=False)


llm = load()


def greedy(ids, n):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    tok = llm.sample(temp=0.0)
    t_first = time.perf_counter()
    out = [tok]
    for _ in range(n - 1):
        llm.eval([tok])
        tok = llm.sample(temp=0.0)
        out.append(tok)
    t_end = time.perf_counter()
    return (t_first - t0) * 1e3, (n - 1) / (t_end - t_first), out


greedy(prompt, 8)  # warm-up
runs = [greedy(prompt, n_decode) for _ in range(reps)]
ttft = sorted(r[0] for r in runs)[len(runs) // 2]
tps = sorted(r[1] for r in runs)[len(runs) // 2]
long_ttft = sorted(greedy(long_prompt, 1)[0] for _ in range(max(1, reps // 2)))
out = {"ttft_ms": ttft, "decode_tps": tps, "tokens": runs[0][2],
       "long_ttft_ms": long_ttft[len(long_ttft) // 2], "version": llama_cpp.__version__}


def streamed_chat():
    llm.reset()
    t0 = time.perf_counter()
    stamps = []
    for chunk in llm.create_chat_completion(messages=chat, temperature=0.0, max_tokens=n_decode, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            stamps.append(time.perf_counter())
    return (stamps[0] - t0) * 1e3, (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)


if chat is not None:
    chats = [streamed_chat() for _ in range(3)]
    out["chat_ttft_ms"] = chats[0][0]  # the first: nothing of this prompt cached yet
    out["chat_decode_tps"] = sorted(c[1] for c in chats)[1]
    out["chat_chunks"] = chats[0][2]
    loads = []
    for _ in range(3):
        t0 = time.perf_counter()
        m = load()
        loads.append((time.perf_counter() - t0) * 1e3)
        del m
    out["load_ms"] = sorted(loads)[1]
print(json.dumps(out))
