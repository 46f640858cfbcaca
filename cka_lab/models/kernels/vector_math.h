// Vector arithmetic shared by cka_lab's CPU kernels (window_attention.cpp, mlp_middle.cpp): 16-lane
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

// 2^f for f in [-1/2, 1/2]: a degree-5 polynomial fitted for relative error (2.3e-7 evaluated in float32,
// as good as the degree-6 Taylor series there).
#define EXP2_POLY(p, f, FMA, SET)              \
    p = SET(1.3276471520e-03f);                \
    p = FMA(p, f, SET(9.6755413306e-03f));     \
    p = FMA(p, f, SET(5.5507132750e-02f));     \
    p = FMA(p, f, SET(2.4022119724e-01f));     \
    p = FMA(p, f, SET(6.9314696706e-01f));     \
    p = FMA(p, f, SET(1.0000000717e+00f));

static constexpr float LOG2E = 1.44269504088896341f;
static constexpr float EXP2_MIN = -125.5f;  // 2^-125.5 = e^-87: below it 2^x is returned as exactly 0

// 2^x for x <= 0 (scores in log2 units minus their max or log-sum-exp) as 2^n * 2^f, n the nearest integer:
// exactly 0 below EXP2_MIN and for -inf, so a masked or vanishing weight is an exact zero, never a float32
// denormal (arithmetic on which is slow).
#if defined(__AVX512F__)
#include <immintrin.h>
static inline vf exp2_neg(vf x) {
    const __m512 xv = (__m512)x;
    const __m512 n = _mm512_roundscale_ps(xv, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(xv, n), p;
    EXP2_POLY(p, f, _mm512_fmadd_ps, _mm512_set1_ps)
    const __mmask16 keep = _mm512_cmp_ps_mask(xv, _mm512_set1_ps(EXP2_MIN), _CMP_GE_OQ);
    return (vf)_mm512_maskz_scalef_ps(keep, p, n);
}
#else
static inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
static inline vf exp2_neg(vf x) {
    const vi keep = x >= EXP2_MIN;
    const vf t = keep ? x : splat(EXP2_MIN);
    const vf n = (t + 12582912.0f) - 12582912.0f;  // round to nearest (|t| < 2^22)
    vf f = t - n, p;
    EXP2_POLY(p, f, vfma, splat)
    const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    const vf y = p * (vf)e;
    return keep ? y : splat(0.0f);
}
#endif

// e^x for x <= 0, exactly 0 below -87 (see exp2_neg).
static inline vf exp_neg(vf x) { return exp2_neg(x * LOG2E); }

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
