// Backward of a depthwise KxK convolution (stride 1, zero padding K/2) on channels-last maps, float32, CPU.
//
// Built and loaded by cka_lab/models/cpu_kernels.py together with window_attention.cpp. Layouts:
//   x, g, dx  (B, H, W, C)  the input, the output's gradient and the input's gradient, contiguous
//   w         (C, K, K)     the weights
//   dw        (C, K, K)     the weight gradient of images [b0, b1), written (not accumulated)
//   db        (C)           the bias gradient of images [b0, b1), written
//   work      2 zero-padded planes of 16 channels, allocated by the caller
// Callers split the images between threads and sum the threads' dw and db. Vectorised over 16 channels;
// per image and channel group the input and the gradient are copied once into zero-padded planes, so the
// K*K taps run without bounds checks.
#include <cstdint>
#include <cstring>

typedef float vf __attribute__((vector_size(64)));
static constexpr int L = 16;

static inline vf splat(float x) { return vf{} + x; }

template <int K>
static void backward(const float *x, const float *g, const float *w, float *dx, float *dw, float *db,
                     int64_t b0, int64_t b1, int H, int W, int C, vf *PX, vf *PG) {
    constexpr int R = K / 2;
    const int WP = W + 2 * R, HP = H + 2 * R;
    const int NC = (C + L - 1) / L;
    std::memset(dw, 0, sizeof(float) * C * K * K);
    std::memset(db, 0, sizeof(float) * C);
    for (int cv = 0; cv < NC; ++cv) {
        const int c0 = cv * L, nc = C - c0 < L ? C - c0 : L;
        vf wv[K * K], acc[K * K], bacc = splat(0.0f);
        for (int k = 0; k < K * K; ++k) {
            float t[L] = {0};
            for (int c = 0; c < nc; ++c) t[c] = w[(c0 + c) * K * K + k];
            std::memcpy(&wv[k], t, sizeof(vf));
            acc[k] = splat(0.0f);
        }
        for (int64_t b = b0; b < b1; ++b) {
            for (int k = 0; k < HP * WP; ++k) { PX[k] = splat(0.0f); PG[k] = splat(0.0f); }
            const float *xb = x + b * H * W * C, *gb = g + b * H * W * C;
            for (int y = 0; y < H; ++y)
                for (int xx = 0; xx < W; ++xx) {
                    std::memcpy(&PX[(y + R) * WP + xx + R], xb + ((int64_t)y * W + xx) * C + c0, sizeof(float) * nc);
                    std::memcpy(&PG[(y + R) * WP + xx + R], gb + ((int64_t)y * W + xx) * C + c0, sizeof(float) * nc);
                }
            // weight and bias gradients: dw[k] += g[y, x] * x[y + ky - R, x + kx - R]
            for (int y = 0; y < H; ++y)
                for (int xx = 0; xx < W; ++xx) {
                    const vf gv = PG[(y + R) * WP + xx + R];
                    bacc += gv;
                    for (int ky = 0; ky < K; ++ky)
                        for (int kx = 0; kx < K; ++kx) acc[ky * K + kx] += gv * PX[(y + ky) * WP + xx + kx];
                }
            // input gradient: dx[y, x] = sum_k g[y - ky + R, x - kx + R] * w[k]
            if (dx) {
                float *dxb = dx + b * H * W * C;
                for (int y = 0; y < H; ++y)
                    for (int xx = 0; xx < W; ++xx) {
                        vf s = splat(0.0f);
                        for (int ky = 0; ky < K; ++ky)
                            for (int kx = 0; kx < K; ++kx) s += PG[(y + 2 * R - ky) * WP + xx + 2 * R - kx] * wv[ky * K + kx];
                        std::memcpy(dxb + ((int64_t)y * W + xx) * C + c0, &s, sizeof(float) * nc);
                    }
            }
        }
        for (int c = 0; c < nc; ++c) {
            for (int k = 0; k < K * K; ++k) dw[(c0 + c) * K * K + k] = acc[k][c];
            db[c0 + c] = bacc[c];
        }
    }
}

extern "C" {
// work: cka_dw_backward_work(H, W, K) floats, 64-byte aligned, for this call alone (the caller allocates).
int64_t cka_dw_backward_work(int H, int W, int K) { return 2 * (int64_t)(H + K - 1) * (W + K - 1) * L; }

// Returns 0, 2 for an unsupported kernel size (1, 3, 5 and 7 are built), 3 for missing or misaligned work space.
int cka_dw_backward(const float *x, const float *g, const float *w, float *dx, float *dw, float *db, float *work,
                    int64_t b0, int64_t b1, int H, int W, int C, int K) {
    if (K != 1 && K != 3 && K != 5 && K != 7) return 2;
    if (!work || (uintptr_t)work % 64) return 3;  // the planes are read as aligned vectors
    vf *PX = (vf *)work, *PG = PX + (int64_t)(H + K - 1) * (W + K - 1);
    switch (K) {
        case 1: backward<1>(x, g, w, dx, dw, db, b0, b1, H, W, C, PX, PG); break;
        case 3: backward<3>(x, g, w, dx, dw, db, b0, b1, H, W, C, PX, PG); break;
        case 5: backward<5>(x, g, w, dx, dw, db, b0, b1, H, W, C, PX, PG); break;
        default: backward<7>(x, g, w, dx, dw, db, b0, b1, H, W, C, PX, PG); break;
    }
    return 0;
}
}
