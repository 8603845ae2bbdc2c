"""Dumps llama.cpp's intermediate tensors (every f32/f16 node of one llama_decode) for the op-by-op
comparison in models/src/llama_ggml_check.rs.

    v/bin/python models/tests/data/dump_ggml_tensors.py <SmolLM2 .gguf> <out dir>          # the prompt
    DECODE=60 v/bin/python models/tests/data/dump_ggml_tensors.py <SmolLM2 .gguf> <out dir> # one decode step after it

The prompt is the first case of smollm2_greedy.json. Each tensor is written raw (little-endian
f32 or f16) as <out dir>/<name>.bin, with shapes and ops in index.json. Uses llama-cpp-python's
eval callback (cb_eval) and ggml's own accessors from the same build.
"""
import ctypes, sys, json, numpy as np, llama_cpp, os
path = sys.argv[1]; out = sys.argv[2]
P = os.path.dirname(llama_cpp.__file__) + "/lib/"
ggml = ctypes.CDLL(P + "libggml-base.so")
ggml.ggml_get_name.restype = ctypes.c_char_p; ggml.ggml_get_name.argtypes = [ctypes.c_void_p]
ggml.ggml_nbytes.restype = ctypes.c_size_t; ggml.ggml_nbytes.argtypes = [ctypes.c_void_p]
ggml.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
ggml.ggml_op_name.restype = ctypes.c_char_p; ggml.ggml_op_name.argtypes = [ctypes.c_int]
seen = {}
ACTIVE = [os.environ.get("DECODE") is None]
class T(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int)]
@llama_cpp.ggml_backend_sched_eval_callback
def cb(t, ask, ud):
    if ask:
        return True
    if not ACTIVE[0]:
        return True
    name = ggml.ggml_get_name(t).decode()
    s = T.from_address(t)
    if s.type not in (0, 1):
        return True
    n = ggml.ggml_nbytes(t)
    buf = (ctypes.c_uint8 * n)()
    ggml.ggml_backend_tensor_get(t, buf, 0, n)
    dt = np.float32 if s.type == 0 else np.float16
    arr = np.frombuffer(bytes(buf), dtype=dt)
    key = name
    i = 0
    while key in seen: i += 1; key = f"{name}#{i}"
    seen[key] = (list(s.ne), ggml.ggml_op_name(s.op).decode(), s.type, list(s.nb))
    arr.tofile(f"{out}/{key}.bin")
    return True
llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_threads=2, n_batch=512, verbose=False, seed=0)
# a fresh context with the callback
cparams = llm.context_params
print("flash_attn_type", getattr(cparams, "flash_attn_type", None), getattr(cparams, "flash_attn", None))
cparams.cb_eval = cb; cparams.cb_eval_user_data = None
ctx = llama_cpp.llama_init_from_model(llm._model.model, cparams)
refs = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "smollm2_greedy.json")))
ids = refs["cases"][0]["prompt_ids"]
arr_ids = (llama_cpp.llama_token * len(ids))(*ids)
batch = llama_cpp.llama_batch_get_one(arr_ids, len(ids))
os.makedirs(out, exist_ok=True)
rc = llama_cpp.llama_decode(ctx, batch)
if os.environ.get("DECODE"):
    ACTIVE[0] = True
    nxt = (llama_cpp.llama_token * 1)(int(os.environ["DECODE"]))
    b2 = llama_cpp.llama_batch_get_one(nxt, 1)
    rc = llama_cpp.llama_decode(ctx, b2)
json.dump(seen, open(f"{out}/index.json", "w"), indent=0)
print("decode rc", rc, "tensors", len(seen))
