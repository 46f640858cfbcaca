// Windowed multi-head attention with small heads (EDT: head_dim 5 to 15, 144-token windows), float32, CPU,
// optionally with EDT's LePE (a depthwise 3x3 convolution of V inside each window, added to the output).
//
// Built and loaded by cka_lab/models/cpu_kernels.py (ctypes; no torch headers), called by cpu_attention.py.
// One call attends one group of W windows of N = wh * ww tokens with h heads of D channels. Tokens live in
// token-major matrices, read and written in place through a row table:
//   rows  (W * N,)        int64: the row of token i of window w is rows[w * N + i] (NULL: w * N + i)
//   qkv   (M, ld)         row r holds this group's q of head hh at columns qo + hh * D .. + D, k at ko + ..,
//                         v at vo + ..
//   bias  (ld,)           added to q, k and v as they are read (the projection's bias), or NULL
//   maskT (nWm, N, NP)    forward: additive mask (0 or -inf), transposed (maskT[m][j][i] = mask[m][i][j]),
//                         queries padded to NP = 16 * ceil(N / 16) with zeros; window w uses m = w % nWm
//   mask  (nWm, N, N)     backward: the same mask, row-major; NULL for none
//   lw, lb (h * D, 9), (h * D,)  LePE's weights (3x3, row-major) and bias of channel hh * D + c, or NULL
//   out   (M, ldo)        softmax(q k^T * scale + mask) v (+ LePE) of head hh at columns oo + hh * D ..
//   oa    (W * h, N, D)   the attention part alone, task-major (saved for the backward)
//   lse   (W * h, N)      log-sum-exp of each row of scores (saved for the backward)
//   grad  like out        the gradient of out
//   dqkv  like qkv        the gradient of this group's q, k and v columns: every element of them written
//   dsums (W * h, D, 13)  per task, sums over its window: of LePE's weight gradient (taps 0-8) and bias gradient
//                         (9) when lw is given, and of the gradients of q, k and v (10-12: the bias's gradient)
//                         when bias is given; the caller adds them in a fixed order (results independent of threads)
//   work                  cka_wa_work(shape) floats, 64-byte aligned, for each concurrent call (no heap use here)
// A task is one (window, head) pair, t = w * h + hh; a call handles tasks [t0, t1), so callers can split
// the work between threads. Results do not depend on the split.
//
// The forward is vectorised over 16 queries at a time (scores of 16 queries against one key per step: no
// horizontal sums); the backward over 16 keys at a time (dK and dV accumulate along the keys). The
// softmax's exp is exp_neg of vector_math.h (relative error 2.3e-7, exactly 0 below e^-87 and for -inf:
// masked weights are exact zeros, never float32 denormals).
// LePE is vectorised over 16 tokens of a window: the window's V (and, backward, the gradient) are laid out
// channel-major with zero margins of a row and a token, so a 3x3 neighbour is an unaligned load; per-lane
// masks of the first and last columns drop the neighbours across the window's left and right borders, which
// gives zero padding at the window's borders exactly as the official conv2d of each window.
#include "vector_math.h"

static constexpr int MAXNV = 64;  // windows of up to 1024 tokens

// The geometry of one call (mirrored by cpu_attention.KernelShape).
struct Shape {
    int64_t ld, qo, ko, vo;  // qkv: row stride; columns of head 0's q, k, v
    int64_t ldo, oo;         // out and grad: row stride; column of head 0
    int32_t N, h, d, wh, ww, nwm;
    float scale;
    int32_t unused;
};

// Sizes shared by the forward and the backward of one call.
struct Geo {
    int N, NV, NP;  // tokens, 16-token vectors, tokens padded to whole vectors
    int pad;        // zero margin before and after a channel-major plane: a row and a token, whole vectors
    int S;          // floats per channel-major plane: pad + NP + pad
    explicit Geo(const Shape &s)
        : N(s.N), NV((s.N + L - 1) / L), NP(NV * L), pad((int)round16(s.ww + 1)), S(NP + 2 * pad) {}
};

static inline int64_t row_of(const int64_t *rows, int64_t w, int N, int i) {
    return rows ? rows[w * N + i] : w * N + i;
}

// Column masks of a window's tokens, per 16-token vector: first[iv] is 0 in the lanes of the first column
// (and of padded tokens), 1 elsewhere; last[iv] the same for the last column.
static inline void column_masks(vf *first, vf *last, const Geo &g, int ww) {
    float *f = (float *)first, *l = (float *)last;
    for (int i = 0; i < g.NP; ++i) {
        f[i] = (i < g.N && i % ww != 0) ? 1.0f : 0.0f;
        l[i] = (i < g.N && i % ww != ww - 1) ? 1.0f : 0.0f;
    }
}

// LePE of the 16 tokens from i0, one channel: sum over the 3x3 taps of w[tap] * P[i + dy * ww + dx], a
// neighbour across the window's left (right) border weighing nothing. P points at token 0 of the channel's
// plane (zero margins, padded tokens zero); first/last: column_masks of the vector.
static inline vf lepe_taps(const float *P, const float *w, int i0, int ww, vf first, vf last) {
    vf left = splat(0.0f), mid = splat(0.0f), right = splat(0.0f);
    for (int dy = -1; dy <= 1; ++dy) {
        const int b = i0 + dy * ww;
        left += splat(w[(dy + 1) * 3 + 0]) * loadu(P + b - 1);
        mid += splat(w[(dy + 1) * 3 + 1]) * loadu(P + b);
        right += splat(w[(dy + 1) * 3 + 2]) * loadu(P + b + 1);
    }
    return mid + first * left + last * right;
}

// Part hh of h of the next window's rows into the cache while head hh of window w is attended: this group's
// q, k and v, and in the backward the output's gradient and (for writing) the gradient of q, k and v.
// Windows at or past W (the end of the call's tasks) are not touched.
template <int D>
static inline void prefetch_window(const Shape &s, const int64_t *rows, int64_t w, int64_t W, int hh,
                                   const float *qkv, const float *grad, const float *dqkv) {
    if (w + 1 >= W) return;
    const int64_t width = (int64_t)s.h * D, cols[3] = {s.qo, s.ko, s.vo};
    for (int i = hh * s.N / s.h; i < (hh + 1) * s.N / s.h; ++i) {
        const int64_t r = row_of(rows, w + 1, s.N, i);
        for (int64_t c0 : cols) {
            for (int64_t c = 0; c < width; c += L) __builtin_prefetch(qkv + r * s.ld + c0 + c);
            __builtin_prefetch(qkv + r * s.ld + c0 + width - 1);
            if (dqkv) {
                for (int64_t c = 0; c < width; c += L) __builtin_prefetch(dqkv + r * s.ld + c0 + c, 1);
                __builtin_prefetch(dqkv + r * s.ld + c0 + width - 1, 1);
            }
        }
        if (grad) {
            for (int64_t c = 0; c < width; c += L) __builtin_prefetch(grad + r * s.ldo + s.oo + c);
            __builtin_prefetch(grad + r * s.ldo + s.oo + width - 1);
        }
    }
}

// Head hh's part of the projection's bias for q, k and v (zeros without a bias).
template <int D>
static inline void head_bias(const Shape &s, const float *bias, int hh, float *bq, float *bk, float *bv) {
    for (int c = 0; c < D; ++c) {
        bq[c] = bias ? bias[s.qo + hh * D + c] : 0.0f;
        bk[c] = bias ? bias[s.ko + hh * D + c] : 0.0f;
        bv[c] = bias ? bias[s.vo + hh * D + c] : 0.0f;
    }
}

template <int D>
static void forward(const Shape &s, const float *qkv, const float *bias, const int64_t *rows, const float *maskT,
                    const float *lw, const float *lb, float *out, float *oa, float *lse, float *work,
                    int64_t t0, int64_t t1) {
    const Geo g(s);
    const int N = g.N, NV = g.NV, NP = g.NP, h = s.h;
    const int64_t KD = round16((int64_t)N * D);
    float *__restrict__ Kc = work;       // token-major K and V of the task (with bias)
    float *__restrict__ Vc = work + KD;
    float *__restrict__ VP = Vc + KD;    // LePE: V's channel-major planes, D of them
    alignas(64) vf QT[D * MAXNV], Sc[MAXNV * L], first[MAXNV], last[MAXNV];
    if (lw) {
        std::memset(VP, 0, sizeof(float) * D * g.S);  // margins and padded tokens stay zero
        column_masks(first, last, g, s.ww);
    }
    for (int64_t t = t0; t < t1; ++t) {
        const int64_t w = t / h;
        const int hh = (int)(t % h);
        float bq[D], bk[D], bv[D];
        head_bias<D>(s, bias, hh, bq, bk, bv);
        prefetch_window<D>(s, rows, w, (t1 + h - 1) / h, hh, qkv, nullptr, nullptr);
        float *qt = (float *)QT;
        for (int k = 0; k < D * NV; ++k) QT[k] = splat(0.0f);
        for (int i = 0; i < N; ++i) {
            const float *src = qkv + row_of(rows, w, N, i) * s.ld + hh * D;
            for (int c = 0; c < D; ++c) {
                qt[c * NP + i] = (src[s.qo + c] + bq[c]) * s.scale;
                Kc[i * D + c] = src[s.ko + c] + bk[c];
                Vc[i * D + c] = src[s.vo + c] + bv[c];
            }
        }
        if (lw)
            for (int c = 0; c < D; ++c)
                for (int i = 0; i < N; ++i) VP[c * g.S + g.pad + i] = Vc[i * D + c];
        const float *mt = maskT ? maskT + (w % s.nwm) * (int64_t)N * NP : nullptr;
        for (int iv = 0; iv < NV; ++iv) {
            const int i0 = iv * L, ni = N - i0 < L ? N - i0 : L;
            vf q[D];
            for (int c = 0; c < D; ++c) q[c] = QT[c * NV + iv];
            vf mx = splat(-INFINITY);
            for (int j = 0; j < N; ++j) {
                vf sc = mt ? loadu(mt + (int64_t)j * NP + i0) : splat(0.0f);
                const float *kj = Kc + j * D;
                for (int c = 0; c < D; ++c) sc += q[c] * kj[c];
                Sc[j] = sc;
                mx = vmax(mx, sc);
            }
            vf l = splat(0.0f), acc[D];
            for (int c = 0; c < D; ++c) acc[c] = splat(0.0f);
            for (int j = 0; j < N; ++j) {
                vf p = exp_neg(Sc[j] - mx);
                l += p;
                const float *vj = Vc + j * D;
                for (int c = 0; c < D; ++c) acc[c] += p * vj[c];
            }
            const vf inv = 1.0f / l;
            vf o[D];
            for (int c = 0; c < D; ++c) {
                acc[c] *= inv;
                o[c] = acc[c];
            }
            if (lw) {
                for (int c = 0; c < D; ++c) {
                    const int ch = hh * D + c;
                    o[c] += lepe_taps(VP + c * g.S + g.pad, lw + ch * 9, i0, s.ww, first[iv], last[iv]) + lb[ch];
                }
            }
            for (int k = 0; k < ni; ++k) {
                float *dst = out + row_of(rows, w, N, i0 + k) * s.ldo + s.oo + hh * D;
                float *a = oa + (t * N + i0 + k) * D;
                for (int c = 0; c < D; ++c) {
                    dst[c] = o[c][k];
                    a[c] = acc[c][k];
                }
                lse[t * N + i0 + k] = mx[k] + std::log(l[k]);
            }
        }
    }
}

template <int D>
static void backward(const Shape &s, const float *qkv, const float *bias, const int64_t *rows, const float *mask,
                     const float *lw, const float *oa, const float *lse, const float *grad, float *dqkv,
                     float *dsums, float *work, int64_t t0, int64_t t1) {
    const Geo g(s);
    const int N = g.N, NV = g.NV, h = s.h, S = g.S;
    // Distinct parts of the work space: __restrict__ lets the compiler keep loads across the stores.
    vf *__restrict__ KT = (vf *)work;
    vf *__restrict__ dKT = KT + D * NV;
    vf *__restrict__ dVT = dKT + D * NV;
    vf *__restrict__ M = dVT + D * NV;
    vf *__restrict__ first = M + NV;             // LePE: column_masks
    vf *__restrict__ last = first + NV;
    float *__restrict__ VP = (float *)(last + NV);  // V's channel-major planes, D of them
    float *__restrict__ GP = VP + D * S;            // LePE: the output gradient's planes, D of them
    std::memset(VP, 0, sizeof(float) * (lw ? 2 : 1) * D * S);  // margins and padded tokens stay zero
    if (lw) column_masks(first, last, g, s.ww);
    float *m = (float *)M;
    for (int j = N; j < NV * L; ++j) m[j] = -INFINITY;  // padded keys get no weight
    if (!mask) std::memset(m, 0, sizeof(float) * N);
    for (int64_t t = t0; t < t1; ++t) {
        const int64_t w = t / h;
        const int hh = (int)(t % h);
        float bq[D], bk[D], bv[D];
        head_bias<D>(s, bias, hh, bq, bk, bv);
        prefetch_window<D>(s, rows, w, (t1 + h - 1) / h, hh, qkv, grad, dqkv);
        float bsum[D] = {0};  // the gradient of q summed over the window's tokens
        float *kt = (float *)KT;
        for (int k = 0; k < D * NV; ++k) { KT[k] = splat(0.0f); dKT[k] = splat(0.0f); dVT[k] = splat(0.0f); }
        for (int j = 0; j < N; ++j) {
            const float *src = qkv + row_of(rows, w, N, j) * s.ld + hh * D;
            for (int c = 0; c < D; ++c) {
                kt[c * NV * L + j] = src[s.ko + c] + bk[c];
                VP[c * S + g.pad + j] = src[s.vo + c] + bv[c];
            }
        }
        const vf *__restrict__ VT = (const vf *)(VP + g.pad);  // channel c's plane: VT + c * SV
        const int SV = S / L;
        if (lw) {
            for (int j = 0; j < N; ++j) {
                const float *gr = grad + row_of(rows, w, N, j) * s.ldo + s.oo + hh * D;
                for (int c = 0; c < D; ++c) GP[c * S + g.pad + j] = gr[c];
            }
        }
        const float *mk = mask ? mask + (w % s.nwm) * (int64_t)N * N : nullptr;
        for (int i = 0; i < N; ++i) {
            const int64_t r = row_of(rows, w, N, i);
            const float *q = qkv + r * s.ld + s.qo + hh * D;
            const float *o = oa + (t * N + i) * D, *gr = grad + r * s.ldo + s.oo + hh * D;
            vf qs[D], gv[D], dq[D];
            float Di = 0.0f;  // dO_i . O_i (the attention part of the output)
            for (int c = 0; c < D; ++c) {
                qs[c] = splat((q[c] + bq[c]) * s.scale); gv[c] = splat(gr[c]); dq[c] = splat(0.0f);
                Di += gr[c] * o[c];
            }
            if (mk) std::memcpy(m, mk + (int64_t)i * N, sizeof(float) * N);
            const vf li = splat(lse[t * N + i]), Dv = splat(Di);
            for (int jv = 0; jv < NV; ++jv) {
                vf sc = M[jv], dp = splat(0.0f);
                for (int c = 0; c < D; ++c) { sc += qs[c] * KT[c * NV + jv]; dp += gv[c] * VT[c * SV + jv]; }
                vf p = exp_neg(sc - li);
                vf ds = p * (dp - Dv);
                for (int c = 0; c < D; ++c) {
                    dVT[c * NV + jv] += p * gv[c];
                    dq[c] += ds * KT[c * NV + jv];
                    dKT[c * NV + jv] += ds * qs[c];
                }
            }
            float *dqo = dqkv + r * s.ld + s.qo + hh * D;
            for (int c = 0; c < D; ++c) {
                dqo[c] = hsum(dq[c]) * s.scale;
                bsum[c] += dqo[c];
            }
        }
        if (lw) {
            // dV += LePE's transposed convolution of the gradient: token j is the neighbour (dy, dx) of
            // token j - dy * ww - dx, unless that pair crosses the window's left or right border, which
            // (dx = -1) j in the last column or (dx = +1) j in the first column gives away.
            float *dl = dsums + t * D * 13;
            for (int c = 0; c < D; ++c) {
                const int ch = hh * D + c;
                const float *G = GP + c * S + g.pad, *P = VP + c * S + g.pad, *wt = lw + ch * 9;
                for (int jv = 0; jv < NV; ++jv) {
                    vf left = splat(0.0f), mid = splat(0.0f), right = splat(0.0f);
                    for (int dy = -1; dy <= 1; ++dy) {
                        const int b = jv * L - dy * s.ww;
                        left += splat(wt[(dy + 1) * 3 + 0]) * loadu(G + b + 1);
                        mid += splat(wt[(dy + 1) * 3 + 1]) * loadu(G + b);
                        right += splat(wt[(dy + 1) * 3 + 2]) * loadu(G + b - 1);
                    }
                    dVT[c * NV + jv] += mid + last[jv] * left + first[jv] * right;
                }
                // LePE's weight gradient: sum over tokens i of grad_i * the neighbour's value (masked as in
                // the forward); the bias's: of grad_i
                for (int dy = -1; dy <= 1; ++dy) {
                    vf a0 = splat(0.0f), a1 = splat(0.0f), a2 = splat(0.0f);
                    for (int iv = 0; iv < NV; ++iv) {
                        const vf gi = loadu(G + iv * L);
                        const int b = iv * L + dy * s.ww;
                        a0 += gi * first[iv] * loadu(P + b - 1);
                        a1 += gi * loadu(P + b);
                        a2 += gi * last[iv] * loadu(P + b + 1);
                    }
                    dl[c * 13 + (dy + 1) * 3 + 0] = hsum(a0);
                    dl[c * 13 + (dy + 1) * 3 + 1] = hsum(a1);
                    dl[c * 13 + (dy + 1) * 3 + 2] = hsum(a2);
                }
                vf gb = splat(0.0f);
                for (int iv = 0; iv < NV; ++iv) gb += loadu(G + iv * L);
                dl[c * 13 + 9] = hsum(gb);
            }
        }
        const float *dkt = (const float *)dKT, *dvt = (const float *)dVT;
        float ksum[D] = {0}, vsum[D] = {0};  // the gradients of k and v summed over the window's tokens
        for (int j = 0; j < N; ++j) {
            float *dst = dqkv + row_of(rows, w, N, j) * s.ld + hh * D;
            for (int c = 0; c < D; ++c) {
                dst[s.ko + c] = dkt[c * NV * L + j];
                dst[s.vo + c] = dvt[c * NV * L + j];
                ksum[c] += dkt[c * NV * L + j];
                vsum[c] += dvt[c * NV * L + j];
            }
        }
        if (bias) {  // the bias's gradient: sums over the window of the gradients of q, k and v
            float *ds = dsums + t * D * 13;
            for (int c = 0; c < D; ++c) {
                ds[c * 13 + 10] = bsum[c];
                ds[c * 13 + 11] = ksum[c];
                ds[c * 13 + 12] = vsum[c];
            }
        }
    }
}

#define DISPATCH(X)                                                                                   \
    switch (s->d) {                                                                                   \
        case 1: X(1) case 2: X(2) case 3: X(3) case 4: X(4) case 5: X(5) case 6: X(6) case 7: X(7)  \
        case 8: X(8) case 9: X(9) case 10: X(10) case 11: X(11) case 12: X(12) case 13: X(13)       \
        case 14: X(14) case 15: X(15) case 16: X(16) default: return 2;                            \
    }

static int bad_shape(const Shape *s) {
    return !s || s->N < 1 || s->N > MAXNV * L || s->d < 1 || s->d > 16 || s->h < 1 || s->nwm < 1 || s->wh < 1 ||
           s->ww < 1 || (int64_t)s->wh * s->ww != s->N;
}

extern "C" {
// The largest window (tokens) and head size the kernels take; other shapes return 2 (caller falls back).
int cka_wa_max_tokens() { return MAXNV * L; }
int cka_wa_max_head_dim() { return 16; }

// Work space of one piece (a run of tasks on one thread), floats: the caller allocates it 64-byte aligned
// for each concurrent call (no heap use here); the same size serves the forward and the backward.
int64_t cka_wa_work(const Shape *s) {
    if (bad_shape(s)) return -1;
    const Geo g(*s);
    const int64_t D = s->d;
    const int64_t fwd = 2 * round16(g.N * D) + D * g.S;
    const int64_t bwd = (3 * D + 3) * g.NP + 2 * D * g.S;
    return fwd > bwd ? fwd : bwd;
}

int cka_wa_forward(const Shape *s, const float *qkv, const float *bias, const int64_t *rows, const float *maskT,
                   const float *lw, const float *lb, float *out, float *oa, float *lse, float *work, int64_t t0,
                   int64_t t1) {
    if (bad_shape(s)) return 2;
    if (!work || (lw && !lb)) return 3;
#define F(D) forward<D>(*s, qkv, bias, rows, maskT, lw, lb, out, oa, lse, work, t0, t1); break;
    DISPATCH(F)
#undef F
    return 0;
}

int cka_wa_backward(const Shape *s, const float *qkv, const float *bias, const int64_t *rows, const float *mask,
                    const float *lw, const float *oa, const float *lse, const float *grad, float *dqkv, float *dsums,
                    float *work, int64_t t0, int64_t t1) {
    if (bad_shape(s)) return 2;
    if (!work || (uintptr_t)work % 64 || ((lw || bias) && !dsums)) return 3;  // work is read as aligned vectors
#define B(D) backward<D>(*s, qkv, bias, rows, mask, lw, oa, lse, grad, dqkv, dsums, work, t0, t1); break;
    DISPATCH(B)
#undef B
    return 0;
}
}
