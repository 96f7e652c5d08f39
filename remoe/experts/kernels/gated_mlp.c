/* Gated-SiLU experts (silu(x W_gate^T) * (x W_up^T)) W_down^T for the few rows a decode step routes to each
 * expert, over weights packed once at load: [N/16][K][16] (16 output rows interleaved per column), so one
 * 512-bit load feeds 16 rows and each input value is a broadcast. The weight stream is sequential; the
 * arithmetic is float32 (bf16 weights are widened in registers), so at 1-8 rows the kernel is bound by
 * memory bandwidth, not by the machine's bf16 support.
 *
 * T = rows of one expert, H = hidden size, I = expert intermediate size, K = top-k slots per row.
 * Built at first use by remoe/experts/kernels/native.py with the host's compiler (-O3 -march=native -fopenmp);
 * called through ctypes, which releases the GIL for the call.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define NB 16      /* output rows per packed block */
#define TMAX 8     /* rows per pass of the weight stream */
#define SERIAL_BELOW (1 << 18) /* weights per matrix under which one thread computes it (1 MB of fp32) */

enum { W_F32 = 0, W_BF16 = 1 };

static inline float bf16_to_f32(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to the nearest bfloat16 (ties to even), as torch does when it stores a bf16 result. */
static inline float round_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return f; /* NaN stays NaN */
    bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &bits, 4);
    return f;
}

/* Pack W [N][K] (row-major) into [ceil(N/16)][K][16], zero rows past N. */
void remoe_pack(const void *w, int wtype, int64_t n, int64_t k, void *out) {
    int64_t blocks = (n + NB - 1) / NB;
    size_t item = wtype == W_BF16 ? 2 : 4;
    memset(out, 0, (size_t)(blocks * k * NB) * item);
    for (int64_t r = 0; r < n; r++) {
        int64_t b = r / NB, j = r % NB;
        for (int64_t c = 0; c < k; c++) {
            size_t dst = (size_t)((b * k + c) * NB + j) * item, src = (size_t)(r * k + c) * item;
            memcpy((char *)out + dst, (const char *)w + src, item);
        }
    }
}

#ifdef __AVX512F__
static inline __m512 load16(const void *p, int wtype) {
    if (wtype == W_BF16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)p);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_loadu_ps((const float *)p);
}

/* y[t][b*16 .. b*16+31] for t < T over two packed blocks b, b+1 (the second may be absent). */
static inline __attribute__((always_inline)) void block_pair(const float *x, int T, int64_t K, const char *wb,
                                                              int wtype, int two, float *y, int64_t ystride,
                                                              int64_t n0, int64_t n) {
    size_t item = wtype == W_BF16 ? 2 : 4;
    size_t bstride = (size_t)K * NB * item;
    __m512 a0[TMAX], a1[TMAX];
    for (int t = 0; t < TMAX; t++) a0[t] = a1[t] = _mm512_setzero_ps();
    const char *w0 = wb, *w1 = wb + bstride;
    for (int64_t c = 0; c < K; c++) {
        __m512 v0 = load16(w0 + (size_t)c * NB * item, wtype);
        __m512 v1 = two ? load16(w1 + (size_t)c * NB * item, wtype) : _mm512_setzero_ps();
        for (int t = 0; t < T; t++) {
            __m512 xv = _mm512_set1_ps(x[t * K + c]);
            a0[t] = _mm512_fmadd_ps(v0, xv, a0[t]);
            a1[t] = _mm512_fmadd_ps(v1, xv, a1[t]);
        }
    }
    for (int t = 0; t < T; t++) {
        float tmp[2 * NB];
        _mm512_storeu_ps(tmp, a0[t]);
        _mm512_storeu_ps(tmp + NB, a1[t]);
        int64_t m = n - n0 < 2 * NB ? n - n0 : 2 * NB;
        memcpy(y + t * ystride + n0, tmp, (size_t)m * 4);
    }
}

#define PAIR_T(TT)                                                                          \
    static void pairs_##TT(const float *x, int64_t K, const char *w, int wtype, int64_t nb, \
                           float *y, int64_t ystride, int64_t n, int nt) {                  \
        size_t bstride = (size_t)K * NB * (wtype == W_BF16 ? 2 : 4);                        \
        int64_t pairs = (nb + 1) / 2;                                                        \
        _Pragma("omp parallel for num_threads(nt) schedule(static) if(nt > 1)")             \
        for (int64_t p = 0; p < pairs; p++) {                                                \
            int64_t b = 2 * p;                                                               \
            block_pair(x, TT, K, w + b * bstride, wtype, b + 1 < nb, y, ystride, b * NB, n); \
        }                                                                                    \
    }
PAIR_T(1)
PAIR_T(2)
PAIR_T(3)
PAIR_T(4)
PAIR_T(5)
PAIR_T(6)
PAIR_T(7)
PAIR_T(8)
typedef void (*pairs_fn)(const float *, int64_t, const char *, int, int64_t, float *, int64_t, int64_t, int);
static const pairs_fn PAIRS[TMAX + 1] = {0, pairs_1, pairs_2, pairs_3, pairs_4, pairs_5, pairs_6, pairs_7, pairs_8};
#endif

/* y[T][n] = x[T][K] . W^T for packed W (n output rows). */
static void matmul_packed(const float *x, int64_t T, int64_t K, const void *w, int wtype, int64_t n, float *y,
                          int nt) {
    int64_t nb = (n + NB - 1) / NB;
    if (n * K < SERIAL_BELOW) nt = 1; /* waking the other threads costs more than a small matrix takes */
#ifdef __AVX512F__
    for (int64_t t0 = 0; t0 < T; t0 += TMAX) {
        int64_t tt = T - t0 < TMAX ? T - t0 : TMAX;
        PAIRS[tt](x + t0 * K, K, (const char *)w, wtype, nb, y + t0 * n, n, n, nt);
    }
#else
    size_t item = wtype == W_BF16 ? 2 : 4;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t b = 0; b < nb; b++) {
        const char *wb = (const char *)w + (size_t)b * K * NB * item;
        for (int64_t t = 0; t < T; t++) {
            float acc[NB] = {0};
            for (int64_t c = 0; c < K; c++) {
                float xv = x[t * K + c];
                for (int j = 0; j < NB; j++) {
                    size_t at = (size_t)(c * NB + j);
                    float wv = wtype == W_BF16 ? bf16_to_f32(((const uint16_t *)wb)[at]) : ((const float *)wb)[at];
                    acc[j] += wv * xv;
                }
            }
            int64_t m = n - b * NB < NB ? n - b * NB : NB;
            memcpy(y + t * n + b * NB, acc, (size_t)m * 4);
        }
    }
#endif
}

static inline float silu(float g) { return g / (1.0f + expf(-g)); }

/* One layer's hosted experts for T rows:
 *   out[t] = sum over slots s with index[t][s] = e >= 0 of weight[t][s] * down_e(silu(gate_e(x_t)) * up_e(x_t)).
 * gate_up[e] packs [2I][H] (gate rows first, then up), down[e] packs [H][I]; an index of -1 is skipped.
 * round_bf16 != 0 rounds every intermediate to bfloat16 where the eager bf16 module stores one, so bf16
 * results stay as close to the architecture's class as float32 results are.
 * scratch holds at least T * (H + 2I + I + H) floats. Returns 0, 1 + the first routed expert with no weights,
 * or -2 when memory for the row lists ran out. */
int64_t remoe_gated_experts(int64_t T, int64_t H, int64_t I, int64_t K, const float *x, const int64_t *index,
                            const float *weight, int64_t E, const void *const *gate_up, const void *const *down,
                            int wtype, int round, float *out, float *scratch, int nt) {
    float *xs = scratch;                 /* [T][H] gathered rows */
    float *h = xs + T * H;               /* [T][2I] */
    float *a = h + T * 2 * I;            /* [T][I] */
    float *y = a + T * I;                /* [T][H] */
    /* A row may name one expert in several slots (a caller's filler id): up to T * K (row, slot) pairs. */
    int64_t *rows = (int64_t *)malloc((size_t)T * K * 2 * sizeof(int64_t));
    if (!rows) return -2;
    int64_t *slots = rows + T * K;
    for (int64_t e = 0; e < E; e++) {
        int64_t pairs = 0;
        for (int64_t t = 0; t < T; t++)
            for (int64_t s = 0; s < K; s++)
                if (index[t * K + s] == e) {
                    rows[pairs] = t;
                    slots[pairs++] = s;
                }
        if (pairs == 0) continue;
        if (!gate_up[e] || !down[e]) {
            free(rows);
            return e + 1;
        }
        for (int64_t p0 = 0; p0 < pairs; p0 += T) { /* scratch holds T rows */
            int64_t n = pairs - p0 < T ? pairs - p0 : T;
            const int64_t *rw = rows + p0, *sl = slots + p0;
            for (int64_t r = 0; r < n; r++) memcpy(xs + r * H, x + rw[r] * H, (size_t)H * 4);
            matmul_packed(xs, n, H, gate_up[e], wtype, 2 * I, h, nt);
            for (int64_t r = 0; r < n; r++) {
                const float *g = h + r * 2 * I, *u = g + I;
                float *ar = a + r * I;
                for (int64_t j = 0; j < I; j++) {
                    if (round) {
                        float gv = round_bf16(g[j]), uv = round_bf16(u[j]);
                        ar[j] = round_bf16(round_bf16(silu(gv)) * uv);
                    } else {
                        ar[j] = silu(g[j]) * u[j];
                    }
                }
            }
            matmul_packed(a, n, I, down[e], wtype, H, y, nt);
            for (int64_t r = 0; r < n; r++) {
                float wt = weight[rw[r] * K + sl[r]];
                float *o = out + rw[r] * H;
                const float *yr = y + r * H;
                if (round) {
                    for (int64_t j = 0; j < H; j++) o[j] = round_bf16(o[j] + round_bf16(round_bf16(yr[j]) * wt));
                } else {
                    for (int64_t j = 0; j < H; j++) o[j] += yr[j] * wt;
                }
            }
        }
    }
    free(rows);
    return 0;
}
