"""Records llama.cpp's CPU dot products on random GGUF blocks, for kernels/tests/ggml_dots.rs.

Calls the x86 build of ggml that llama-cpp-python 0.3.36 ships (libggml-cpu.so, built from
source on this machine by pip: AVX2/AVX-512) through ctypes: each type's `from_float` and
`vec_dot` from `ggml_get_type_traits_cpu`, and for Q4_K the repacked `q4_K_8x8` gemv and gemm
that llama.cpp uses on AVX2 CPUs (weights interleaved as `make_block_q4_Kx8` does; activation
rows quantized four at a time by `ggml_quantize_mat_t<8, Q8_K>`).

    /tmp/llvenv/bin/python kernels/tests/data/record_ggml_dots.py > kernels/tests/data/ggml_dots.json
"""
import base64, ctypes, json, os, sys
import numpy as np
import llama_cpp

LIB = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
base = ctypes.CDLL(os.path.join(LIB, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
cpu = ctypes.CDLL(os.path.join(LIB, "libggml-cpu.so"))
cpu.ggml_cpu_init()

FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                           ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class Traits(ctypes.Structure):
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]


cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(Traits)
base.ggml_quantize_chunk.restype = ctypes.c_size_t
base.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                     ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
base.ggml_row_size.restype = ctypes.c_size_t
base.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]

TYPES = {"Q4_0": 2, "Q5_0": 6, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
Q8_K = 15
GEMM_ROWS = 16
N, ROWS, M = 512, 16, 17
rng = np.random.default_rng(7)


def ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def quantize(t, w):
    out = np.zeros(base.ggml_row_size(t, N) * w.shape[0], dtype=np.uint8)
    base.ggml_quantize_chunk(t, ptr(w), ptr(out), 0, w.shape[0], N, None)
    return out


def b64(a):
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


acts = rng.standard_normal((M, N)).astype(np.float32)
acts[1, 40] = 9.0   # row 1: +max and −max both present, −max first: the Q8_K sign rules differ
acts[1, 7] = -9.0
weights = rng.standard_normal((ROWS, N)).astype(np.float32) * 0.1

def q4_k_repacked(w, wrow):
    """gemv (each row quantized alone) and gemm (rows 0..4 quantized as one group of four)."""
    nb = N // 256
    blocks = w.reshape(ROWS, nb, 144)
    # make_block_q4_Kx8: per group of 8 weight rows and super-block, d[8], dmin[8], scales[96]
    # and qs[1024]; groups one after another, each with its super-blocks in order.
    packed = np.zeros((ROWS // 8, nb, 16 * 2 + 96 + 1024), dtype=np.uint8)
    for grp in range(ROWS // 8):
        for b in range(nb):
            src = blocks[8 * grp:8 * grp + 8, b]
            sc = src[:, 4:16].astype(np.int32)
            qs = src[:, 16:144]
            out = packed[grp, b]
            out[0:16] = src[:, 0:2].reshape(-1)
            out[16:32] = src[:, 2:4].reshape(-1)
            osc = out[32:128]
            oqs = out[128:]
            for i in range(128):  # QK_K*4/8 interleaved 8-byte chunks
                sid, soff = i % 8, (i // 8) * 8
                oqs[i * 8:(i + 1) * 8] = qs[sid, soff:soff + 8]
            for i in range(4):
                put(osc, i * 12, [sc[j, i] & 63 for j in range(8)], [sc[j, i + 4] & 63 for j in range(8)])
            for i in range(4):
                s = [((sc[j, i] & 192) >> 2) | (sc[j, i + 8] & 15) for j in range(8)]
                m = [((sc[j, i + 4] & 192) >> 2) | ((sc[j, i + 8] & 240) >> 4) for j in range(8)]
                put(osc, i * 12 + 48, s, m)
    sig = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    gemv = getattr(cpu, "_ZN4ggml3cpu6repack4gemvI10block_q4_KLl8ELl8EL9ggml_type15EEEviPfmPKvS7_ii")
    gemm = getattr(cpu, "_ZN4ggml3cpu6repack4gemmI10block_q4_KLl8ELl8EL9ggml_type15EEEviPfmPKvS7_ii")
    qmat = getattr(cpu, "_Z19ggml_quantize_mat_tILl8EL9ggml_type15EEvPKfPvll")
    gemv.argtypes = gemm.argtypes = sig
    qmat.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    arow = base.ggml_row_size(Q8_K, N)
    ff = FROM_FLOAT(cpu.ggml_get_type_traits_cpu(Q8_K).contents.from_float)
    gv = np.zeros((M, ROWS), dtype=np.float32)
    for i in range(M):
        aq = np.zeros(arow, dtype=np.uint8)
        ff(ptr(acts[i]), ptr(aq), N)
        out = np.zeros(ROWS, dtype=np.float32)
        gemv(N, ptr(out), ROWS, ptr(packed), ptr(aq), 1, ROWS)
        gv[i] = out
    # 16 rows (four groups of four, as forward_mul_mat quantizes them) and 16 weight rows: the
    # AVX-512 path of the gemm.
    a4 = np.zeros(arow * GEMM_ROWS, dtype=np.uint8)
    for g in range(0, GEMM_ROWS, 4):
        qmat(ptr(np.ascontiguousarray(acts[g:g + 4])), a4[g * arow:].ctypes.data_as(ctypes.c_void_p), 4, N)
    gm = np.zeros((GEMM_ROWS, ROWS), dtype=np.float32)
    gemm(N, ptr(gm), ROWS, ptr(packed), ptr(a4), GEMM_ROWS, ROWS)
    return {"gemv": b64(gv), "gemm": b64(gm)}


def put(osc, at, s, m):
    for k in range(4):
        osc[at + k] = (s[k] & 63) + ((s[k + 4] & 48) << 2)
        osc[at + 4 + k] = (m[k] & 63) + ((m[k + 4] & 48) << 2)
        osc[at + 8 + k] = (s[k + 4] & 15) + ((m[k + 4] & 15) << 4)


def main():
    cases = []
    for name, t in TYPES.items():
        tr = cpu.ggml_get_type_traits_cpu(t).contents
        vt = tr.vec_dot_type
        w = quantize(t, weights)
        wrow = base.ggml_row_size(t, N)
        arow = base.ggml_row_size(vt, N)
        aq = np.zeros(arow * M, dtype=np.uint8)
        ff = FROM_FLOAT(cpu.ggml_get_type_traits_cpu(vt).contents.from_float)
        for i in range(M):
            ff(ptr(acts[i]), aq[i * arow:].ctypes.data_as(ctypes.c_void_p), N)
        dot = VEC_DOT(tr.vec_dot)
        res = np.zeros((M, ROWS), dtype=np.float32)
        s = ctypes.c_float()
        for i in range(M):
            for j in range(ROWS):
                dot(N, ctypes.byref(s), 0, w[j * wrow:].ctypes.data_as(ctypes.c_void_p), 0,
                    aq[i * arow:].ctypes.data_as(ctypes.c_void_p), 0, 1)
                res[i, j] = s.value
        case = {"type": name, "act_type": "Q8_K" if vt == Q8_K else "Q8_0", "weights": b64(w),
                "acts_quantized": b64(aq), "vec_dot": b64(res)}
        if name == "Q4_K":
            case.update(q4_k_repacked(w, wrow))
        cases.append(case)
    json.dump({"reference": f"ggml CPU backend of llama-cpp-python {llama_cpp.__version__} (x86-64, built from source on this machine by pip)",
               "n": N, "rows": ROWS, "gemm_rows": GEMM_ROWS, "acts": b64(acts), "cases": cases}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
