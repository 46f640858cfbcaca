// Windowed multi-head attention with small heads (EDT: head_dim 5 to 15, 144-token windows), float32, CPU.
//
// Built and loaded by cka_lab/models/cpu_kernels.py (ctypes; no torch headers), called by cpu_attention.py.
// Layouts, for W windows of N tokens and h heads of size D:
//   qkv  (W, N, 3, h, D)  the qkv projection of window-major tokens, contiguous
//   mask (nWm, N, N)      additive (0 or -inf), window w uses mask[w % nWm]; NULL for none
//   out  (W, N, h, D)     softmax(q k^T * scale + mask) v
//   lse  (W, h, N)        log-sum-exp of each row of scores (saved for the backward)
//   dqkv (W, N, 3, h, D)  the gradient of qkv, every element written
// A task is one (window, head) pair, t = w * h + head; a call handles tasks [t0, t1), so callers can split
// the work between threads. Results do not depend on the split.
//
// The forward is vectorised over 16 queries at a time (scores of 16 queries against one key per step: no
// horizontal sums); the backward over 16 keys at a time (dK and dV accumulate along the keys). exp is
// evaluated as 2^n * 2^f with a degree-6 polynomial for 2^f, f in [-1/2, 1/2] (relative error ~1e-7), and is
// exactly 0 below -87 and for -inf: masked weights are exact zeros, never float32 denormals.
#include <cmath>
#include <cstdint>
#include <cstring>

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
static constexpr int L = 16;        // lanes of vf
static constexpr int MAXNV = 64;    // windows of up to 1024 tokens

static inline vf splat(float x) { return vf{} + x; }
static inline vf vmax(vf a, vf b) { return a > b ? a : b; }

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

// The task's keys and values, transposed and zero-padded to whole vectors: KT[c * NV + jv] holds
// k[16 jv .. 16 jv + 15][c].
template <int D>
static inline void load_kv(const float *base, int64_t row, int h, int N, int NV, vf *KT, vf *VT) {
    for (int k = 0; k < D * NV; ++k) { KT[k] = splat(0.0f); VT[k] = splat(0.0f); }
    float *kt = (float *)KT, *vt = (float *)VT;
    for (int j = 0; j < N; ++j)
        for (int c = 0; c < D; ++c) {
            kt[c * NV * L + j] = base[j * row + h * D + c];
            vt[c * NV * L + j] = base[j * row + 2 * h * D + c];
        }
}

template <int D>
static void forward(const float *qkv, const float *mask, float *out, float *lse, int64_t t0, int64_t t1,
                    int N, int h, int nWm, float scale, float *MT) {
    const int NV = (N + L - 1) / L;
    alignas(64) vf QT[D * MAXNV], S[MAXNV * L];
    const int64_t row = 3 * (int64_t)h * D, orow = (int64_t)h * D;
    int64_t mask_w = -1;
    for (int64_t t = t0; t < t1; ++t) {
        const int64_t w = t / h;
        const int hh = (int)(t % h);
        const float *base = qkv + w * N * row + hh * D;
        const float *kb = base + h * D, *vb = base + 2 * h * D;
        if (mask && w % nWm != mask_w) {  // MT[j * NP + i] = mask[i][j], queries padded to NP with zeros
            mask_w = w % nWm;
            const float *m = mask + mask_w * (int64_t)N * N;
            const int NP = NV * L;
            for (int j = 0; j < N; ++j) {
                for (int i = 0; i < N; ++i) MT[(int64_t)j * NP + i] = m[(int64_t)i * N + j];
                for (int i = N; i < NP; ++i) MT[(int64_t)j * NP + i] = 0.0f;
            }
        }
        float *qt = (float *)QT;
        for (int k = 0; k < D * NV; ++k) QT[k] = splat(0.0f);
        for (int i = 0; i < N; ++i)
            for (int c = 0; c < D; ++c) qt[c * NV * L + i] = base[i * row + c] * scale;
        for (int iv = 0; iv < NV; ++iv) {
            const int i0 = iv * L, ni = N - i0 < L ? N - i0 : L;
            vf q[D];
            for (int c = 0; c < D; ++c) q[c] = QT[c * NV + iv];
            vf mx = splat(-INFINITY);
            for (int j = 0; j < N; ++j) {
                vf s;
                if (mask) std::memcpy(&s, MT + (int64_t)j * NV * L + i0, sizeof(vf));
                else s = splat(0.0f);
                const float *kj = kb + j * row;
                for (int c = 0; c < D; ++c) s += q[c] * kj[c];
                S[j] = s;
                mx = vmax(mx, s);
            }
            vf l = splat(0.0f), acc[D];
            for (int c = 0; c < D; ++c) acc[c] = splat(0.0f);
            for (int j = 0; j < N; ++j) {
                vf p = exp_neg(S[j] - mx);
                l += p;
                const float *vj = vb + j * row;
                for (int c = 0; c < D; ++c) acc[c] += p * vj[c];
            }
            const vf inv = 1.0f / l;
            for (int k = 0; k < ni; ++k) {
                float *o = out + (w * N + i0 + k) * orow + hh * D;
                for (int c = 0; c < D; ++c) o[c] = acc[c][k] * inv[k];
                lse[t * N + i0 + k] = mx[k] + std::log(l[k]);
            }
        }
    }
}

template <int D>
static void backward(const float *qkv, const float *mask, const float *out, const float *lse, const float *grad,
                     float *dqkv, int64_t t0, int64_t t1, int N, int h, int nWm, float scale) {
    const int NV = (N + L - 1) / L;
    alignas(64) vf KT[D * MAXNV], VT[D * MAXNV], dKT[D * MAXNV], dVT[D * MAXNV], M[MAXNV];
    const int64_t row = 3 * (int64_t)h * D, orow = (int64_t)h * D;
    for (int64_t t = t0; t < t1; ++t) {
        const int64_t w = t / h;
        const int hh = (int)(t % h);
        const float *base = qkv + w * N * row + hh * D;
        float *dbase = dqkv + w * N * row + hh * D;
        load_kv<D>(base, row, h, N, NV, KT, VT);
        for (int k = 0; k < D * NV; ++k) { dKT[k] = splat(0.0f); dVT[k] = splat(0.0f); }
        const float *mk = mask ? mask + (w % nWm) * (int64_t)N * N : nullptr;
        float *m = (float *)M;
        for (int j = N; j < NV * L; ++j) m[j] = -INFINITY;  // padded keys get no weight
        if (!mk) std::memset(m, 0, sizeof(float) * N);
        for (int i = 0; i < N; ++i) {
            const float *q = base + i * row;
            const float *o = out + (w * N + i) * orow + hh * D, *g = grad + (w * N + i) * orow + hh * D;
            vf qs[D], gv[D], dq[D];
            float Di = 0.0f;  // dO_i . O_i
            for (int c = 0; c < D; ++c) {
                qs[c] = splat(q[c] * scale); gv[c] = splat(g[c]); dq[c] = splat(0.0f); Di += g[c] * o[c];
            }
            if (mk) std::memcpy(m, mk + (int64_t)i * N, sizeof(float) * N);
            const vf li = splat(lse[t * N + i]), Dv = splat(Di);
            for (int jv = 0; jv < NV; ++jv) {
                vf s = M[jv], dp = splat(0.0f);
                for (int c = 0; c < D; ++c) { s += qs[c] * KT[c * NV + jv]; dp += gv[c] * VT[c * NV + jv]; }
                vf p = exp_neg(s - li);
                vf ds = p * (dp - Dv);
                for (int c = 0; c < D; ++c) {
                    dVT[c * NV + jv] += p * gv[c];
                    dq[c] += ds * KT[c * NV + jv];
                    dKT[c * NV + jv] += ds * qs[c];
                }
            }
            float *dqo = dbase + i * row;
            for (int c = 0; c < D; ++c) dqo[c] = hsum(dq[c]) * scale;
        }
        const float *dkt = (const float *)dKT, *dvt = (const float *)dVT;
        for (int j = 0; j < N; ++j)
            for (int c = 0; c < D; ++c) {
                dbase[j * row + h * D + c] = dkt[c * NV * L + j];
                dbase[j * row + 2 * h * D + c] = dvt[c * NV * L + j];
            }
    }
}

#define DISPATCH(X)                                                                                   \
    switch (d) {                                                                                      \
        case 1: X(1) case 2: X(2) case 3: X(3) case 4: X(4) case 5: X(5) case 6: X(6) case 7: X(7)  \
        case 8: X(8) case 9: X(9) case 10: X(10) case 11: X(11) case 12: X(12) case 13: X(13)       \
        case 14: X(14) case 15: X(15) case 16: X(16) default: return 2;                            \
    }

extern "C" {
// The largest window (tokens) and head size the kernels take; other shapes return 2 (caller falls back).
int cka_wa_max_tokens() { return MAXNV * L; }
int cka_wa_max_head_dim() { return 16; }

// work: cka_wa_forward_work(N) floats, 64-byte aligned, for this call alone (the caller allocates: no heap use here).
int64_t cka_wa_forward_work(int N) { return (int64_t)N * (((N + L - 1) / L) * L); }

int cka_wa_forward(const float *qkv, const float *mask, float *out, float *lse, float *work, int64_t t0, int64_t t1,
                   int N, int h, int d, int nWm, float scale) {
    if (N < 1 || N > MAXNV * L || d < 1 || d > 16) return 2;
    if (mask && !work) return 3;
#define F(D) forward<D>(qkv, mask, out, lse, t0, t1, N, h, nWm, scale, work); break;
    DISPATCH(F)
#undef F
    return 0;
}

int cka_wa_backward(const float *qkv, const float *mask, const float *out, const float *lse, const float *grad,
                    float *dqkv, int64_t t0, int64_t t1, int N, int h, int d, int nWm, float scale) {
    if (N < 1 || N > MAXNV * L || d < 1 || d > 16) return 2;
#define B(D) backward<D>(qkv, mask, out, lse, grad, dqkv, t0, t1, N, h, nWm, scale); break;
    DISPATCH(B)
#undef B
    return 0;
}
}
