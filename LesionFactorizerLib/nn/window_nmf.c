/* The Factorizer block's compiled kernels: the rank-1 HALS window NMF fused with the block's output
   projection (lf_window_nmf_rank1), and layer norm of narrow rows (lf_layer_norm_rows, below).

   The window NMF's Python reference is LocalMatricize._project_slab (nn/matricize.py), which this computes for
   one window partition; nn/native.py loads the compiled library and calls it.

   For every P^3 window of a channels-last map z (B, D, H, W, C), C = heads * E, and every head h:
     1. moments of the head's E x P^3 matrix X: Gram X X^T, row sums X 1, X v0  (one pass, the
        window's rows stay in cache for step 3);
     2. `iters` rank-1 HALS iterations on those moments alone (nmf.rank1_hals_from_moments);
     3. v = (X^T u + eps) / c, and out += scale * W_h u_h v^T (the reconstruction u v^T projected
        by the head's columns of W), plus the spatial factor into `maps` when asked.
   A window's voxels are the map voxels (start + i - shift) mod size on each axis: shift 0 is the
   regular partition, shift P/2 the rolled one of the Swin Factorizer (torch.roll semantics).
   Windows of one partition never overlap, so disjoint window ranges can run on parallel threads.

   Plain C99 and the C math library: it is built with the extension (CMake) and the wheel (setup.py);
   nn/native.py loads that prebuilt library (or, for developers, one it compiles into the cache). */

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef long long lf_int;   /* 64-bit sizes and indices on every platform (C long is 32-bit on Windows) */

static lf_int wrap(lf_int i, lf_int n) { i %= n; return i < 0 ? i + n : i; }

/* Moments of every head's E x n matrix of one gathered window `buf` (n rows of c = heads*E
   floats): Gram X X^T (heads, E, E), row sums X 1 and X v0 (heads*E each). */
static void moments_any(const float *restrict buf, lf_int n, lf_int c, lf_int heads, lf_int e_dim,
                        const float *restrict v0, float *restrict gram, float *restrict rowsum,
                        float *restrict xv)
{
    memset(gram, 0, sizeof(float) * (size_t)(heads * e_dim * e_dim));
    memset(rowsum, 0, sizeof(float) * (size_t)c);
    memset(xv, 0, sizeof(float) * (size_t)c);
    for (lf_int k = 0; k < n; k++) {
        const float *restrict row = buf + k * c;
        for (lf_int j = 0; j < c; j++) {
            rowsum[j] += row[j];
            xv[j] += v0[k] * row[j];
        }
        for (lf_int h = 0; h < heads; h++)
            for (lf_int i = 0; i < e_dim; i++)
                for (lf_int j = 0; j < e_dim; j++)
                    gram[(h * e_dim + i) * e_dim + j] += row[h * e_dim + i] * row[h * e_dim + j];
    }
}

#if defined(__GNUC__) || defined(__clang__)
/* Helpers are inlined into the kernel, so each of its target clones (below) compiles them for its
   own instruction set: a separately compiled helper would run the baseline copy from both. */
#define LF_INLINE static inline __attribute__((always_inline))
#if defined(__GNUC__) && !defined(__clang__)
/* GCC warns that 32-byte vectors change the calling convention without AVX; the helpers that take
   them are always inlined, so no call passes one */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
/* The same for E = 4 and 8 with one head's accumulators held in vector registers (GCC/Clang
   vector extensions): the loop above would load and store the whole Gram for every voxel. */
#define MOMENTS_E(E)                                                                              \
LF_INLINE void moments_##E(const float *restrict buf, lf_int n, lf_int c, lf_int heads,                    \
                        const float *restrict v0, float *restrict gram, float *restrict rowsum,    \
                        float *restrict xv)                                                        \
{                                                                                                  \
    typedef float vec_t __attribute__((vector_size(4 * E)));                                       \
    for (lf_int h = 0; h < heads; h++) {                                                             \
        vec_t g[E], s, x, r;                                                                       \
        memset(&s, 0, sizeof s); x = s;                                                            \
        for (int i = 0; i < E; i++) g[i] = s;                                                      \
        for (lf_int k = 0; k < n; k++) {                                                             \
            memcpy(&r, buf + k * c + h * E, sizeof r);                                             \
            s += r;                                                                                \
            x += v0[k] * r;                                                                        \
            for (int i = 0; i < E; i++) g[i] += r[i] * r;                                          \
        }                                                                                          \
        for (int i = 0; i < E; i++) memcpy(gram + (h * E + i) * E, &g[i], sizeof r);              \
        memcpy(rowsum + h * E, &s, sizeof s);                                                      \
        memcpy(xv + h * E, &x, sizeof x);                                                          \
    }                                                                                              \
}
MOMENTS_E(4)
MOMENTS_E(8)

/* Step 3 for E = 8 and c_out a multiple of 8, one head per vector: for every voxel k of the
   window, vp_h = u_h . x_kh and out_k += bias + sum_h vp_h m_h. The generic loop in the kernel
   keeps its accumulators in memory and sums each head's products one float at a time; here the
   accumulators stay in registers (CO8 = c_out / 8 is a constant in the specialised copies) and
   each head's sum is one vector add of halves and a pairwise add. `vps` (n x heads) receives the
   vp_h when the factor maps are asked for. */
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
LF_INLINE v8f load8(const float *p) { v8f v; memcpy(&v, p, sizeof v); return v; }
LF_INLINE float sum8(const v8f *v)   /* by address: GCC notes an ABI change for vector arguments */
{
    v4f lo, hi;
    memcpy(&lo, v, sizeof lo);
    memcpy(&hi, (const char *)v + sizeof lo, sizeof hi);
    lo += hi;
    return (lo[0] + lo[2]) + (lo[1] + lo[3]);
}
#define OUTPUT_E8(NAME, CO8_CONST)                                                                 \
LF_INLINE void NAME(const float *restrict buf, const lf_int *restrict at, lf_int n, lf_int heads,    \
                 lf_int co8_arg, const float *restrict u, const float *restrict m,                 \
                 const float *restrict bias, float *restrict out, float *restrict vps)             \
{                                                                                                  \
    const lf_int co8 = CO8_CONST ? CO8_CONST : co8_arg, c = heads * 8;                            \
    v8f acc[CO8_CONST ? CO8_CONST : 64];                                                           \
    for (lf_int k = 0; k < n; k++) {                                                               \
        const float *restrict row = buf + k * c;                                                   \
        float *restrict dst = out + at[k] * co8 * 8;                                               \
        for (lf_int o = 0; o < co8; o++) acc[o] = load8(bias + 8 * o);                             \
        for (lf_int h = 0; h < heads; h++) {                                                       \
            const v8f prod = load8(row + 8 * h) * load8(u + 8 * h);                                \
            const float vp = sum8(&prod);                                                          \
            if (vps) vps[k * heads + h] = vp;                                                      \
            const float *restrict mh = m + h * co8 * 8;                                            \
            for (lf_int o = 0; o < co8; o++) acc[o] += vp * load8(mh + 8 * o);                     \
        }                                                                                          \
        for (lf_int o = 0; o < co8; o++) {                                                         \
            acc[o] += load8(dst + 8 * o);                                                          \
            memcpy(dst + 8 * o, &acc[o], sizeof acc[o]);                                           \
        }                                                                                          \
    }                                                                                              \
}
OUTPUT_E8(output_e8_co32, 4)
OUTPUT_E8(output_e8_co64, 8)
OUTPUT_E8(output_e8_any, 0)
#define LF_VECTORS 1   /* the 8-float vector helpers above exist */
#define MOMENTS(e) ((e) == 8 ? moments_8(buf, n, c, heads, v0, gram, rowsum, xv) :                \
                    (e) == 4 ? moments_4(buf, n, c, heads, v0, gram, rowsum, xv) :                \
                    moments_any(buf, n, c, heads, e, v0, gram, rowsum, xv))
#else
#define MOMENTS(e) moments_any(buf, n, c, heads, e, v0, gram, rowsum, xv)
#endif

#ifdef _WIN32
#define LF_EXPORT __declspec(dllexport)   /* a DLL exports only what it marks */
#else
#define LF_EXPORT
#endif

/* Built with portable flags (the library runs on other CPUs than its builder's), the loops above
   and below get SSE2 only. On x86-64 ELF (Linux) GCC and Clang also compile an AVX2 copy of the
   kernel and pick one when the library is loaded (an ifunc). ISO C mode (-std=c99) contracts no
   a*b+c into FMA and no reduction is reordered, so both copies compute the same bits. */
#if defined(__x86_64__) && defined(__ELF__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define LF_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef LF_CLONES
#define LF_CLONES
#endif

/* Returns 0, or 1 if scratch memory could not be allocated. */
LF_EXPORT LF_CLONES int lf_window_nmf_rank1(
    const float *z, float *out, float *maps,            /* maps: (B, heads, D, H, W) or NULL */
    lf_int batch, lf_int depth, lf_int height, lf_int width,
    lf_int heads, lf_int e_dim, lf_int c_out, lf_int p, lf_int shift,
    const float *weight,                                /* (c_out, heads * e_dim), row-major */
    const float *v0,                                    /* initial spatial factor, P^3 */
    lf_int iters, float eps, float scale, lf_int drop_head, /* drop_head < 0: none */
    lf_int first, lf_int last)                              /* windows [first, last) */
{
    const lf_int c = heads * e_dim, n = p * p * p;
    const lf_int gd = depth / p, gh = height / p, gw = width / p, plane = depth * height * width;
#ifdef LF_VECTORS
    const int vector_output = e_dim == 8 && c_out % 8 == 0 && c_out <= 512;
#else
    const int vector_output = 0;
#endif
    const lf_int n_vps = vector_output && maps ? n * heads : 0;
    float *buf = malloc(sizeof(float) * (size_t)(n * c + heads * e_dim * e_dim + 5 * c + 2 * c_out
                                                 + heads * c_out + 3 * heads + n_vps));
    /* at: each window voxel's map row; then, per axis, the wrapped coordinate (i - shift) mod size
       of every i, looked up instead of divided for every voxel */
    lf_int *at = malloc(sizeof(lf_int) * (size_t)(n + depth + height + width));
    if (!buf || !at) { free(buf); free(at); return 1; }
    float *gram = buf + n * c, *rowsum = gram + heads * e_dim * e_dim, *xv = rowsum + c, *u = xv + c;
    float *gu = u + c, *prod = gu + c, *acc = prod + c, *m = acc + c_out, *cc = m + heads * c_out;
    float *vv = cc + heads, *vp = vv + heads, *bias = vp + heads, *vps = n_vps ? bias + c_out : NULL;
    lf_int *wd = at + n, *wh = wd + depth, *ww = wh + height;
    for (lf_int i = 0; i < depth; i++) wd[i] = wrap(i - shift, depth);
    for (lf_int i = 0; i < height; i++) wh[i] = wrap(i - shift, height);
    for (lf_int i = 0; i < width; i++) ww[i] = wrap(i - shift, width);
    float vv0 = 0.f;
    for (lf_int i = 0; i < n; i++) vv0 += v0[i] * v0[i];
    (void)batch; (void)vps;

    for (lf_int win = first; win < last; win++) {
        lf_int rest = win;
        const lf_int iw = rest % gw; rest /= gw;
        const lf_int ih = rest % gh; rest /= gh;
        const lf_int id = rest % gd; rest /= gd;
        const lf_int b = rest;
        /* gather: the window's voxels in (d, h, w) order, as LocalMatricize lists them */
        for (lf_int a = 0, k = 0; a < p; a++)
            for (lf_int bb = 0; bb < p; bb++) {
                const lf_int line = ((b * depth + wd[id * p + a]) * height + wh[ih * p + bb]) * width;
                for (lf_int q = 0; q < p; q++, k++) at[k] = line + ww[iw * p + q];
            }
        if (e_dim == 8)   /* whole vectors: no call to memcpy per voxel */
            for (lf_int k = 0; k < n; k++) {
                const float *src = z + at[k] * c;
                float *dst = buf + k * c;
                for (lf_int j = 0; j < c; j += 8) memcpy(dst + j, src + j, 8 * sizeof(float));
            }
        else
            for (lf_int k = 0; k < n; k++) memcpy(buf + k * c, z + at[k] * c, sizeof(float) * (size_t)c);
        /* 1. moments */
        MOMENTS(e_dim);
        /* 2. rank-1 HALS iterations, per head, exactly as rank1_hals_from_moments */
        for (lf_int h = 0; h < heads; h++) vv[h] = vv0;
        for (lf_int it = 0; it < iters; it++)
            for (lf_int h = 0; h < heads; h++) {
                float *uh = u + h * e_dim, *xh = xv + h * e_dim, *sh = rowsum + h * e_dim, *gh_ = gu + h * e_dim;
                if (it > 0) {
                    const float *g = gram + h * e_dim * e_dim;
                    float ugu = 0.f, us = 0.f;
                    for (lf_int i = 0; i < e_dim; i++) {
                        float t = 0.f;
                        for (lf_int j = 0; j < e_dim; j++) t += g[i * e_dim + j] * uh[j];
                        gh_[i] = t;
                    }
                    for (lf_int i = 0; i < e_dim; i++) {
                        ugu += uh[i] * gh_[i];
                        us += uh[i] * sh[i];
                        xh[i] = (gh_[i] + eps * sh[i]) / cc[h];
                    }
                    vv[h] = (ugu + 2.f * eps * us + eps * eps * (float)n) / (cc[h] * cc[h]);
                }
                float sq = 0.f;
                for (lf_int i = 0; i < e_dim; i++) {
                    uh[i] = (xh[i] + eps) / (vv[h] + eps);
                    sq += uh[i] * uh[i];
                }
                cc[h] = sq + eps;
            }
        /* 3. what one unit of head h's v adds to the output channels: scale * W_h u_h / c_h (zero
           for a dropped head), and the eps of v summed over the heads: a per-window bias */
        for (lf_int o = 0; o < c_out; o++) bias[o] = 0.f;
        for (lf_int h = 0; h < heads; h++) {
            const float f = h == drop_head ? 0.f : scale / cc[h];
            for (lf_int o = 0; o < c_out; o++) {
                float t = 0.f;
                for (lf_int i = 0; i < e_dim; i++) t += weight[o * c + h * e_dim + i] * u[h * e_dim + i];
                m[h * c_out + o] = t * f;
                bias[o] += eps * t * f;
            }
        }
#ifdef LF_VECTORS
        if (vector_output) {
            if (c_out == 32) output_e8_co32(buf, at, n, heads, 4, u, m, bias, out, vps);
            else if (c_out == 64) output_e8_co64(buf, at, n, heads, 8, u, m, bias, out, vps);
            else output_e8_any(buf, at, n, heads, c_out / 8, u, m, bias, out, vps);
            if (maps)
                for (lf_int k = 0; k < n; k++)
                    for (lf_int h = 0; h < heads; h++)
                        maps[(b * heads + h) * plane + at[k] - b * plane] += scale * (vps[k * heads + h] + eps) / cc[h];
            continue;
        }
#endif
        for (lf_int k = 0; k < n; k++) {
            const float *restrict row = buf + k * c;
            float *restrict dst = out + at[k] * c_out;
            for (lf_int j = 0; j < c; j++) prod[j] = u[j] * row[j];
            for (lf_int h = 0; h < heads; h++) {
                float t = 0.f;
                for (lf_int i = 0; i < e_dim; i++) t += prod[h * e_dim + i];
                vp[h] = t;   /* (X^T u) at this voxel, head h */
            }
            for (lf_int o = 0; o < c_out; o++) acc[o] = bias[o];
            for (lf_int h = 0; h < heads; h++)
                for (lf_int o = 0; o < c_out; o++) acc[o] += vp[h] * m[h * c_out + o];
            for (lf_int o = 0; o < c_out; o++) dst[o] += acc[o];
            if (maps) {
                const lf_int pos = at[k] - b * plane;
                for (lf_int h = 0; h < heads; h++)
                    maps[(b * heads + h) * plane + pos] += scale * (vp[h] + eps) / cc[h];
            }
        }
    }
    free(buf); free(at);
    return 0;
}

/* Layer norm of `rows` contiguous rows of c floats: y = (x - mean) / sqrt(var + eps) * weight + bias,
   with the mean and the (biased) variance of each row, both summed in float, the variance over the
   centred values (two passes over a row that stays in registers or L1). PyTorch's kernel does the
   same arithmetic, but on the 32- and 64-channel rows of the Factorizer's full-resolution blocks
   its per-row overhead made it a tenth of the network's time. One thread per call: the callers
   split rows between threads themselves (nn/cputhreads.py). */
LF_EXPORT LF_CLONES void lf_layer_norm_rows(const float *x, float *y, lf_int rows, lf_int c,
                                            const float *weight, const float *bias, float eps)
{
#ifdef LF_VECTORS
    if (c % 8 == 0) {
        const lf_int c8 = c / 8;
        for (lf_int r = 0; r < rows; r++) {
            const float *restrict xr = x + r * c;
            float *restrict yr = y + r * c;
            v8f s = load8(xr);
            for (lf_int j = 1; j < c8; j++) s += load8(xr + 8 * j);
            const float mean = sum8(&s) / (float)c;
            v8f d = load8(xr) - mean, q = d * d;
            for (lf_int j = 1; j < c8; j++) {
                d = load8(xr + 8 * j) - mean;
                q += d * d;
            }
            const float rstd = 1.f / sqrtf(sum8(&q) / (float)c + eps);
            for (lf_int j = 0; j < c8; j++) {
                const v8f o = (load8(xr + 8 * j) - mean) * rstd * load8(weight + 8 * j) + load8(bias + 8 * j);
                memcpy(yr + 8 * j, &o, sizeof o);
            }
        }
        return;
    }
#endif
    for (lf_int r = 0; r < rows; r++) {
        const float *restrict xr = x + r * c;
        float *restrict yr = y + r * c;
        float sum = 0.f, sq = 0.f;
        for (lf_int j = 0; j < c; j++) sum += xr[j];
        const float mean = sum / (float)c;
        for (lf_int j = 0; j < c; j++) sq += (xr[j] - mean) * (xr[j] - mean);
        const float rstd = 1.f / sqrtf(sq / (float)c + eps);
        for (lf_int j = 0; j < c; j++) yr[j] = (xr[j] - mean) * rstd * weight[j] + bias[j];
    }
}
