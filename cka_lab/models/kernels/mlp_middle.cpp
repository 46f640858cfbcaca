// EDT's MLP between fc1 and fc2, GELU(dwconv(GELU(h + b1)) + b2), fused, forward and backward, on
// channels-last maps, float32, CPU.
//
// Built and loaded by cka_lab/models/cpu_kernels.py together with window_attention.cpp, called by
// cpu_mlp.py. Layouts:
//   h, out, g, dh  (B, H, W, C)  fc1's output without its bias, the result, the result's gradient, h's gradient
//   b1, b2 (C), w (C, K, K)      fc1's bias, the depthwise KxK convolution's bias and weights (zero padding K/2)
//   dw (B, C, K, K), db1, db2 (B, C)  per image, its share of the gradients of w, b1 and b2, written for
//                                the images [i0, i1) of the call (not accumulated)
//   work                         cka_gcg_work(W, C, K) floats, allocated by the caller
// Callers split the images between threads and add the images' dw, db1 and db2 in a fixed order, so no
// result depends on the split. Vectorised over 16 channels. Each image is processed a row at a time in one pass over all its channels: rows of GELU(h + b1)
// (in the backward also its derivative, and the convolution output's gradient) go into rings of K padded
// rows, so h, g and dh are read and written once, in order, and the rings stay in the cache. The
// convolution's output is recomputed in the backward rather than stored. GELU is the exact (erf) one,
// computed as torch's CPU kernels compute it (vector_math.h).
#include "vector_math.h"

struct Channels {  // one group of up to 16 channels: loads, stores and gathers of its lanes
    int c0, nc;
#if defined(__AVX512F__)
    inline vf load(const float *p) const { return (vf)_mm512_maskz_loadu_ps((__mmask16)((1u << nc) - 1), p); }
    inline void store(float *p, vf v) const { _mm512_mask_storeu_ps(p, (__mmask16)((1u << nc) - 1), (__m512)v); }
#else
    inline vf load(const float *p) const {
        if (nc == L) return loadu(p);
        vf v = splat(0.0f);
        std::memcpy(&v, p, sizeof(float) * nc);
        return v;
    }
    inline void store(float *p, vf v) const {
        if (nc == L) std::memcpy(p, &v, sizeof(vf));
        else std::memcpy(p, &v, sizeof(float) * nc);
    }
#endif
    inline vf gather(const float *x, int stride, int k) const {  // x[(c0 + c) * stride + k], zero past nc
        float t[L] = {0};
        for (int c = 0; c < nc; ++c) t[c] = x[(c0 + c) * stride + k];
        vf v;
        std::memcpy(&v, t, sizeof(vf));
        return v;
    }
};

// o[j] = sum over the K x K taps of rows[ky][(x + j + kx) * NC] * w[ky * K + kx] for the 4 pixels j = 0..3:
// rows are K padded rows (channel groups innermost, NC vectors a pixel) already offset to a channel group;
// four independent sums share the loads of each row.
template <int K>
static inline void conv4(const vf *const *rows, int NC, const vf *w, int x, vf *o) {
    vf a0 = splat(0.0f), a1 = splat(0.0f), a2 = splat(0.0f), a3 = splat(0.0f);
    for (int ky = 0; ky < K; ++ky) {
        const vf *r = rows[ky] + (int64_t)x * NC;
        vf p[K + 3];
        for (int i = 0; i < K + 3; ++i) p[i] = r[(int64_t)i * NC];
        for (int kx = 0; kx < K; ++kx) {
            const vf wk = w[ky * K + kx];
            a0 += p[kx] * wk; a1 += p[kx + 1] * wk; a2 += p[kx + 2] * wk; a3 += p[kx + 3] * wk;
        }
    }
    o[0] = a0; o[1] = a1; o[2] = a2; o[3] = a3;
}

template <int K>
static inline vf conv1(const vf *const *rows, int NC, const vf *w, int x) {
    vf s = splat(0.0f);
    for (int ky = 0; ky < K; ++ky)
        for (int kx = 0; kx < K; ++kx) s += rows[ky][(int64_t)(x + kx) * NC] * w[ky * K + kx];
    return s;
}

// f(x, conv at x) for the W pixels of an output row, 4 at a time (rows: see conv4).
template <int K, class F>
static inline void conv_row(const vf *const *rows, int NC, const vf *w, int W, F f) {
    int x = 0;
    for (; x + 4 <= W; x += 4) {
        vf o[4];
        conv4<K>(rows, NC, w, x, o);
        for (int j = 0; j < 4; ++j) f(x + j, o[j]);
    }
    for (; x < W; ++x) f(x, conv1<K>(rows, NC, w, x));
}

// The work space of one call, in vectors: rings of K padded rows (a padded row is W + K - 1 pixels of NC
// vectors, channel groups innermost, zero in the K / 2 pixels at either end), one zero row, and per channel
// group the weights, the flipped weights, the weight gradient's sums and four vectors (biases, sums).
struct Work {
    int K, W, NC;
    int64_t RS;  // vectors per padded row
    vf *rings, *zero, *wv, *wf, *acc, *vec;
    Work(vf *base, int K_, int W_, int C, int nrings) : K(K_), W(W_), NC((C + L - 1) / L) {
        RS = (int64_t)(W + K - 1) * NC;
        rings = base;
        zero = rings + nrings * K * RS;
        wv = zero + RS;
        wf = wv + NC * K * K;
        acc = wf + NC * K * K;
        vec = acc + NC * K * K;
    }
    static int64_t vectors(int K, int W, int C, int nrings) {
        const int64_t NC = (C + L - 1) / L, RS = (int64_t)(W + K - 1) * NC;
        return (nrings * K + 1) * RS + 3 * NC * K * K + 4 * NC;
    }
    vf *slot(int ring, int row) const { return rings + ((int64_t)ring * K + row % K) * RS; }
};

static inline Channels group(int cv, int C) { return Channels{cv * L, C - cv * L < L ? C - cv * L : L}; }

// Weights of every channel group (flipped too), biases b1, b2 into work.vec[0 / 1][cv]; zero rings and row.
// (The backward's sums, work.acc and work.vec[2 / 3], start from zero with each image.)
template <int K>
static void prepare(Work &wk, const float *w, const float *b1, const float *b2, int C, int nrings) {
    std::memset((void *)wk.rings, 0, sizeof(vf) * ((nrings * K + 1) * wk.RS));
    for (int cv = 0; cv < wk.NC; ++cv) {
        const Channels ch = group(cv, C);
        for (int k = 0; k < K * K; ++k) wk.wv[cv * K * K + k] = ch.gather(w, K * K, k);
        for (int k = 0; k < K * K; ++k) wk.wf[cv * K * K + k] = wk.wv[cv * K * K + K * K - 1 - k];
        wk.vec[cv] = ch.load(b1 + ch.c0);
        wk.vec[wk.NC + cv] = ch.load(b2 + ch.c0);
    }
}

// The K rows of ring `ring` around image row r (rows outside [0, H): the zero row), offset to group cv.
template <int K>
static inline void rows_around(const Work &wk, int ring, int r, int H, int cv, const vf **rows) {
    for (int ky = 0; ky < K; ++ky) {
        const int a = r + ky - K / 2;
        rows[ky] = (a >= 0 && a < H ? wk.slot(ring, a) : wk.zero) + cv;
    }
}

template <int K>
static void gcg_forward(const float *h, const float *b1, const float *w, const float *b2, float *out, int64_t i0,
                        int64_t i1, int H, int W, int C, vf *work) {
    constexpr int R = K / 2;
    Work wk(work, K, W, C, 1);
    const int NC = wk.NC;
    prepare<K>(wk, w, b1, b2, C, 1);
    for (int64_t b = i0; b < i1; ++b) {
        const float *hb = h + b * H * W * C;
        float *ob = out + b * H * W * C;
        auto fill = [&](int a) {  // ring row a = GELU(h[a] + b1)
            vf *row = wk.slot(0, a) + (int64_t)R * NC;
            const float *src = hb + (int64_t)a * W * C;
            for (int x = 0; x < W; ++x)
                for (int cv = 0; cv < NC; ++cv)
                    row[(int64_t)x * NC + cv] = gelu(group(cv, C).load(src + (int64_t)x * C + cv * L) + wk.vec[cv]);
        };
        for (int a = 0; a < R && a < H; ++a) fill(a);
        for (int y = 0; y < H; ++y) {
            if (y + R < H) fill(y + R);
            float *dst = ob + (int64_t)y * W * C;
            for (int cv = 0; cv < NC; ++cv) {
                const Channels ch = group(cv, C);
                const vf *rows[K];
                rows_around<K>(wk, 0, y, H, cv, rows);
                const vf bias2 = wk.vec[NC + cv];
                conv_row<K>(rows, NC, wk.wv + cv * K * K, W, [&](int x, vf c) {
                    ch.store(dst + (int64_t)x * C + ch.c0, gelu(c + bias2));
                });
            }
        }
    }
}

template <int K>
static void gcg_backward(const float *h, const float *b1, const float *w, const float *b2, const float *g, float *dh,
                         float *dw, float *db1, float *db2, int64_t i0, int64_t i1, int H, int W, int C, vf *work) {
    constexpr int R = K / 2;
    enum { A = 0, D = 1, G = 2 };  // rings: GELU(h + b1), its derivative, the convolution output's gradient
    Work wk(work, K, W, C, 3);
    const int NC = wk.NC;
    prepare<K>(wk, w, b1, b2, C, 3);
    vf *db1v = wk.vec + 2 * NC, *db2v = wk.vec + 3 * NC;
    for (int64_t b = i0; b < i1; ++b) {
        for (int cv = 0; cv < NC; ++cv) {  // this image's sums start from zero
            for (int k = 0; k < K * K; ++k) wk.acc[cv * K * K + k] = splat(0.0f);
            db1v[cv] = db2v[cv] = splat(0.0f);
        }
        const float *hb = h + b * H * W * C, *gb = g + b * H * W * C;
        float *dhb = dh + b * H * W * C;
        // Row t of the pipeline: a1 = GELU(h + b1) of image row t; the convolution output's gradient
        // gc = g * GELU'(conv(a1) + b2) of row t - R (and its share of the weight gradient); h's gradient
        // (transposed convolution of gc) * GELU'(h + b1) of row t - 2R. Each ring holds the K rows in use.
        for (int t = 0; t < H + 2 * R; ++t) {
            if (t < H) {
                vf *ra = wk.slot(A, t) + (int64_t)R * NC, *rd = wk.slot(D, t) + (int64_t)R * NC;
                const float *src = hb + (int64_t)t * W * C;
                for (int x = 0; x < W; ++x)
                    for (int cv = 0; cv < NC; ++cv)
                        gelu_and_derivative(group(cv, C).load(src + (int64_t)x * C + cv * L) + wk.vec[cv],
                                            ra[(int64_t)x * NC + cv], rd[(int64_t)x * NC + cv]);
            }
            const int r = t - R;
            if (r >= 0 && r < H) {
                vf *rg = wk.slot(G, r) + (int64_t)R * NC;
                const float *gsrc = gb + (int64_t)r * W * C;
                for (int cv = 0; cv < NC; ++cv) {
                    const Channels ch = group(cv, C);
                    const vf *rows[K];
                    rows_around<K>(wk, A, r, H, cv, rows);
                    const vf bias2 = wk.vec[NC + cv];
                    vf sum2 = db2v[cv];
                    conv_row<K>(rows, NC, wk.wv + cv * K * K, W, [&](int x, vf c) {
                        vf a2, d2;
                        gelu_and_derivative(c + bias2, a2, d2);
                        const vf gc = ch.load(gsrc + (int64_t)x * C + ch.c0) * d2;
                        rg[(int64_t)x * NC + cv] = gc;
                        sum2 += gc;
                    });
                    db2v[cv] = sum2;
                    for (int ky = 0; ky < K; ++ky) {  // dw[ky, kx] += gc[r, x] * a1[r + ky - R, x + kx - R]
                        vf s[K];
                        vf *accr = wk.acc + cv * K * K + ky * K;
                        for (int kx = 0; kx < K; ++kx) s[kx] = accr[kx];
                        const vf *ar = rows[ky], *gr = rg + cv;
                        for (int x = 0; x < W; ++x) {
                            const vf gx = gr[(int64_t)x * NC];
                            for (int kx = 0; kx < K; ++kx) s[kx] += gx * ar[(int64_t)(x + kx) * NC];
                        }
                        for (int kx = 0; kx < K; ++kx) accr[kx] = s[kx];
                    }
                }
            }
            const int y = t - 2 * R;
            if (y >= 0 && y < H) {
                const vf *rd = wk.slot(D, y) + (int64_t)R * NC;
                float *dst = dhb + (int64_t)y * W * C;
                for (int cv = 0; cv < NC; ++cv) {
                    const Channels ch = group(cv, C);
                    const vf *rows[K];
                    rows_around<K>(wk, G, y, H, cv, rows);
                    vf sum1 = db1v[cv];
                    conv_row<K>(rows, NC, wk.wf + cv * K * K, W, [&](int x, vf s) {
                        const vf gh = s * rd[(int64_t)x * NC + cv];
                        sum1 += gh;
                        ch.store(dst + (int64_t)x * C + ch.c0, gh);
                    });
                    db1v[cv] = sum1;
                }
            }
        }
        float *dwb = dw + b * C * K * K, *db1b = db1 + b * C, *db2b = db2 + b * C;
        for (int cv = 0; cv < NC; ++cv) {
            const Channels ch = group(cv, C);
            for (int c = 0; c < ch.nc; ++c) {
                for (int k = 0; k < K * K; ++k) dwb[(ch.c0 + c) * K * K + k] = wk.acc[cv * K * K + k][c];
                db1b[ch.c0 + c] = db1v[cv][c];
                db2b[ch.c0 + c] = db2v[cv][c];
            }
        }
    }
}

// Calls X(K) for the built kernel sizes after checking K and the work space: returns 2 for an unsupported
// kernel size (1, 3, 5 and 7 are built), 3 for missing or misaligned work space, else 0.
#define DISPATCH_K(X)                                     \
    if (K != 1 && K != 3 && K != 5 && K != 7) return 2;   \
    if (!work || (uintptr_t)work % 64) return 3;          \
    switch (K) {                                          \
        case 1: X(1); break;                              \
        case 3: X(3); break;                              \
        case 5: X(5); break;                              \
        default: X(7); break;                             \
    }                                                     \
    return 0;

extern "C" {
// work: cka_gcg_work(W, C, K) floats, 64-byte aligned, for this call alone (the caller allocates).
int64_t cka_gcg_work(int W, int C, int K) { return Work::vectors(K, W, C, 3) * L; }

// Images [i0, i1); the return codes of DISPATCH_K.
int cka_gcg_forward(const float *h, const float *b1, const float *w, const float *b2, float *out, float *work,
                    int64_t i0, int64_t i1, int H, int W, int C, int K) {
#define GF(KK) gcg_forward<KK>(h, b1, w, b2, out, i0, i1, H, W, C, (vf *)work)
    DISPATCH_K(GF)
#undef GF
}

int cka_gcg_backward(const float *h, const float *b1, const float *w, const float *b2, const float *g, float *dh,
                     float *dw, float *db1, float *db2, float *work, int64_t i0, int64_t i1, int H, int W, int C,
                     int K) {
#define GB(KK) gcg_backward<KK>(h, b1, w, b2, g, dh, dw, db1, db2, i0, i1, H, W, C, (vf *)work)
    DISPATCH_K(GB)
#undef GB
}
}
