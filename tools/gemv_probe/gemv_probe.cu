// CUDA port of shaders/gptq_gemv.wgsl (BITS = 4, PERM = 1, ZERO_BUF = 0, EPI = 0, PRO = 0 | 1), for measuring
// the decode GEMV on the device machine where the Vulkan driver shows no disassembly or stall reasons: the same
// algorithm timed with CUDA events and read under Nsight Compute (docs/PERF.md, run 32). Not part of the build.
//
//   nvcc -O3 -arch=sm_90 -o gemv_probe gemv_probe.cu && ./gemv_probe
//   ncu --section WarpStateStats --section SchedulerStats --section Occupancy -k regex:gemv ./gemv_probe 1
//
// Variants (template VAR): 0 the WGSL algorithm as written; 1 the next weight batch loaded before the current one
// is used (register double buffer); 2 as 0 but the staged activations come from a pre-gathered contiguous
// vector (no perm indirection in the staging).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { \
    fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1); } } while (0)

struct Params {
    uint32_t k, n, kp, group_rows;
    float zero_const;
    uint32_t y_stride, splits, split_rows, cap;
};

constexpr uint32_t BITS = 4, PF = 32 / BITS, MASK = (1u << BITS) - 1;

__device__ __forceinline__ float4 code(uint4 q, uint32_t j) {
    uint32_t m = MASK << (j * BITS);
    return make_float4(__uint_as_float((q.x & m) | 0x4B000000u), __uint_as_float((q.y & m) | 0x4B000000u),
                       __uint_as_float((q.z & m) | 0x4B000000u), __uint_as_float((q.w & m) | 0x4B000000u));
}
__device__ __forceinline__ float4 operator-(float4 a, float4 b) { return make_float4(a.x - b.x, a.y - b.y, a.z - b.z, a.w - b.w); }
__device__ __forceinline__ float4 operator+(float4 a, float4 b) { return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w); }
__device__ __forceinline__ float4 operator*(float s, float4 b) { return make_float4(s * b.x, s * b.y, s * b.z, s * b.w); }
__device__ __forceinline__ float4 operator*(float4 a, float4 b) { return make_float4(a.x * b.x, a.y * b.y, a.z * b.z, a.w * b.w); }
__device__ __forceinline__ float4 operator*(float4 a, float s) { return make_float4(a.x * s, a.y * s, a.z * s, a.w * s); }

struct Zeros { float4 z0, z1, z2, z3; };
__device__ __forceinline__ Zeros zero_terms(float z) {
    float b = 8388608.0f;
    float4 a = make_float4(b + z, b + z, b + z, b + z);
    float4 c = make_float4(b + z * 16, b + z * 16, b + z * 16, b + z * 16);
    float4 d = make_float4(b + z * 256, b + z * 256, b + z * 256, b + z * 256);
    float4 e = make_float4(b + z * 4096, b + z * 4096, b + z * 4096, b + z * 4096);
    return Zeros{a, c, d, e};
}

__device__ __forceinline__ float4 word_dot(uint4 q, const float4* xs, uint32_t xb, const Zeros& z) {
    uint4 qh = make_uint4(q.x >> 16, q.y >> 16, q.z >> 16, q.w >> 16);
    float4 xl = xs[xb / 4], xh = xs[xb / 4 + 1];
    float4 d = xl.x * (code(q, 0) - z.z0);
    float4 e = xh.x * (code(qh, 0) - z.z0);
    d = d + xl.y * (code(q, 1) - z.z1);
    e = e + xh.y * (code(qh, 1) - z.z1);
    d = d + xl.z * (code(q, 2) - z.z2);
    e = e + xh.z * (code(qh, 2) - z.z2);
    d = d + xl.w * (code(q, 3) - z.z3);
    e = e + xh.w * (code(qh, 3) - z.z3);
    return d + e;
}

__device__ __forceinline__ float4 group_scale(const uint2* scales, uint32_t g, uint32_t c4, uint32_t n4) {
    uint2 s = scales[g * n4 + c4];
    __half2 a = *reinterpret_cast<__half2*>(&s.x), b = *reinterpret_cast<__half2*>(&s.y);
    return make_float4(__low2float(a), __high2float(a), __low2float(b), __high2float(b));
}

template <int COLS4, int KSPLIT, int XCHUNK, int UNROLL, int PRO, int VAR>
__global__ void __launch_bounds__(COLS4 * KSPLIT) gemv(Params p, const float* __restrict__ x,
        const uint32_t* __restrict__ perm, const uint4* __restrict__ qweight, const uint2* __restrict__ scales,
        float* __restrict__ y, const float* __restrict__ norm_w, const float* __restrict__ xg) {
    constexpr int WG = COLS4 * KSPLIT;
    __shared__ float4 partial[WG];
    __shared__ float4 xs[XCHUNK / 4];
    const float4 XSCALE = make_float4(1.f, 1.f / 16, 1.f / 256, 1.f / 4096);
    uint32_t lid = threadIdx.x, c4l = lid % COLS4, ks = lid / COLS4, n4 = p.n / 4;
    uint32_t c4 = blockIdx.x * COLS4 + c4l, split = blockIdx.y, t = 0;
    bool live = c4 < n4;
    uint32_t wpg = p.group_rows / PF, c4s = min(c4, n4 - 1);
    uint32_t r0 = split * p.split_rows, r1 = min(r0 + p.split_rows, p.kp);
    uint32_t wc0 = r0 / PF, wc1 = min(r0 + XCHUNK, r1) / PF;
    uint32_t per = (wc1 - wc0 + KSPLIT - 1) / KSPLIT, wb = wc0 + ks * per, we = min(wb + per, wc1);
    uint4 qs[UNROLL], qn[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; u++) if (wb + u < we) qs[u] = qweight[(wb + u) * n4 + c4s];
    float4 acc = make_float4(0, 0, 0, 0);
    for (uint32_t c0 = r0; c0 < r1; c0 += XCHUNK) {
        for (uint32_t i = lid; i < XCHUNK / 4; i += WG) {
            uint32_t k = c0 + 4 * i;
            float v[4];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint32_t kk = k + j;
                float a = 0.f;
                if (kk < r1) {
                    if (VAR == 2) {
                        a = xg[kk];
                    } else {
                        uint32_t src = perm[kk];
                        if (src != 0xffffffffu) a = PRO == 1 ? x[t * p.k + src] * norm_w[src] : x[t * p.k + src];
                    }
                }
                v[j] = a;
            }
            xs[i] = make_float4(v[0], v[1], v[2], v[3]) * XSCALE;
        }
        __syncthreads();
        if (c0 > r0) {
            wc0 = c0 / PF; wc1 = min(c0 + XCHUNK, r1) / PF;
            per = (wc1 - wc0 + KSPLIT - 1) / KSPLIT; wb = wc0 + ks * per; we = min(wb + per, wc1);
        }
        if (wb < we) {
            uint32_t g_cur = wb / wpg, g_end = (g_cur + 1) * wpg;
            float4 aq = make_float4(0, 0, 0, 0);
            Zeros zz = zero_terms(p.zero_const);
            for (uint32_t w0 = wb; w0 < we; w0 += UNROLL) {
                if (VAR == 1) {
#pragma unroll
                    for (int u = 0; u < UNROLL; u++) if (w0 + UNROLL + u < we) qn[u] = qweight[(w0 + UNROLL + u) * n4 + c4s];
                } else if (w0 != wb || c0 > r0) {
#pragma unroll
                    for (int u = 0; u < UNROLL; u++) if (w0 + u < we) qs[u] = qweight[(w0 + u) * n4 + c4s];
                }
#pragma unroll
                for (int u = 0; u < UNROLL; u++) {
                    uint32_t w = w0 + u;
                    if (w < we) {
                        if (w >= g_end) {
                            acc = acc + group_scale(scales, g_cur, c4s, n4) * aq;
                            aq = make_float4(0, 0, 0, 0);
                            g_cur = w / wpg; g_end = (g_cur + 1) * wpg;
                            zz = zero_terms(p.zero_const);
                        }
                        aq = aq + word_dot(qs[u], xs, w * PF - c0, zz);
                    }
                }
                if (VAR == 1) {
#pragma unroll
                    for (int u = 0; u < UNROLL; u++) qs[u] = qn[u];
                }
            }
            acc = acc + group_scale(scales, g_cur, c4s, n4) * aq;
        }
        __syncthreads();
    }
    partial[lid] = acc;
    __syncthreads();
    for (uint32_t s = KSPLIT / 2; s > 0; s >>= 1) {
        if (ks < s) partial[lid] = partial[lid] + partial[lid + s * COLS4];
        __syncthreads();
    }
    if (ks == 0 && live) {
        float4 r = partial[lid];
        uint32_t o = (split * p.cap + t) * p.y_stride + 4 * c4;
        y[o] = r.x; y[o + 1] = r.y; y[o + 2] = r.z; y[o + 3] = r.w;
    }
}

// Streaming read of `words` uint4 (the bandwidth ceiling this card gives a plain kernel).
__global__ void stream_read(const uint4* __restrict__ a, size_t words, uint32_t* out) {
    uint32_t s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < words; i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = a[i]; s ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (s == 0x12345678u) out[0] = s;
}

struct Shape { const char* name; uint32_t k, n, splits; int pro; };

template <int UNROLL, int PRO, int VAR>
float run(const Shape& sh, int copies, const std::vector<uint4*>& qw, const uint2* sc, const float* x, const uint32_t* perm,
          const float* nw, const float* xg, float* y, int iters, bool once) {
    Params p{};
    p.k = sh.k; p.n = sh.n; p.kp = sh.k; p.group_rows = 128; p.zero_const = 8.f; p.y_stride = sh.n;
    p.splits = sh.splits; p.split_rows = ((sh.k + sh.splits - 1) / sh.splits + PF - 1) / PF * PF; p.cap = 1;
    dim3 grid((sh.n / 4 + 63) / 64, sh.splits, 1);
    auto k = gemv<64, 4, 4096, UNROLL, PRO, VAR>;
    if (once) { k<<<grid, 256>>>(p, x, perm, qw[0], sc, y, nw, xg); CK(cudaGetLastError()); CK(cudaDeviceSynchronize()); return 0; }
    for (int i = 0; i < 5; i++) k<<<grid, 256>>>(p, x, perm, qw[i % copies], sc, y, nw, xg);
    cudaEvent_t a, b; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
    CK(cudaEventRecord(a));
    for (int i = 0; i < iters; i++) k<<<grid, 256>>>(p, x, perm, qw[i % copies], sc, y, nw, xg);
    CK(cudaEventRecord(b)); CK(cudaEventSynchronize(b)); CK(cudaGetLastError());
    float ms; CK(cudaEventElapsedTime(&ms, a, b));
    return ms * 1000.f / iters;
}

int main(int argc, char** argv) {
    bool once = argc > 1; // under ncu: one launch of each
    Shape shapes[] = {{"gate_up", 4096, 28672, 2, 1}, {"qkv", 4096, 6144, 11, 1}, {"o_proj", 4096, 4096, 16, 0},
                      {"down", 14336, 4096, 16, 0}};
    const int copies = once ? 1 : 6;
    // largest packed matrix in uint4: gate_up (4096 / 8 rows of 28672 / 4 quads)
    size_t max_words = std::max((size_t)4096 / 8 * 28672 / 4, (size_t)14336 / 8 * 4096 / 4);
    std::vector<uint4*> qw(copies);
    std::vector<uint32_t> host(max_words * 4);
    uint32_t s = 12345;
    for (auto& v : host) { s = s * 1664525u + 1013904223u; v = s; }
    for (auto& q : qw) { CK(cudaMalloc(&q, max_words * 16)); CK(cudaMemcpy(q, host.data(), max_words * 16, cudaMemcpyHostToDevice)); }
    size_t ngroups = 14336 / 128 * 28672 / 4;
    std::vector<uint16_t> hs(ngroups * 4);
    for (auto& v : hs) { s = s * 1664525u + 1013904223u; v = __half_as_ushort(__float2half(0.001f + (s >> 8) * 1e-10f)); }
    uint2* sc; CK(cudaMalloc(&sc, ngroups * 8)); CK(cudaMemcpy(sc, hs.data(), ngroups * 8, cudaMemcpyHostToDevice));
    std::vector<float> hx(14336); std::vector<uint32_t> hp(14336);
    for (size_t i = 0; i < hx.size(); i++) { s = s * 1664525u + 1013904223u; hx[i] = (s >> 8) * 1e-7f - 0.8f; hp[i] = (uint32_t)((i * 2654435761u) % 4096); }
    float *x, *nw, *xg, *y; uint32_t* perm;
    CK(cudaMalloc(&x, 14336 * 4)); CK(cudaMalloc(&nw, 14336 * 4)); CK(cudaMalloc(&xg, 14336 * 4)); CK(cudaMalloc(&perm, 14336 * 4));
    CK(cudaMalloc(&y, 16 * 28672 * 4));
    CK(cudaMemcpy(x, hx.data(), 14336 * 4, cudaMemcpyHostToDevice)); CK(cudaMemcpy(nw, hx.data(), 14336 * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(xg, hx.data(), 14336 * 4, cudaMemcpyHostToDevice)); CK(cudaMemcpy(perm, hp.data(), 14336 * 4, cudaMemcpyHostToDevice));
    if (!once) {
        uint32_t* out; CK(cudaMalloc(&out, 4));
        size_t words = 4ull << 30 >> 4; uint4* big; CK(cudaMalloc(&big, words * 16)); CK(cudaMemset(big, 1, words * 16));
        for (int i = 0; i < 2; i++) stream_read<<<132 * 16, 256>>>(big, words, out);
        cudaEvent_t a, b; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b)); CK(cudaEventRecord(a));
        for (int i = 0; i < 5; i++) stream_read<<<132 * 16, 256>>>(big, words, out);
        CK(cudaEventRecord(b)); CK(cudaEventSynchronize(b)); float ms; CK(cudaEventElapsedTime(&ms, a, b));
        printf("stream read: %.0f GB/s\n", 5.0 * words * 16 / (ms * 1e-3) / 1e9);
        CK(cudaFree(big));
    }
    printf("%-8s %10s %10s %10s %10s %10s | floor us (3.0 TB/s)\n", "shape", "v0 u1", "v0 u4", "v1 u4", "v2 u4", "v0 u8");
    for (auto& sh : shapes) {
        int it = once ? 1 : 200;
        float t0 = sh.pro ? run<1, 1, 0>(sh, copies, qw, sc, x, perm, nw, xg, y, it, once) : run<1, 0, 0>(sh, copies, qw, sc, x, perm, nw, xg, y, it, once);
        float t1 = sh.pro ? run<4, 1, 0>(sh, copies, qw, sc, x, perm, nw, xg, y, it, once) : run<4, 0, 0>(sh, copies, qw, sc, x, perm, nw, xg, y, it, once);
        float t2 = sh.pro ? run<4, 1, 1>(sh, copies, qw, sc, x, perm, nw, xg, y, it, once) : run<4, 0, 1>(sh, copies, qw, sc, x, perm, nw, xg, y, it, once);
        float t3 = sh.pro ? run<4, 1, 2>(sh, copies, qw, sc, x, perm, nw, xg, y, it, once) : run<4, 0, 2>(sh, copies, qw, sc, x, perm, nw, xg, y, it, once);
        float t4 = sh.pro ? run<8, 1, 0>(sh, copies, qw, sc, x, perm, nw, xg, y, it, once) : run<8, 0, 0>(sh, copies, qw, sc, x, perm, nw, xg, y, it, once);
        double bytes = (double)sh.k * sh.n / 2 + (double)sh.k / 128 * sh.n * 2;
        printf("%-8s %10.2f %10.2f %10.2f %10.2f %10.2f | %.2f\n", sh.name, t0, t1, t2, t3, t4, bytes / 3.0e12 * 1e6);
    }
    return 0;
}
