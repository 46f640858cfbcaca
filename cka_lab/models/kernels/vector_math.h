// Vector arithmetic shared by cka_lab's CPU kernels (window_attention.cpp, depthwise_conv.cpp): 16-lane
// float32 vectors (GCC/Clang vector extensions, AVX-512 where the CPU has it), exp of non-positive
// arguments and the exact (erf) GELU with its derivative, computed as torch's CPU kernels compute them.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
static constexpr int L = 16;  // lanes of vf

static inline vf splat(float x) { return vf{} + x; }
static inline vf vmax(vf a, vf b) { return a > b ? a : b; }
static inline vf loadu(const float *p) { vf v; std::memcpy(&v, p, sizeof(vf)); return v; }
static inline int64_t round16(int64_t n) { return (n + L - 1) / L * L; }

#if defined(__clang__)
#define SHUF(v, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#else
#define SHUF(v, ...) __builtin_shuffle(v, vi{__VA_ARGS__})
#endif

static inline float hsum(vf v) {
    v += SHUF(v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    v += SHUF(v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    v += SHUF(v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    v += SHUF(v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    return v[0];
}

// 2^f for f in [-1/2, 1/2]: Taylor coefficients (ln 2)^k / k!, k = 6 .. 0.
#define EXP2_POLY(p, f, FMA, SET)              \
    p = SET(1.5403530393381609e-4f);           \
    p = FMA(p, f, SET(1.3333558146428443e-3f)); \
    p = FMA(p, f, SET(9.6181291076284772e-3f)); \
    p = FMA(p, f, SET(5.5504108664821580e-2f)); \
    p = FMA(p, f, SET(2.4022650695910071e-1f)); \
    p = FMA(p, f, SET(6.9314718055994531e-1f)); \
    p = FMA(p, f, SET(1.0f));

#if defined(__AVX512F__)
#include <immintrin.h>
static inline vf exp_neg(vf x) {  // exp(x), x <= 0 expected (scores minus their max or log-sum-exp)
    __m512 xv = (__m512)x;
    __m512 t = _mm512_mul_ps(xv, _mm512_set1_ps(1.44269504088896341f));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n), p;
    EXP2_POLY(p, f, _mm512_fmadd_ps, _mm512_set1_ps)
    __mmask16 keep = _mm512_cmp_ps_mask(xv, _mm512_set1_ps(-87.0f), _CMP_GE_OQ);
    return (vf)_mm512_maskz_scalef_ps(keep, p, n);
}
#else
static inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
static inline vf exp_neg(vf x) {
    const vf lo = splat(-87.0f);
    vi keep = x >= lo;
    vf t = (keep ? x : lo) * 1.44269504088896341f;
    vf n = (t + 12582912.0f) - 12582912.0f;  // round to nearest (|t| < 2^22)
    vf f = t - n, p;
    EXP2_POLY(p, f, vfma, splat)
    vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    vf y = p * (vf)e;
    return keep ? y : splat(0.0f);
}
#endif

// 1 / x: AVX-512's 14-bit reciprocal refined by one Newton step (about 1 ulp), elsewhere a division.
static inline vf reciprocal(vf x) {
#if defined(__AVX512F__)
    const __m512 r = _mm512_rcp14_ps((__m512)x);
    return (vf)_mm512_mul_ps(r, _mm512_fnmadd_ps((__m512)x, r, _mm512_set1_ps(2.0f)));
#else
    return 1.0f / x;
#endif
}

// erf(u) given e = exp(-u^2), by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7): the formula of
// torch's vectorised CPU erf, which its GELU uses.
static inline vf erf_given_exp(vf u, vf e) {
    const vi sign = (vi)u & (int32_t)0x80000000;
    const vf a = (vf)((vi)u & (int32_t)0x7fffffff);
    const vf t = reciprocal(a * 0.3275911f + 1.0f);
    vf r = t * 1.061405429f - 1.453152027f;
    r = r * t + 1.421413741f;
    r = r * t - 0.284496736f;
    r = r * t + 0.254829592f;
    const vf y = 1.0f - r * t * e;
    return (vf)((vi)y | sign);
}

// GELU(x) = x * Phi(x) = x / 2 * (1 + erf(x / sqrt 2)) and its derivative Phi(x) + x * phi(x), as torch's
// CPU GELU (approximate="none") and its backward compute them; one exp serves both.
static inline vf gelu(vf x) {
    const vf u = x * 0.70710678118654752f;
    return x * 0.5f * (1.0f + erf_given_exp(u, exp_neg(-(u * u))));
}

static inline void gelu_and_derivative(vf x, vf &g, vf &d) {
    const vf u = x * 0.70710678118654752f;
    const vf e = exp_neg(-(u * u));
    const vf cdf = 0.5f * (1.0f + erf_given_exp(u, e));
    g = x * cdf;
    d = cdf + x * (0.3989422804014327f * e);
}
