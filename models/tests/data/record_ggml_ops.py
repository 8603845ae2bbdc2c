"""Records llama.cpp's intermediate tensors (one llama_decode of SmolLM2) for the op-by-op check
in models/src/llama_ggml_check.rs, which feeds each op of our forward pass ggml's input for that op
and asserts that its output equals ggml's to the bit.

    python models/tests/data/record_ggml_ops.py <SmolLM2 .gguf> models/tests/data/ggml_ops

writes ggml_ops/prompt.{bin,json} (the first PROMPT_LEN=4 tokens of smollm2_greedy.json's first
case, as one batch) and ggml_ops/decode.{bin,json} (one decode step, token 60, after them). Only
the tensors the check reads are kept (layers 0, 1 and 29), and the attention tensors only over the
positions in use (kq rows, the K cache, the transposed V cache), to keep the files small. Each .bin
holds the tensors raw (little-endian f32 or f16); the .json says where each one is.

Reference: llama-cpp-python 0.3.36 built from source on x86-64 with AVX-512 (other builds sum in
other orders and can differ in the last bit). Uses its eval callback and ggml's own accessors.
"""
import ctypes, sys, json, numpy as np, llama_cpp, os

path, out = sys.argv[1], sys.argv[2]
PROMPT_LEN = 4
DECODE_TOKEN = 60
LAYERS = [0, 1, 29]
P = os.path.dirname(llama_cpp.__file__) + "/lib/"
ggml = ctypes.CDLL(P + "libggml-base.so")
ggml.ggml_get_name.restype = ctypes.c_char_p; ggml.ggml_get_name.argtypes = [ctypes.c_void_p]
ggml.ggml_nbytes.restype = ctypes.c_size_t; ggml.ggml_nbytes.argtypes = [ctypes.c_void_p]
ggml.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]


def wanted(li):
    base = ["attn_norm", "Qcur", "Kcur", "Vcur", "kq", "kq_soft_max", "kqv", "kqv_out", "attn_out",
            "ffn_inp", "ffn_norm", "ffn_gate", "ffn_up", "ffn_swiglu", "ffn_out"]
    names = [f"{b}-{li}" for b in base] + [f"Qcur-{li}#2", f"cache_k_l{li} (view)", f"cache_v_l{li} (reshaped) (view)"]
    if li == 0:
        names.append("embd")
    else:
        names.append(f"l_out-{li - 1}")
    return names


WANTED = {n for li in LAYERS for n in wanted(li)}


class T(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int)]


class Recorder:
    def __init__(self):
        self.active = False
        self.seen = {}
        self.tensors = {}
        self.used = 0  # positions in use after this batch (pos0 + n)

    def keep(self, key, arr, ne):
        kvd = 192  # n_kv_head (3) * head_dim (64)
        if key.startswith("kq-") or key.startswith("kq_soft_max-"):
            arr = arr.reshape(-1, ne[0])[:, : self.used]  # rows over [kv_len] -> the positions in use
        elif key.startswith("cache_k_"):
            arr = arr.reshape(-1, kvd)[: self.used]  # slot-major
        elif key.startswith("cache_v_"):
            arr = arr.reshape(kvd, -1)[:, : self.used]  # channel-major over slots
        self.tensors[key] = np.ascontiguousarray(arr)


rec = Recorder()


@llama_cpp.ggml_backend_sched_eval_callback
def cb(t, ask, ud):
    if ask or not rec.active:
        return True
    name = ggml.ggml_get_name(t).decode()
    s = T.from_address(t)
    if s.type not in (0, 1):
        return True
    key, i = name, 0
    while key in rec.seen:
        i += 1
        key = f"{name}#{i}"
    rec.seen[key] = True
    if key not in WANTED:
        return True
    n = ggml.ggml_nbytes(t)
    buf = (ctypes.c_uint8 * n)()
    ggml.ggml_backend_tensor_get(t, buf, 0, n)
    arr = np.frombuffer(bytes(buf), dtype=np.float32 if s.type == 0 else np.float16)
    rec.keep(key, arr, list(s.ne))
    return True


def save(stem):
    index, blob = {}, bytearray()
    for k in sorted(rec.tensors):
        a = rec.tensors[k]
        index[k] = {"offset": len(blob), "dtype": "f32" if a.dtype == np.float32 else "f16", "count": int(a.size)}
        blob += a.astype("<f4" if a.dtype == np.float32 else "<f2").tobytes()
    missing = sorted(WANTED - set(rec.tensors))
    assert not missing, f"not recorded: {missing}"
    open(f"{out}/{stem}.bin", "wb").write(blob)
    json.dump({"prompt_ids": ids[:PROMPT_LEN], "decode_token": DECODE_TOKEN, "pos0": 0 if stem == "prompt" else PROMPT_LEN,
               "tensors": index}, open(f"{out}/{stem}.json", "w"), indent=0, sort_keys=True)
    print(stem, len(index), "tensors,", len(blob), "bytes")


os.makedirs(out, exist_ok=True)
refs = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "smollm2_greedy.json")))
ids = refs["cases"][0]["prompt_ids"]
llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_threads=2, n_batch=512, verbose=False, seed=0)
cparams = llm.context_params
cparams.cb_eval = cb
cparams.cb_eval_user_data = None
ctx = llama_cpp.llama_init_from_model(llm._model.model, cparams)
prompt = (llama_cpp.llama_token * PROMPT_LEN)(*ids[:PROMPT_LEN])
rec.active, rec.used = True, PROMPT_LEN
assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(prompt, PROMPT_LEN)) == 0
save("prompt")
rec.seen, rec.tensors, rec.used = {}, {}, PROMPT_LEN + 1
nxt = (llama_cpp.llama_token * 1)(DECODE_TOKEN)
assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(nxt, 1)) == 0
save("decode")
