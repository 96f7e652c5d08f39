/* Gated-SiLU experts (silu(x W_gate^T) * (x W_up^T)) W_down^T for the few rows a decode step routes to each
 * expert, over weights packed once at load: [N/16][K][16] (16 output rows interleaved per column), so one
 * 512-bit load feeds 16 rows and each input value is a broadcast. The weight stream is sequential; the
 * arithmetic is float32 (bf16 weights are widened in registers), so at 1-8 rows the kernel is bound by
 * memory bandwidth, not by the machine's bf16 support.
 *
 * Quantized weights (a `remoe split --expert-dtype` split) take their own packings, the same idea at fewer bytes:
 *   int8: [N/16][K][16] int8, one float32 scale per output row (symmetric: w = q * s);
 *   int4: [N/16][K/2][16] bytes, each holding columns 2c (low nibble) and 2c + 1 (high nibble) of one row, with a
 *         float16 scale and minimum per row and group of G input columns, [N/16][K/G][16] each (w = q * s + m).
 * They widen to float32 in registers too (int4 through a 16-entry table), so the arithmetic stays float32.
 * Where the CPU has AVX512-VNNI and a matrix's input size is a multiple of 32 (int4: its group too), quantized
 * weights take the VNNI packings instead, and the activations are quantized on the fly to int8 in groups of 32
 * columns (symmetric, one float scale per row and group, as llama.cpp's Q8_0): one vpdpbusd then multiplies 64
 * weight bytes by 4 activations each, so the kernel stays bound by memory, not by converting weights to float:
 *   int8 VNNI: [N/32][K/4][2][16][4] bytes, q + 128 (unsigned; the offset is taken out per activation group);
 *   int4 VNNI: [N/32][K/8][2][16][4] bytes, byte i of a lane holding columns 8o + i (low nibble) and 8o + 4 + i;
 * the two 16-row blocks a pass reads are interleaved, so a thread reads one sequential stream.
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

enum { W_F32 = 0, W_BF16 = 1, W_I8 = 2, W_I4 = 3 };
#define TQ 4 /* rows per pass over a block pair of quantized weights (their accumulators fill the registers) */

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

/* The same packing for any item size (int8 and int4 weights, float16 scales): [N][K] -> [ceil(N/16)][K][16]. */
void remoe_pack_items(const void *w, int64_t item, int64_t n, int64_t k, void *out) {
    int64_t blocks = (n + NB - 1) / NB;
    memset(out, 0, (size_t)(blocks * k * NB * item));
    for (int64_t r = 0; r < n; r++) {
        int64_t b = r / NB, j = r % NB;
        for (int64_t c = 0; c < k; c++)
            memcpy((char *)out + (size_t)(((b * k + c) * NB + j) * item), (const char *)w + (size_t)((r * k + c) * item),
                   (size_t)item);
    }
}

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (man << 13); /* inf, NaN */
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while (!(man & 0x400u));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* A matrix in the kernel's layout: packed weights and, for int8 and int4, their scales (and int4's minimums). */
typedef struct {
    const void *w;
    const void *scale; /* int8: float32 [nb*16]; int4: float16 [nb][K/G][16] */
    const void *mins;  /* int4: float16 [nb][K/G][16] */
    int64_t group;     /* int4: G input columns per scale */
    int64_t vnni;      /* int8/int4: 1 = the VNNI packing (activations quantized to int8), 0 = the float one */
} Packed;

#define AG 32 /* activation columns per int8 scale in the VNNI kernels */

/* int8 q [N][K] -> the VNNI packing [N/32][K/4][2][16][4] of q + 128 (K a multiple of 4; rows past N zero). */
void remoe_pack_i8_vnni(const int8_t *q, int64_t n, int64_t k, uint8_t *out) {
    int64_t pairs = (n + 2 * NB - 1) / (2 * NB);
    memset(out, 0, (size_t)(pairs * 2 * k * NB));
    for (int64_t r = 0; r < n; r++) {
        int64_t b = r / NB, j = r % NB;
        for (int64_t c = 0; c < k; c++)
            out[(((b / 2) * (k / 4) + c / 4) * 2 + b % 2) * 64 + j * 4 + c % 4] = (uint8_t)((int)q[r * k + c] + 128);
    }
}

/* int4 q [N][K/2] (column 2c low nibble, 2c + 1 high) -> the VNNI packing [N/32][K/8][2][16][4] (K a multiple of
 * 8; rows past N zero). */
void remoe_pack_i4_vnni(const uint8_t *q, int64_t n, int64_t k, uint8_t *out) {
    int64_t pairs = (n + 2 * NB - 1) / (2 * NB);
    memset(out, 0, (size_t)(pairs * 2 * (k / 2) * NB));
    for (int64_t r = 0; r < n; r++) {
        int64_t b = r / NB, j = r % NB;
        for (int64_t c = 0; c < k; c++) {
            uint8_t byte = q[r * (k / 2) + c / 2], v = c % 2 ? byte >> 4 : byte & 15;
            int64_t o = c / 8, i = c % 8;
            out[(((b / 2) * (k / 8) + o) * 2 + b % 2) * 64 + j * 4 + i % 4] |= (uint8_t)(i < 4 ? v : v << 4);
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

static inline void store_pair(int T, const __m512 r[][2], float *y, int64_t ystride, int64_t n0, int64_t n) {
    int64_t m = n - n0 < 2 * NB ? n - n0 : 2 * NB;
    for (int t = 0; t < T; t++) {
        float tmp[2 * NB];
        _mm512_storeu_ps(tmp, r[t][0]);
        _mm512_storeu_ps(tmp + NB, r[t][1]);
        memcpy(y + t * ystride + n0, tmp, (size_t)m * 4);
    }
}

static inline __m512 widen_i8(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* int8, T <= TQ rows over blocks b, b+1: even and odd columns accumulate apart (two FMA chains per block). */
static inline __attribute__((always_inline)) void pair_i8(const float *x, int T, int64_t K, const int8_t *w0, int two,
                                                           const float *s0, float *y, int64_t ystride, int64_t n0,
                                                           int64_t n) {
    const int8_t *w1 = w0 + (size_t)K * NB;
    __m512 a[TQ][4];
    for (int t = 0; t < TQ; t++) a[t][0] = a[t][1] = a[t][2] = a[t][3] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 1 < K; c += 2) {
        __m512 v00 = widen_i8(w0 + c * NB), v01 = widen_i8(w0 + (c + 1) * NB);
        __m512 v10 = two ? widen_i8(w1 + c * NB) : _mm512_setzero_ps();
        __m512 v11 = two ? widen_i8(w1 + (c + 1) * NB) : _mm512_setzero_ps();
        for (int t = 0; t < T; t++) {
            __m512 xa = _mm512_set1_ps(x[t * K + c]), xb = _mm512_set1_ps(x[t * K + c + 1]);
            a[t][0] = _mm512_fmadd_ps(v00, xa, a[t][0]);
            a[t][1] = _mm512_fmadd_ps(v01, xb, a[t][1]);
            a[t][2] = _mm512_fmadd_ps(v10, xa, a[t][2]);
            a[t][3] = _mm512_fmadd_ps(v11, xb, a[t][3]);
        }
    }
    if (c < K) {
        __m512 v0 = widen_i8(w0 + c * NB), v1 = two ? widen_i8(w1 + c * NB) : _mm512_setzero_ps();
        for (int t = 0; t < T; t++) {
            __m512 xa = _mm512_set1_ps(x[t * K + c]);
            a[t][0] = _mm512_fmadd_ps(v0, xa, a[t][0]);
            a[t][2] = _mm512_fmadd_ps(v1, xa, a[t][2]);
        }
    }
    __m512 sc0 = _mm512_loadu_ps(s0), sc1 = two ? _mm512_loadu_ps(s0 + NB) : _mm512_setzero_ps();
    __m512 r[TQ][2];
    for (int t = 0; t < T; t++) {
        r[t][0] = _mm512_mul_ps(_mm512_add_ps(a[t][0], a[t][1]), sc0);
        r[t][1] = _mm512_mul_ps(_mm512_add_ps(a[t][2], a[t][3]), sc1);
    }
    store_pair(T, r, y, ystride, n0, n);
}

static inline __m512 load_f16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

/* int4, T <= TQ rows over blocks b, b+1. A byte's low nibble indexes the table directly (vpermps reads the
 * low 4 bits of each lane), its high nibble after a shift. Per group: sum_c x q, times the group's scale, plus
 * its minimum times the row's sum of x over the group (xsum [T][K/G]). */
static inline __attribute__((always_inline)) void pair_i4(const float *x, const float *xsum, int T, int64_t K,
                                                           int64_t G, const uint8_t *w0, int two, const uint16_t *sc,
                                                           const uint16_t *mn, float *y, int64_t ystride, int64_t n0,
                                                           int64_t n) {
    const int64_t half = K / 2, ng = K / G;
    const uint8_t *w1 = w0 + (size_t)half * NB;
    const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 a[TQ][2];
    for (int t = 0; t < TQ; t++) a[t][0] = a[t][1] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        __m512 e[TQ][4];
        for (int t = 0; t < TQ; t++) e[t][0] = e[t][1] = e[t][2] = e[t][3] = _mm512_setzero_ps();
        for (int64_t c2 = g * G / 2; c2 < (g + 1) * G / 2; c2++) {
            __m512i b0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w0 + c2 * NB)));
            __m512i b1 = two ? _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w1 + c2 * NB)))
                             : _mm512_setzero_si512();
            __m512 lo0 = _mm512_permutexvar_ps(b0, table), hi0 = _mm512_permutexvar_ps(_mm512_srli_epi32(b0, 4), table);
            __m512 lo1 = _mm512_permutexvar_ps(b1, table), hi1 = _mm512_permutexvar_ps(_mm512_srli_epi32(b1, 4), table);
            for (int t = 0; t < T; t++) {
                __m512 xa = _mm512_set1_ps(x[t * K + 2 * c2]), xb = _mm512_set1_ps(x[t * K + 2 * c2 + 1]);
                e[t][0] = _mm512_fmadd_ps(lo0, xa, e[t][0]);
                e[t][1] = _mm512_fmadd_ps(hi0, xb, e[t][1]);
                e[t][2] = _mm512_fmadd_ps(lo1, xa, e[t][2]);
                e[t][3] = _mm512_fmadd_ps(hi1, xb, e[t][3]);
            }
        }
        __m512 s0 = load_f16(sc + g * NB), m0 = load_f16(mn + g * NB);
        __m512 s1 = two ? load_f16(sc + (ng + g) * NB) : _mm512_setzero_ps();
        __m512 m1 = two ? load_f16(mn + (ng + g) * NB) : _mm512_setzero_ps();
        for (int t = 0; t < T; t++) {
            __m512 xs = _mm512_set1_ps(xsum[t * ng + g]);
            a[t][0] = _mm512_fmadd_ps(m0, xs, _mm512_fmadd_ps(_mm512_add_ps(e[t][0], e[t][1]), s0, a[t][0]));
            a[t][1] = _mm512_fmadd_ps(m1, xs, _mm512_fmadd_ps(_mm512_add_ps(e[t][2], e[t][3]), s1, a[t][1]));
        }
    }
    store_pair(T, a, y, ystride, n0, n);
}

#define QPAIR_T(TT)                                                                                              \
    static void qpair_##TT(const float *x, const float *xsum, int64_t K, const Packed *m, int wtype, int64_t b,  \
                           int64_t nb, float *y, int64_t ystride, int64_t n) {                                   \
        int two = b + 1 < nb;                                                                                    \
        if (wtype == W_I8)                                                                                       \
            pair_i8(x, TT, K, (const int8_t *)m->w + (size_t)b * K * NB, two, (const float *)m->scale + b * NB, \
                    y, ystride, b * NB, n);                                                                      \
        else                                                                                                     \
            pair_i4(x, xsum, TT, K, m->group, (const uint8_t *)m->w + (size_t)b * (K / 2) * NB, two,             \
                    (const uint16_t *)m->scale + (size_t)b * (K / m->group) * NB,                                \
                    (const uint16_t *)m->mins + (size_t)b * (K / m->group) * NB, y, ystride, b * NB, n);         \
    }
QPAIR_T(1)
QPAIR_T(2)
QPAIR_T(3)
QPAIR_T(4)
typedef void (*qpair_fn)(const float *, const float *, int64_t, const Packed *, int, int64_t, int64_t, float *,
                         int64_t, int64_t);
static const qpair_fn QPAIRS[TQ + 1] = {0, qpair_1, qpair_2, qpair_3, qpair_4};

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define HAVE_VNNI 1
#ifndef AHEAD4
#define AHEAD4 8192 /* int4 spends twice the instructions per byte: prefetched twice as far (measured: +4-5% at 1 row) */
#endif
#ifndef PF_HINT
/* Into L2, not L1: a core has few L1 miss buffers, and prefetches held there capped one thread's stream at ~20 GB/s
 * (measured, 1 row, cold, alternated with T0: int4 +12-26%, int8 +6-15% at 2 threads; int8 at 1 thread 18-21 -> 27) */
#define PF_HINT _MM_HINT_T1
#endif
#ifndef AHEAD
#define AHEAD 4096 /* bytes ahead in each weight stream: without it a core computes and waits on memory in turn (measured: up to 1.5x at 1 row) */
#endif
static inline __m512i bcast4(const int8_t *p) { /* 4 int8 activations in every 32-bit lane */
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* int8 weights (VNNI packing), T <= TQ rows over blocks b, b+1: per activation group, an exact int32 dot of q + 128
 * with the group's int8 activations, less 128 x their sum, times the group's scale. xq [T][K], sx/xqs [T][K/AG].
 * One row alone gets two accumulator chains a block (even and odd column quads); more rows are chains enough, and
 * fewer accumulators keep everything in registers. */
static inline __attribute__((always_inline)) void pair_i8v(const int8_t *xq, const float *sx, const int32_t *xqs,
                                                            int T, int64_t K, const uint8_t *w0, int two,
                                                            const float *s0, float *y, int64_t ystride, int64_t n0,
                                                            int64_t n) {
    const int64_t ng = K / AG;
    const int odd = T == 1; /* the odd quads' own chain */
    __m512 f[TQ][2];
    for (int t = 0; t < TQ; t++) f[t][0] = f[t][1] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        __m512i a[TQ][2], b[TQ][2];
        for (int t = 0; t < TQ; t++) a[t][0] = a[t][1] = b[t][0] = b[t][1] = _mm512_setzero_si512();
        for (int64_t o = g * AG / 4; o < (g + 1) * AG / 4; o += 2) { /* two column quads */
            const uint8_t *w = w0 + o * 128; /* quads o, o + 1 of both blocks: 256 bytes in a row */
            _mm_prefetch((const char *)(w + AHEAD), PF_HINT);
            _mm_prefetch((const char *)(w + 64 + AHEAD), PF_HINT);
            _mm_prefetch((const char *)(w + 128 + AHEAD), PF_HINT);
            _mm_prefetch((const char *)(w + 192 + AHEAD), PF_HINT);
            __m512i v00 = _mm512_loadu_si512(w), v10 = _mm512_loadu_si512(w + 64); /* the padding block is zeros */
            __m512i v01 = _mm512_loadu_si512(w + 128), v11 = _mm512_loadu_si512(w + 192);
            for (int t = 0; t < T; t++) {
                __m512i xa = bcast4(xq + t * K + 4 * o), xb = bcast4(xq + t * K + 4 * o + 4);
                a[t][0] = _mm512_dpbusd_epi32(a[t][0], v00, xa);
                a[t][1] = _mm512_dpbusd_epi32(a[t][1], v10, xa);
                if (odd) {
                    b[t][0] = _mm512_dpbusd_epi32(b[t][0], v01, xb);
                    b[t][1] = _mm512_dpbusd_epi32(b[t][1], v11, xb);
                } else {
                    a[t][0] = _mm512_dpbusd_epi32(a[t][0], v01, xb);
                    a[t][1] = _mm512_dpbusd_epi32(a[t][1], v11, xb);
                }
            }
        }
        for (int t = 0; t < T; t++) {
            __m512i off = _mm512_set1_epi32(128 * xqs[t * ng + g]);
            __m512 sc = _mm512_set1_ps(sx[t * ng + g]);
            __m512i d0 = _mm512_sub_epi32(odd ? _mm512_add_epi32(a[t][0], b[t][0]) : a[t][0], off);
            __m512i d1 = _mm512_sub_epi32(odd ? _mm512_add_epi32(a[t][1], b[t][1]) : a[t][1], off);
            f[t][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), sc, f[t][0]);
            f[t][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), sc, f[t][1]);
        }
    }
    __m512 sc0 = _mm512_loadu_ps(s0), sc1 = two ? _mm512_loadu_ps(s0 + NB) : _mm512_setzero_ps();
    __m512 r[TQ][2];
    for (int t = 0; t < T; t++) {
        r[t][0] = _mm512_mul_ps(f[t][0], sc0);
        r[t][1] = _mm512_mul_ps(f[t][1], sc1);
    }
    store_pair(T, r, y, ystride, n0, n);
}

/* int4 weights (VNNI packing), T <= TQ rows over blocks b, b+1: per activation group an exact int32 dot of the
 * nibbles with the int8 activations, times (activation scale x the weight group's scale); per weight group its
 * minimum times the row's sum of (dequantized) activations over the group (xsum [T][K/G]). A byte's high nibble
 * is masked in place (16 x its value), so its products sum 16 x too and the group's sum is 16 lo + hi, scaled by
 * 1/16: one AND a nibble, no shift. */
static inline __attribute__((always_inline)) void pair_i4v(const int8_t *xq, const float *sx, const float *xsum, int T,
                                                            int64_t K, int64_t G, const uint8_t *w0, int two,
                                                            const uint16_t *sc, const uint16_t *mn, float *y,
                                                            int64_t ystride, int64_t n0, int64_t n) {
    const int64_t nw = K / G, na = K / AG;
    const __m512i low = _mm512_set1_epi8(0x0f), high = _mm512_set1_epi8((char)0xf0);
    const __m512 sixteenth = _mm512_set1_ps(1.0f / 16);
    __m512 f[TQ][2];
    for (int t = 0; t < TQ; t++) f[t][0] = f[t][1] = _mm512_setzero_ps();
    for (int64_t wg = 0; wg < nw; wg++) {
        __m512 s0 = _mm512_mul_ps(load_f16(sc + wg * NB), sixteenth);
        __m512 s1 = two ? _mm512_mul_ps(load_f16(sc + (nw + wg) * NB), sixteenth) : _mm512_setzero_ps();
        for (int64_t ag = wg * G / AG; ag < (wg + 1) * G / AG; ag++) {
            __m512i lo[TQ][2], hi[TQ][2];
            for (int t = 0; t < TQ; t++) lo[t][0] = lo[t][1] = hi[t][0] = hi[t][1] = _mm512_setzero_si512();
            for (int64_t o = ag * AG / 8; o < (ag + 1) * AG / 8; o++) { /* a column octet: 8 columns, 16 rows */
                const uint8_t *w = w0 + o * 128; /* octet o of both blocks: 128 bytes in a row */
                _mm_prefetch((const char *)(w + AHEAD4), PF_HINT);
                _mm_prefetch((const char *)(w + 64 + AHEAD4), PF_HINT);
                __m512i v0 = _mm512_loadu_si512(w), v1 = _mm512_loadu_si512(w + 64); /* the padding block: zeros */
                __m512i l0 = _mm512_and_si512(v0, low), h0 = _mm512_and_si512(v0, high);
                __m512i l1 = _mm512_and_si512(v1, low), h1 = _mm512_and_si512(v1, high);
                for (int t = 0; t < T; t++) {
                    __m512i xa = bcast4(xq + t * K + 8 * o), xb = bcast4(xq + t * K + 8 * o + 4);
                    lo[t][0] = _mm512_dpbusd_epi32(lo[t][0], l0, xa);
                    hi[t][0] = _mm512_dpbusd_epi32(hi[t][0], h0, xb);
                    lo[t][1] = _mm512_dpbusd_epi32(lo[t][1], l1, xa);
                    hi[t][1] = _mm512_dpbusd_epi32(hi[t][1], h1, xb);
                }
            }
            for (int t = 0; t < T; t++) {
                __m512 xs = _mm512_set1_ps(sx[t * na + ag]);
                __m512 d0 = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(lo[t][0], 4), hi[t][0]));
                __m512 d1 = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(lo[t][1], 4), hi[t][1]));
                f[t][0] = _mm512_fmadd_ps(d0, _mm512_mul_ps(xs, s0), f[t][0]);
                f[t][1] = _mm512_fmadd_ps(d1, _mm512_mul_ps(xs, s1), f[t][1]);
            }
        }
        __m512 m0 = load_f16(mn + wg * NB), m1 = two ? load_f16(mn + (nw + wg) * NB) : _mm512_setzero_ps();
        for (int t = 0; t < T; t++) {
            __m512 xs = _mm512_set1_ps(xsum[t * nw + wg]);
            f[t][0] = _mm512_fmadd_ps(m0, xs, f[t][0]);
            f[t][1] = _mm512_fmadd_ps(m1, xs, f[t][1]);
        }
    }
    store_pair(T, f, y, ystride, n0, n);
}

/* The activations of one VNNI call: int8 in groups of AG with their scales and sums. */
typedef struct {
    const int8_t *xq;   /* [T][K] */
    const float *sx;    /* [T][K/AG] */
    const int32_t *xqs; /* [T][K/AG] */
    const float *xsum;  /* int4: [T][K/G], the dequantized activations' sums per weight group */
} QuantX;

#define VPAIR_T(TT)                                                                                               \
    static void vpair_##TT(const QuantX *q, int64_t t0, int64_t K, const Packed *m, int wtype, int64_t b,         \
                           int64_t nb, float *y, int64_t ystride, int64_t n) {                                    \
        int two = b + 1 < nb;                                                                                     \
        int64_t na = K / AG;                                                                                      \
        if (wtype == W_I8)                                                                                        \
            pair_i8v(q->xq + t0 * K, q->sx + t0 * na, q->xqs + t0 * na, TT, K,                                    \
                     (const uint8_t *)m->w + (size_t)b * K * NB, two, (const float *)m->scale + b * NB, y,        \
                     ystride, b * NB, n);                                                                         \
        else                                                                                                      \
            pair_i4v(q->xq + t0 * K, q->sx + t0 * na, q->xsum + t0 * (K / m->group), TT, K, m->group,             \
                     (const uint8_t *)m->w + (size_t)b * (K / 2) * NB, two,                                       \
                     (const uint16_t *)m->scale + (size_t)b * (K / m->group) * NB,                                \
                     (const uint16_t *)m->mins + (size_t)b * (K / m->group) * NB, y, ystride, b * NB, n);         \
    }
VPAIR_T(1)
VPAIR_T(2)
VPAIR_T(3)
VPAIR_T(4)
typedef void (*vpair_fn)(const QuantX *, int64_t, int64_t, const Packed *, int, int64_t, int64_t, float *, int64_t,
                         int64_t);
static const vpair_fn VPAIRS[TQ + 1] = {0, vpair_1, vpair_2, vpair_3, vpair_4};
#endif
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

/* y[T][n] = x[T][K] . W^T for quantized packed W; the rows' passes of TQ run inside each block pair, so a pair
 * is read from memory once and from the cache by later passes. Returns -2 when memory ran out. */
static int matmul_quant(const float *x, int64_t T, int64_t K, const Packed *m, int wtype, int64_t n, float *y, int nt) {
    int64_t ng = wtype == W_I4 ? K / m->group : 0;
    if (n * K < SERIAL_BELOW) nt = 1;
    float *xsum = NULL;
    if (wtype == W_I4) { /* each row's sum of x over each group: the minimums' term */
        xsum = (float *)malloc((size_t)(T * ng) * sizeof(float));
        if (!xsum) return -2;
        for (int64_t t = 0; t < T; t++)
            for (int64_t g = 0; g < ng; g++) {
                float acc = 0;
                for (int64_t c = g * m->group; c < (g + 1) * m->group; c++) acc += x[t * K + c];
                xsum[t * ng + g] = acc;
            }
    }
#ifdef __AVX512F__
    int64_t nb = (n + NB - 1) / NB, pairs = (nb + 1) / 2;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t p = 0; p < pairs; p++) {
        for (int64_t t0 = 0; t0 < T; t0 += TQ) {
            int64_t tt = T - t0 < TQ ? T - t0 : TQ;
            QPAIRS[tt](x + t0 * K, xsum ? xsum + t0 * ng : NULL, K, m, wtype, 2 * p, nb, y + t0 * n, n, n);
        }
    }
#else /* the plain loops (the library is loaded only where AVX-512 is, but it builds everywhere) */
    (void)nt;
    for (int64_t r = 0; r < n; r++) {
        int64_t b = r / NB, j = r % NB;
        for (int64_t t = 0; t < T; t++) {
            float acc = 0;
            for (int64_t c = 0; c < K; c++) {
                float wv;
                if (wtype == W_I8) {
                    wv = ((const int8_t *)m->w)[(b * K + c) * NB + j] * ((const float *)m->scale)[r];
                } else {
                    uint8_t byte = ((const uint8_t *)m->w)[(b * (K / 2) + c / 2) * NB + j];
                    size_t at = (size_t)((b * ng + c / m->group) * NB + j);
                    wv = (float)(c % 2 ? byte >> 4 : byte & 15) * f16_to_f32(((const uint16_t *)m->scale)[at]) +
                         f16_to_f32(((const uint16_t *)m->mins)[at]);
                }
                acc += wv * x[t * K + c];
            }
            y[t * n + r] = acc;
        }
    }
#endif
    free(xsum);
    return 0;
}

/* 1 when this build has the VNNI kernels (the loader packs VNNI layouts only then). */
int remoe_has_vnni(void) {
#ifdef HAVE_VNNI
    return 1;
#else
    return 0;
#endif
}

#ifdef HAVE_VNNI
/* Room for T rows of K activations quantized per AG columns (and, for int4, sums per weight group of G). */
typedef struct {
    char *mem;
    QuantX q;
} QuantBuf;

static int quant_alloc(QuantBuf *b, int64_t T, int64_t K, int64_t G) {
    int64_t na = K / AG, nw = G ? K / G : 0;
    size_t bytes = (size_t)(T * na) * (sizeof(float) + sizeof(int32_t)) + (size_t)(T * nw) * 4 + (size_t)(T * K);
    b->mem = (char *)malloc(bytes);
    if (!b->mem) return -2;
    float *sx = (float *)b->mem;
    int32_t *xqs = (int32_t *)(sx + T * na);
    float *xsum = (float *)(xqs + T * na);
    b->q = (QuantX){(int8_t *)(xsum + T * nw), sx, xqs, xsum};
    return 0;
}

/* Row t of x [K] -> int8 per group of AG (round to nearest even, scale = max |x| / 127), the groups' scales and
 * sums, and (G > 0) the dequantized activations' sums per weight group. */
static void quantize_row(const float *x, int64_t K, int64_t G, int8_t *xq, float *sx, int32_t *xqs, float *xsum) {
    int64_t na = K / AG;
    for (int64_t g = 0; g < na; g++) {
        __m512 a = _mm512_loadu_ps(x + g * AG), b = _mm512_loadu_ps(x + g * AG + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        __m512 inv = _mm512_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
        __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inv)), qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inv));
        _mm_storeu_si128((__m128i *)(xq + g * AG), _mm512_cvtsepi32_epi8(qa)); /* |q| <= 127 by construction */
        _mm_storeu_si128((__m128i *)(xq + g * AG + 16), _mm512_cvtsepi32_epi8(qb));
        sx[g] = amax / 127.0f;
        xqs[g] = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
    }
    for (int64_t w = 0; G && w < K / G; w++) {
        float acc = 0;
        for (int64_t g = w * G / AG; g < (w + 1) * G / AG; g++) acc += sx[g] * (float)xqs[g];
        xsum[w] = acc;
    }
}

static void quantize_rows(const float *x, int64_t T, int64_t K, int64_t G, const QuantX *q) {
    int64_t na = K / AG, nw = G ? K / G : 0;
    for (int64_t t = 0; t < T; t++)
        quantize_row(x + t * K, K, G, (int8_t *)q->xq + t * K, (float *)q->sx + t * na, (int32_t *)q->xqs + t * na,
                     (float *)q->xsum + t * nw);
}

/* Row `from` of `src` to row `to` of `dst` (both laid out for K columns and group G). */
static void copy_quant_row(const QuantX *src, int64_t from, const QuantX *dst, int64_t to, int64_t K, int64_t G) {
    int64_t na = K / AG, nw = G ? K / G : 0;
    memcpy((int8_t *)dst->xq + to * K, src->xq + from * K, (size_t)K);
    memcpy((float *)dst->sx + to * na, src->sx + from * na, (size_t)na * 4);
    memcpy((int32_t *)dst->xqs + to * na, src->xqs + from * na, (size_t)na * 4);
    if (nw) memcpy((float *)dst->xsum + to * nw, src->xsum + from * nw, (size_t)nw * 4);
}

/* y[T][n] = x[T][K] . W^T for VNNI-packed int8/int4 W, over activations already quantized. */
static void vnni_run(const QuantX *q, int64_t T, int64_t K, const Packed *m, int wtype, int64_t n, float *y, int nt) {
    int64_t nb = (n + NB - 1) / NB, pairs = (nb + 1) / 2;
    if (n * K < SERIAL_BELOW) nt = 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t p = 0; p < pairs; p++) {
        for (int64_t t0 = 0; t0 < T; t0 += TQ) {
            int64_t tt = T - t0 < TQ ? T - t0 : TQ;
            VPAIRS[tt](q, t0, K, m, wtype, 2 * p, nb, y + t0 * n, n, n);
        }
    }
}

/* y[T][n] = x[T][K] . W^T for VNNI-packed W: x quantized here first. Returns -2 when memory ran out. */
static int matmul_vnni(const float *x, int64_t T, int64_t K, const Packed *m, int wtype, int64_t n, float *y, int nt) {
    QuantBuf b;
    int64_t G = wtype == W_I4 ? m->group : 0;
    if (quant_alloc(&b, T, K, G)) return -2;
    quantize_rows(x, T, K, G, &b.q);
    vnni_run(&b.q, T, K, m, wtype, n, y, nt);
    free(b.mem);
    return 0;
}
#endif

static int matmul_any(const float *x, int64_t T, int64_t K, const Packed *m, int wtype, int64_t n, float *y, int nt) {
#ifdef HAVE_VNNI
    if ((wtype == W_I8 || wtype == W_I4) && m->vnni) return matmul_vnni(x, T, K, m, wtype, n, y, nt);
#endif
    if (wtype == W_I8 || wtype == W_I4) return matmul_quant(x, T, K, m, wtype, n, y, nt);
    matmul_packed(x, T, K, m->w, wtype, n, y, nt);
    return 0;
}

static inline float silu(float g) { return g / (1.0f + expf(-g)); }

#ifdef __AVX512F__
/* silu over 16 lanes, exp(-g) from a degree-6 polynomial after range reduction: within 5 ulp (4e-7 relative) of
 * the expf one over |g| < 87. For the quantized kernels only, whose activations are already rounded to int8; the
 * exact paths keep expf (measured: the scalar loop was 3-7% of an int4 layer's time at 1-4 rows). */
static inline __m512 silu16(__m512 g) {
    const __m512 log2e = _mm512_set1_ps(1.44269504f), ln2hi = _mm512_set1_ps(0.693145752f),
                 ln2lo = _mm512_set1_ps(1.42860677e-6f), one = _mm512_set1_ps(1.0f);
    __m512 x = _mm512_max_ps(_mm512_min_ps(_mm512_sub_ps(_mm512_setzero_ps(), g), _mm512_set1_ps(104.0f)),
                             _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, ln2lo, _mm512_fnmadd_ps(n, ln2hi, x));
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, one);
    p = _mm512_fmadd_ps(p, r, one);
    __m512 e = _mm512_scalef_ps(p, n);
    return _mm512_div_ps(g, _mm512_add_ps(one, e));
}
#endif

/* a [I] = silu(g) * u, rounded to bf16 where the eager bf16 module stores a result (round); `fast`: silu16. */
static void gated_act(const float *g, const float *u, float *a, int64_t I, int round, int fast) {
    int64_t j0 = 0;
#ifdef __AVX512F__
    if (fast && !round)
        for (; j0 + 16 <= I; j0 += 16)
            _mm512_storeu_ps(a + j0, _mm512_mul_ps(silu16(_mm512_loadu_ps(g + j0)), _mm512_loadu_ps(u + j0)));
#else
    (void)fast;
#endif
    for (int64_t j = j0; j < I; j++) {
        if (round) {
            float gv = round_bf16(g[j]), uv = round_bf16(u[j]);
            a[j] = round_bf16(round_bf16(silu(gv)) * uv);
        } else {
            a[j] = silu(g[j]) * u[j];
        }
    }
}

/* The activation alone, for tests: a [n] = silu(g) * u, the quantized kernels' way (fast) or the exact one. */
void remoe_silu_mul(const float *g, const float *u, float *a, int64_t n, int fast) { gated_act(g, u, a, n, 0, fast); }

/* One expert's chunk of n <= T (row, slot) pairs: y [n][H] = down_e(silu(gate_e(x_row)) * up_e(x_row)), unweighted.
 * xs [T][H], h [T][2I] and a [T][I] are this caller's scratch; xq (VNNI gate_up) the layer's quantized rows. */
static int expert_rows(int64_t n, const int64_t *rw, int64_t H, int64_t I, const float *x, const Packed *gate_up,
                       const Packed *down, int wtype, int round, float *xs, float *h, float *a, float *y, int nt,
                       const void *xq_all, void *xq_got) {
    int failed = 0;
#ifdef HAVE_VNNI
    if (xq_all) {
        const QuantBuf *all = (const QuantBuf *)xq_all;
        QuantBuf *got = (QuantBuf *)xq_got;
        int64_t group = wtype == W_I4 ? gate_up->group : 0;
        for (int64_t r = 0; r < n; r++) copy_quant_row(&all->q, rw[r], &got->q, r, H, group);
        vnni_run(&got->q, n, H, gate_up, wtype, 2 * I, h, nt);
    } else
#endif
    {
        (void)xq_all;
        (void)xq_got;
        for (int64_t r = 0; r < n; r++) memcpy(xs + r * H, x + rw[r] * H, (size_t)H * 4);
        failed = matmul_any(xs, n, H, gate_up, wtype, 2 * I, h, nt);
    }
    if (failed) return failed;
    int fast = wtype == W_I8 || wtype == W_I4;
    for (int64_t r = 0; r < n; r++) gated_act(h + r * 2 * I, h + r * 2 * I + I, a + r * I, I, round, fast);
    return matmul_any(a, n, I, down, wtype, H, y, nt);
}

/* One layer's hosted experts for T rows:
 *   out[t] = sum over slots s with index[t][s] = e >= 0 of weight[t][s] * down_e(silu(gate_e(x_t)) * up_e(x_t)).
 * gate_up[e] packs [2I][H] (gate rows first, then up), down[e] packs [H][I] (an expert not here has w NULL);
 * an index of -1 is skipped.
 * round_bf16 != 0 rounds every intermediate to bfloat16 where the eager bf16 module stores one, so bf16
 * results stay as close to the architecture's class as float32 results are.
 * Where a batch names at least two experts per thread, the threads take whole experts (no barrier between an
 * expert's matrices: a stolen vCPU delays one expert, not every matrix), else they split each matrix's rows. Each
 * expert's output goes to its own rows of a buffer and is added into `out` afterwards in expert order, one thread,
 * so the result is bit for bit the same either way. Returns 0, 1 + the first routed expert with no weights, or -2
 * when memory ran out. */
int64_t remoe_gated_experts(int64_t T, int64_t H, int64_t I, int64_t K, const float *x, const int64_t *index,
                            const float *weight, int64_t E, const Packed *gate_up, const Packed *down, int wtype,
                            int round, float *out, int nt) {
    /* (row, slot) pairs grouped by expert in ascending order, (row, slot) order within one (a row may name one
     * expert in several slots: a caller's filler id) */
    int64_t *count = (int64_t *)calloc((size_t)E + 1, sizeof(int64_t));
    int64_t *rows = (int64_t *)malloc((size_t)T * K * 2 * sizeof(int64_t) + 1);
    if (!count || !rows) {
        free(count);
        free(rows);
        return -2;
    }
    int64_t *slots = rows + T * K;
    for (int64_t i = 0; i < T * K; i++)
        if (index[i] >= 0 && index[i] < E) count[index[i] + 1]++;
    for (int64_t e = 0; e < E; e++) count[e + 1] += count[e]; /* count[e] = first pair of expert e */
    int64_t total = count[E];
    {
        int64_t *fill = (int64_t *)malloc((size_t)E * sizeof(int64_t) + 1);
        if (!fill) {
            free(count);
            free(rows);
            return -2;
        }
        memcpy(fill, count, (size_t)E * sizeof(int64_t));
        for (int64_t t = 0; t < T; t++)
            for (int64_t s = 0; s < K; s++) {
                int64_t e = index[t * K + s];
                if (e < 0 || e >= E) continue;
                rows[fill[e]] = t;
                slots[fill[e]++] = s;
            }
        free(fill);
    }
    for (int64_t e = 0; e < E; e++)
        if (count[e + 1] > count[e] && (!gate_up[e].w || !down[e].w)) {
            free(count);
            free(rows);
            return e + 1;
        }
    /* work items: an expert's pairs in chunks of at most T (a thread's scratch holds T rows) */
    int64_t items = 0;
    for (int64_t e = 0; e < E; e++) items += (count[e + 1] - count[e] + T - 1) / T;
    int64_t *item_p0 = (int64_t *)malloc((size_t)items * 3 * sizeof(int64_t) + 1);
    float *ybuf = (float *)malloc((size_t)total * H * sizeof(float) + 1); /* [pairs][H], pair order */
    int failed = !item_p0 || !ybuf;
    int64_t *item_n = item_p0 + items, *item_e = item_n + items;
    if (!failed) {
        int64_t it = 0;
        for (int64_t e = 0; e < E; e++)
            for (int64_t p0 = count[e]; p0 < count[e + 1]; p0 += T) {
                item_p0[it] = p0;
                item_n[it] = count[e + 1] - p0 < T ? count[e + 1] - p0 : T;
                item_e[it++] = e;
            }
    }
    void *xall = NULL; /* VNNI gate_up: every row of x quantized once for the layer */
#ifdef HAVE_VNNI
    QuantBuf xall_buf = {0};
    int64_t gu_group = 0;
    for (int64_t e = 0; !failed && e < E; e++)
        if (count[e + 1] > count[e]) {
            if ((wtype == W_I8 || wtype == W_I4) && gate_up[e].vnni) {
                gu_group = wtype == W_I4 ? gate_up[e].group : 0;
                failed = quant_alloc(&xall_buf, T, H, gu_group) != 0;
                if (!failed) {
                    quantize_rows(x, T, H, gu_group, &xall_buf.q);
                    xall = &xall_buf;
                }
            }
            break; /* every expert of a layer has the same packing */
        }
#endif
    int by_expert = nt > 1 && items >= 2 * nt;
    int threads = by_expert ? nt : 1, inner = by_expert ? 1 : nt;
    if (!failed) {
#pragma omp parallel num_threads(threads) if (threads > 1)
        {
            float *mine = (float *)malloc((size_t)T * (H + 3 * I) * sizeof(float));
            int bad = mine == NULL;
#ifdef HAVE_VNNI
            QuantBuf got = {0};
            if (!bad && xall) bad = quant_alloc(&got, T, H, gu_group) != 0;
            void *gotp = &got;
#else
            void *gotp = NULL;
#endif
            if (bad) {
#pragma omp atomic write
                failed = 1;
            } else {
#pragma omp for schedule(dynamic, 1)
                for (int64_t it = 0; it < items; it++) {
                    int64_t e = item_e[it], p0 = item_p0[it];
                    float *xs = mine, *h = xs + T * H, *a = h + T * 2 * I;
                    if (expert_rows(item_n[it], rows + p0, H, I, x, &gate_up[e], &down[e], wtype, round, xs, h, a,
                                    ybuf + p0 * H, inner, xall, gotp)) {
#pragma omp atomic write
                        failed = 1;
                    }
                }
            }
#ifdef HAVE_VNNI
            free(got.mem);
#endif
            free(mine);
        }
    }
    if (!failed) /* in expert order, one thread: the sums round the same however the experts were shared out */
        for (int64_t p = 0; p < total; p++) {
            float wt = weight[rows[p] * K + slots[p]];
            float *o = out + rows[p] * H;
            const float *yr = ybuf + p * H;
            if (round) {
                for (int64_t j = 0; j < H; j++) o[j] = round_bf16(o[j] + round_bf16(round_bf16(yr[j]) * wt));
            } else {
                for (int64_t j = 0; j < H; j++) o[j] += yr[j] * wt;
            }
        }
#ifdef HAVE_VNNI
    free(xall_buf.mem);
#endif
    free(item_p0);
    free(ybuf);
    free(count);
    free(rows);
    return failed ? -2 : 0;
}
