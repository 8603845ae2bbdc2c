// Decode attention over a paged KV pool, in one launch per layer: for each sequence of a batch
// and each query head, softmax(q · Kᵀ) · V over the sequence's positions, reading K and V where
// its block table puts them. It replaces what the dense model otherwise launches per layer for
// decode rows: the query permute, two block gathers (copies of every visible K and V), two
// batched matmuls, the mask add, the softmax and the output permute.
//
// Layouts (row-major, contiguous):
//   q    [b, nh, d]        the step's query rows, already scaled by 1/sqrt(d)
//   k, v [nkv, rows, d]    the pool; position j of a sequence is row table[j / block] * block + j % block
//   meta [b, nb + 1] u32   each sequence's block table (nb entries, padded), then its length
//   out  [b, nh, d]
// window > 0: a query at position len - 1 sees positions len - window .. len - 1 only.
//
// One thread block of WARPS warps per (head, sequence, split): the grid's z dimension splits each
// sequence's positions into gridDim.z ranges, so that a few sequences with long contexts still
// spread over every SM (one stream of an 8B model has only 32 heads; without splits 32 blocks
// would each walk all 2,048 positions while 100 SMs idle). Each warp takes every WARPS-th
// position of its range and keeps a running max, sum and weighted V (online softmax); the lanes
// split the head dimension (d / 32 values each, d a multiple of 32 up to 256). The warps'
// results are merged at the end of the block; with one split it writes the output, with more
// it writes (max, sum, weighted V) to `part` and paged_decode_combine merges the splits.
// Arithmetic is f32 whatever the storage type.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define WARPS 4
#define MAX_PER_LANE 8

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store(float* o, float x) { *o = x; }
__device__ __forceinline__ void store(__half* o, float x) { *o = __float2half(x); }
__device__ __forceinline__ void store(__nv_bfloat16* o, float x) { *o = __float2bfloat16(x); }

template <typename T>
__device__ void paged_decode(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                             const uint32_t* __restrict__ meta, T* __restrict__ out, float* __restrict__ part,
                             int nh, int nkv, int d, int rows, int nb, int block, int window) {
    const int h = blockIdx.x, s = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
    const int kvh = h / (nh / nkv);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int per = d / 32;
    const uint32_t* table = meta + (size_t)s * (nb + 1);
    const int len_all = (int)table[nb];
    const int first_all = (window > 0 && len_all > window) ? len_all - window : 0;
    const int chunk = (len_all - first_all + splits - 1) / splits;
    const int first = first_all + split * chunk;
    const int len = min(len_all, first + chunk);

    float qv[MAX_PER_LANE], acc[MAX_PER_LANE];
    const T* qh = q + ((size_t)s * nh + h) * d + lane * per;
#pragma unroll
    for (int e = 0; e < MAX_PER_LANE; ++e) {
        qv[e] = e < per ? to_f32(qh[e]) : 0.f;
        acc[e] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    const T* kh = k + (size_t)kvh * rows * d + lane * per;
    const T* vh = v + (size_t)kvh * rows * d + lane * per;
    for (int j = first + warp; j < len; j += WARPS) {
        const size_t row = (size_t)table[j / block] * block + (j % block);
        const T* kr = kh + row * d;
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < MAX_PER_LANE; ++e)
            if (e < per) dot += qv[e] * to_f32(kr[e]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        const float m2 = fmaxf(m, dot);
        const float keep = __expf(m - m2);  // 0 on the first position (m = -inf)
        const float p = __expf(dot - m2);
        l = l * keep + p;
        const T* vr = vh + row * d;
#pragma unroll
        for (int e = 0; e < MAX_PER_LANE; ++e)
            if (e < per) acc[e] = acc[e] * keep + p * to_f32(vr[e]);
        m = m2;
    }

    __shared__ float wm[WARPS], wl[WARPS];
    __shared__ float wacc[WARPS][MAX_PER_LANE * 32];
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < MAX_PER_LANE; ++e)
        if (e < per) wacc[warp][lane * per + e] = acc[e];
    __syncthreads();
    if (warp != 0) return;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) mx = fmaxf(mx, wm[w]);
    float scale[WARPS], total = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
        scale[w] = wl[w] > 0.f ? __expf(wm[w] - mx) : 0.f;  // a warp that saw no position adds nothing
        total += wl[w] * scale[w];
    }
    // part[((s * nh + h) * splits + split) * (d + 2)]: max, sum, then the weighted V.
    float* p = part + (((size_t)s * nh + h) * splits + split) * (d + 2);
    if (splits > 1 && lane == 0) {
        p[0] = mx;
        p[1] = total;
    }
    T* o = out + ((size_t)s * nh + h) * d + lane * per;
#pragma unroll
    for (int e = 0; e < MAX_PER_LANE; ++e) {
        if (e >= per) break;
        float a = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) a += wacc[w][lane * per + e] * scale[w];
        if (splits > 1)
            p[2 + lane * per + e] = a;
        else
            store(&o[e], a / total);
    }
}

// Merges the splits' partial results: grid (nh, b), d threads, one output value each.
template <typename T>
__device__ void paged_decode_combine(const float* __restrict__ part, T* __restrict__ out, int nh, int d, int splits) {
    const int h = blockIdx.x, s = blockIdx.y, e = threadIdx.x;
    const float* p = part + ((size_t)s * nh + h) * splits * (d + 2);
    float mx = -INFINITY;
    for (int z = 0; z < splits; ++z) mx = fmaxf(mx, p[z * (d + 2)]);
    float total = 0.f, a = 0.f;
    for (int z = 0; z < splits; ++z) {
        const float* pz = p + z * (d + 2);
        const float w = pz[1] > 0.f ? __expf(pz[0] - mx) : 0.f;  // an empty split adds nothing
        total += pz[1] * w;
        a += pz[2 + e] * w;
    }
    store(&out[((size_t)s * nh + h) * d + e], a / total);
}

#define PAGED_DECODE(NAME, T)                                                                            \
    extern "C" __global__ void __launch_bounds__(WARPS * 32)                                            \
        NAME(const T* q, const T* k, const T* v, const uint32_t* meta, T* out, float* part, int nh,      \
             int nkv, int d, int rows, int nb, int block, int window) {                                 \
        paged_decode<T>(q, k, v, meta, out, part, nh, nkv, d, rows, nb, block, window);                 \
    }                                                                                                   \
    extern "C" __global__ void NAME##_combine(const float* part, T* out, int nh, int d, int splits) { \
        paged_decode_combine<T>(part, out, nh, d, splits);                                              \
    }

PAGED_DECODE(paged_decode_f32, float)
PAGED_DECODE(paged_decode_f16, __half)
PAGED_DECODE(paged_decode_bf16, __nv_bfloat16)
