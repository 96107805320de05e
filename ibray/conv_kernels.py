"""The conv network's 3x3 convolutions and 2x2 max-pooling as direct loops in C, batched over seeds.

The study's conv layers are tiny (1 or 2 channels in, 2 out, 3x3): as matrix products they need
every pixel's nine neighbours copied out as patches, nine times the image, for 18 multiply-adds
per output pair, and torch's pooling kernel spends more on indexing 5,000 small planes than on
the maxima. A direct loop reads the image once, keeps a block of outputs in registers and does
no copying. The source below is compiled on first use by the system's C compiler (`cc`, a
fraction of a second) into a cache folder and called through ctypes, which releases the GIL, so
the measuring thread goes on beside it.

The study's layers (ReLU, a quantizer, pooling: `conv3x3_quantize_pool`) run fused, so that the
full-size convolution output is never written to memory:
- a measuring pass (no gradient, ranges fixed): one pass, convolution, ReLU, quantizer and
  pooling (only the rows pooling keeps);
- a training pass: one pass for the outputs' minimum and maximum (the quantizer's range must be
  known before anything is quantized), then the convolution again with ReLU, quantizer and
  pooling, which also notes where each window's gradient goes (its first maximum, ReLU's cut).
  With the range tracked over the epoch (the default), most batches leave it where it was: the
  batch is quantized under the range so far, its extremes found in the same pass, and the pass
  run again only for the seeds whose range it moved (1-2% of them, measured on MNIST). The
  backward pass builds each sample's output gradient from the notes and computes the weight,
  bias and input gradients in one pass;
- other activations and the float network run the separate kernels (`conv3x3`, `pool2x2`,
  `quantize_pool2x2`).

Arithmetic, defined so that it does not depend on a seed's slot or its batch mates:
- forward: out = bias, then + w[c, di, dj] * x[c, i + di, j + dj] for c, di, dj in that order,
  each product and each sum rounded to float32 (compiled with -ffp-contract=off: no fused
  multiply-add). `reference_conv3x3` computes the same in torch, bit for bit (tested), and is
  what a GPU runs, so conv forward values agree between CPU and GPU;
- weight and bias gradients: running float32 sums per lane (output column) over (sample, row)
  in order, then the lanes summed in order; the input gradient summed over (out channel, di,
  dj) in order. Sums over the same numbers as autograd's, in another order: equal to within
  float32 rounding, not bit for bit (tested against autograd of the reference);
- max-pooling routes a window's gradient to its first maximum in row-major order, as torch's
  `max_pool2d` (tested); the quantizer's range, codes and values are Quantizer's, bit for bit.

Without a C compiler (or with IBRAY_CONV_KERNELS=torch) the conv network runs the torch
reference instead, with one warning: same forward values, gradients within rounding, slower.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ibray.quantization import straight_through

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

/* Rows are processed at the input's full width W: output (i, j) sits at k = i * W + j of a plane
   of H-2 rows of W, whose last two columns are never kept, so that every tap is one long loop
   over k (input at k + di * W + dj) rather than many short ones. k stops two short of the plane's
   end, where the taps would read past the input. */
#define SPAN(H, W) (((H) - 2) * (W) - 2)

/* k-bit quantization, then 2x2 max-pooling, of one plane of H rows of W values, `stride` floats
   apart: a value's code is round((a - low) * inverse) clamped to [0, levels], its quantized value
   code * step + low, as ibray.quantization.Quantizer computes them; out and codes get the pooled
   quantized values and their codes, `which` (unless NULL) which of a window's values was taken
   (row-major, first maximum). `buffer`: scratch of 4 W floats. */
static void quantize_pool_plane(const float *restrict plane, int64_t stride, int64_t H, int64_t W, float lo, float st,
                                float inv, float levels, float *restrict out, float *restrict codes,
                                uint8_t *restrict which, float *restrict buffer) {
    const int64_t H2 = H / 2, W2 = W / 2;
    float *restrict q = buffer, *restrict c = buffer + 2 * W; /* two rows' quantized values, codes */
    for (int64_t i = 0; i < H2; i++) {
        for (int64_t r = 0; r < 2; r++) {
            const float *row = plane + (2 * i + r) * stride;
            for (int64_t k = 0; k < W; k++) {
                float code = nearbyintf((row[k] - lo) * inv);
                code = code < 0.0f ? 0.0f : code;
                code = code > levels ? levels : code;
                c[r * W + k] = code;
                q[r * W + k] = code * st + lo;
            }
        }
        for (int64_t j = 0; j < W2; j++) { /* branch-free: which value a window takes is data */
            const float v1 = q[2 * j + 1], v2 = q[W + 2 * j], v3 = q[W + 2 * j + 1];
            float best = q[2 * j], code = c[2 * j];
            uint8_t taken = 0;
            taken = v1 > best ? 1 : taken;
            code = v1 > best ? c[2 * j + 1] : code;
            best = v1 > best ? v1 : best;
            taken = v2 > best ? 2 : taken;
            code = v2 > best ? c[W + 2 * j] : code;
            best = v2 > best ? v2 : best;
            taken = v3 > best ? 3 : taken;
            code = v3 > best ? c[W + 2 * j + 1] : code;
            best = v3 > best ? v3 : best;
            out[i * W2 + j] = best;
            codes[i * W2 + j] = code;
            if (which) which[i * W2 + j] = taken;
        }
    }
}

/* x (SX, C, B, H, W), w (S, O, C, 3, 3), b (S, O) -> out (S, O, B, H-2, W-2); SX is 1 (x shared
   by every seed) or S. With `relu`, ReLU applied (x < 0 ? 0 : x). The plane is done in blocks of
   BLOCK positions whose sums stay in registers through all taps; a block's arithmetic per
   position is the same whether the block is full or the last, short one. */
#define VEC 8 /* floats per vector (GCC/clang vector extensions: AVX where there is one, else pairs) */
#define LANES_IN_BLOCK 4
#define BLOCK (VEC * LANES_IN_BLOCK)
typedef float vec __attribute__((vector_size(VEC * sizeof(float))));
static inline vec splat(float v) { return (vec){v, v, v, v, v, v, v, v}; }
static inline vec load(const float *p) { vec v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vec v) { memcpy(p, &v, sizeof v); }
int conv3x3_forward(const float *restrict x, const float *restrict w, const float *restrict b, float *restrict out,
                    int64_t S, int64_t shared, int64_t C, int64_t O, int64_t B, int64_t H, int64_t W, int64_t relu) {
    float *wide = malloc(sizeof(float) * (H - 2) * W);
    if (!wide) return 1;
    const int64_t H2 = H - 2, W2 = W - 2, span = SPAN(H, W);
    for (int64_t s = 0; s < S; s++) {
        const int64_t xs = shared ? 0 : s;
        for (int64_t n = 0; n < B; n++) {
            for (int64_t o = 0; o < O; o++) {
                const float *k = w + (s * O + o) * C * 9;
                const float bias = b[s * O + o];
                int64_t q0 = 0;
                for (; q0 + BLOCK <= span; q0 += BLOCK) {
                    vec sum[LANES_IN_BLOCK];
                    for (int j = 0; j < LANES_IN_BLOCK; j++) sum[j] = splat(bias);
                    for (int64_t c = 0; c < C; c++) {
                        const float *image = x + ((xs * C + c) * B + n) * H * W + q0;
                        for (int64_t t = 0; t < 9; t++) {
                            const vec kv = splat(k[c * 9 + t]);
                            const float *src = image + (t / 3) * W + t % 3;
                            for (int j = 0; j < LANES_IN_BLOCK; j++) sum[j] = sum[j] + kv * load(src + j * VEC);
                        }
                    }
                    for (int j = 0; j < LANES_IN_BLOCK; j++) store(wide + q0 + j * VEC, sum[j]);
                }
                for (int64_t q = q0; q < span; q++) wide[q] = bias;
                for (int64_t c = 0; c < C; c++) {
                    const float *image = x + ((xs * C + c) * B + n) * H * W;
                    for (int64_t t = 0; t < 9; t++) {
                        const float kv = k[c * 9 + t];
                        const float *src = image + (t / 3) * W + t % 3;
                        for (int64_t q = q0; q < span; q++) wide[q] = wide[q] + kv * src[q];
                    }
                }
                if (relu)
                    for (int64_t q = 0; q < span; q++) wide[q] = wide[q] < 0.0f ? 0.0f : wide[q]; /* NaN stays */
                float *plane = out + ((s * O + o) * B + n) * H2 * W2;
                for (int64_t i = 0; i < H2; i++)
                    for (int64_t j = 0; j < W2; j++) plane[i * W2 + j] = wide[i * W + j];
            }
        }
    }
    free(wide);
    return 0;
}

/* The gradients of conv3x3_forward from dz (S, O, B, H-2, W-2): dw (S, O, C, 3, 3), db (S, O),
   and dx (S, C, B, H, W) unless it is NULL (x not shared then); with relu_out (the forward's
   output with `relu`), dz is taken through the ReLU first. A weight's gradient is summed in
   a fixed order: per sample, over the plane's full blocks into VEC lanes (position q to lane
   q % VEC) and over the rest apart; the samples' lane sums and rest sums each added up in
   sample order; at the end the lanes in order, then the rest. */
int conv3x3_backward(const float *restrict x, const float *restrict w, const float *restrict dz, float *restrict dw,
                     float *restrict db, float *restrict dx, int64_t S, int64_t shared, int64_t C, int64_t O,
                     int64_t B, int64_t H, int64_t W, const float *restrict relu_out) {
    const int64_t H2 = H - 2, W2 = W - 2, span = SPAN(H, W), taps = C * 9 + 1, full = span / BLOCK * BLOCK;
    float *memory = malloc(sizeof(float) * (O * taps * (VEC + 1) + O * H2 * W));
    if (!memory) return 1;
    float *lanes = memory, *rest = memory + O * taps * VEC;
    float *wide = rest + O * taps; /* dz of one sample at full width, zero in the unkept columns */
    for (int64_t s = 0; s < S; s++) {
        const int64_t xs = shared ? 0 : s;
        memset(memory, 0, sizeof(float) * (O * taps * (VEC + 1) + O * H2 * W));
        for (int64_t n = 0; n < B; n++) {
            for (int64_t o = 0; o < O; o++) {
                float *g = wide + o * H2 * W;
                const float *rows = dz + ((s * O + o) * B + n) * H2 * W2;
                if (relu_out) { /* dz is the gradient of relu's output: through relu, as torch's */
                    const float *outs = relu_out + ((s * O + o) * B + n) * H2 * W2;
                    for (int64_t i = 0; i < H2; i++)
                        for (int64_t j = 0; j < W2; j++)
                            g[i * W + j] = outs[i * W2 + j] > 0.0f ? rows[i * W2 + j] : 0.0f;
                } else {
                    for (int64_t i = 0; i < H2; i++) memcpy(g + i * W, rows + i * W2, sizeof(float) * W2);
                }
                float *lane = lanes + o * taps * VEC, *tail = rest + o * taps;
                vec part = splat(0.0f);
                for (int64_t q0 = 0; q0 < full; q0 += BLOCK)
                    for (int j = 0; j < LANES_IN_BLOCK; j++) part = part + load(g + q0 + j * VEC);
                store(lane, load(lane) + part);
                float sum = 0.0f;
                for (int64_t q = full; q < span; q++) sum = sum + g[q];
                tail[0] = tail[0] + sum;
                for (int64_t c = 0; c < C; c++) {
                    const float *image = x + ((xs * C + c) * B + n) * H * W;
                    vec parts[9];
                    for (int t = 0; t < 9; t++) parts[t] = splat(0.0f);
                    for (int64_t q0 = 0; q0 < full; q0 += BLOCK) {
                        vec gs[LANES_IN_BLOCK];
                        for (int j = 0; j < LANES_IN_BLOCK; j++) gs[j] = load(g + q0 + j * VEC);
                        for (int t = 0; t < 9; t++) {
                            const float *src = image + (t / 3) * W + t % 3 + q0;
                            for (int j = 0; j < LANES_IN_BLOCK; j++) parts[t] = parts[t] + gs[j] * load(src + j * VEC);
                        }
                    }
                    for (int t = 0; t < 9; t++) {
                        float *l = lane + (1 + c * 9 + t) * VEC;
                        store(l, load(l) + parts[t]);
                        const float *src = image + (t / 3) * W + t % 3;
                        sum = 0.0f;
                        for (int64_t q = full; q < span; q++) sum = sum + g[q] * src[q];
                        tail[1 + c * 9 + t] = tail[1 + c * 9 + t] + sum;
                    }
                }
            }
            if (!dx) continue;
            for (int64_t c = 0; c < C; c++) {
                float *image = dx + ((s * C + c) * B + n) * H * W;
                memset(image, 0, sizeof(float) * H * W);
                for (int64_t o = 0; o < O; o++) {
                    const float *g = wide + o * H2 * W;
                    const float *k = w + ((s * O + o) * C + c) * 9;
                    for (int64_t t = 0; t < 9; t++) {
                        const float kv = k[t];
                        float *dst = image + (t / 3) * W + t % 3;
                        for (int64_t q = 0; q < span; q++) dst[q] = dst[q] + kv * g[q];
                    }
                }
            }
        }
        for (int64_t o = 0; o < O; o++) {
            for (int64_t tap = 0; tap < taps; tap++) {
                const float *l = lanes + (o * taps + tap) * VEC;
                float total = 0.0f;
                for (int j = 0; j < VEC; j++) total = total + l[j];
                total = total + rest[o * taps + tap];
                if (tap == 0)
                    db[s * O + o] = total;
                else
                    dw[(s * O + o) * C * 9 + tap - 1] = total;
            }
        }
    }
    free(memory);
    return 0;
}

/* 2x2 max-pooling of P planes of H x W (odd sides: the last row or column left out): out
   (P, H/2, W/2) and which of the window's four values it took (row-major, first maximum). */
void pool2x2_forward(const float *a, float *out, uint8_t *which, int64_t P, int64_t H, int64_t W) {
    const int64_t H2 = H / 2, W2 = W / 2;
    for (int64_t p = 0; p < P; p++) {
        const float *plane = a + p * H * W;
        for (int64_t i = 0; i < H2; i++) {
            const float *top = plane + 2 * i * W, *bottom = top + W;
            float *o = out + (p * H2 + i) * W2;
            uint8_t *k = which + (p * H2 + i) * W2;
            for (int64_t j = 0; j < W2; j++) {
                float best = top[2 * j];
                uint8_t at = 0;
                if (top[2 * j + 1] > best) { best = top[2 * j + 1]; at = 1; }
                if (bottom[2 * j] > best) { best = bottom[2 * j]; at = 2; }
                if (bottom[2 * j + 1] > best) { best = bottom[2 * j + 1]; at = 3; }
                o[j] = best;
                k[j] = at;
            }
        }
    }
}

/* quantize_pool_plane over S seeds' P planes each of H x W (per-seed low, step, inverse). */
int quantize_pool2x2_forward(const float *restrict a, const float *restrict low, const float *restrict step,
                             const float *restrict inverse, float levels, float *restrict out, float *restrict codes,
                             uint8_t *restrict which, int64_t S, int64_t P, int64_t H, int64_t W) {
    const int64_t pooled = (H / 2) * (W / 2);
    float *buffer = malloc(sizeof(float) * 4 * W);
    if (!buffer) return 1;
    for (int64_t s = 0; s < S; s++)
        for (int64_t p = s * P; p < (s + 1) * P; p++)
            quantize_pool_plane(a + p * H * W, W, H, W, low[s], step[s], inverse[s], levels, out + p * pooled,
                                codes + p * pooled, which + p * pooled, buffer);
    free(buffer);
    return 0;
}

/* The gradient of pool2x2_forward: each window's gradient to the value it took, zero elsewhere. */
void pool2x2_backward(const float *dout, const uint8_t *which, float *da, int64_t P, int64_t H, int64_t W) {
    const int64_t H2 = H / 2, W2 = W / 2;
    memset(da, 0, sizeof(float) * P * H * W);
    for (int64_t p = 0; p < P; p++) {
        float *plane = da + p * H * W;
        for (int64_t i = 0; i < H2; i++) {
            const float *g = dout + (p * H2 + i) * W2;
            const uint8_t *k = which + (p * H2 + i) * W2;
            for (int64_t j = 0; j < W2; j++) plane[(2 * i + (k[j] >> 1)) * W + 2 * j + (k[j] & 1)] = g[j];
        }
    }
}

/* ---- the fused kernels of a conv layer: convolution, ReLU, the quantizer and 2x2 pooling --------

   A conv output row is computed in `vectors` lane vectors (an even number: a pair of vectors,
   16 outputs, makes a vector of 8 pooling windows, split into their even and odd columns by
   shuffles), each tap one contiguous load from an input row. Loads run past an input row's end
   into the next row (lanes that are never kept); rows too close to their plane's end for that
   are read from zero-padded copies. A plane's rows are written a vector at a time, in order, so
   lanes past a row's end land at the start of the next row, which is written after it; never
   past the plane's end (there lane by lane). */

#if defined(__AVX__)
#include <immintrin.h>
#endif

typedef int32_t ivec __attribute__((vector_size(VEC * sizeof(int32_t))));
#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 16") /* the small loops over a block's sums: all in registers */
/* Loads after it are made again, not kept from before it in registers: a block's taps read the
   same input rows several times, and keeping them all spills the block's sums (measured: a
   third slower). */
#define RELOAD __asm__ volatile("" ::: "memory")

INLINE vec vselect(ivec mask, vec yes, vec no) { /* lanes of `yes` where mask is -1, else `no` */
#if defined(__AVX__)
    return (vec)_mm256_blendv_ps((__m256)no, (__m256)yes, (__m256)mask);
#else
    return (vec)(((ivec)yes & mask) | ((ivec)no & ~mask));
#endif
}
INLINE ivec iselect(ivec mask, ivec yes, ivec no) { return (yes & mask) | (no & ~mask); }
/* a < b ? a : b and a > b ? a : b: b where either is NaN */
#if defined(__AVX__)
INLINE vec vmin(vec a, vec b) { return (vec)_mm256_min_ps((__m256)a, (__m256)b); }
INLINE vec vmax(vec a, vec b) { return (vec)_mm256_max_ps((__m256)a, (__m256)b); }
#else
INLINE vec vmin(vec a, vec b) { return vselect(a < b, a, b); }
INLINE vec vmax(vec a, vec b) { return vselect(a > b, a, b); }
#endif
INLINE vec vround(vec a) { /* to nearest, ties to even: nearbyintf, as torch's round */
#if defined(__AVX__)
    return (vec)_mm256_round_ps((__m256)a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    vec r;
    for (int k = 0; k < VEC; k++) r[k] = nearbyintf(a[k]);
    return r;
#endif
}
INLINE void store_bytes(uint8_t *p, ivec v) { /* each lane (0..255) as a byte */
#if defined(__AVX2__)
    const __m256i lanes = (__m256i)v;
    const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(lanes), _mm256_extracti128_si256(lanes, 1));
    _mm_storel_epi64((__m128i *)p, _mm_packus_epi16(words, words));
#else
    for (int k = 0; k < VEC; k++) p[k] = (uint8_t)v[k];
#endif
}
INLINE ivec load_bytes(const uint8_t *p) {
#if defined(__AVX2__)
    return (ivec)_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
#else
    ivec v;
    for (int k = 0; k < VEC; k++) v[k] = p[k];
    return v;
#endif
}
static ivec below(int64_t first, int64_t count) { /* lanes first.. first+VEC-1 < count */
    ivec lanes;
    for (int k = 0; k < VEC; k++) lanes[k] = first + k < count ? -1 : 0;
    return lanes;
}
static inline int64_t vectors_for(int64_t count) { return (count + VEC - 1) / VEC; }

#if defined(__clang__)
#define EVENS(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14)
#define ODDS(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15)
#define LOW_HALVES(a, b) __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11)
#define HIGH_HALVES(a, b) __builtin_shufflevector(a, b, 4, 12, 5, 13, 6, 14, 7, 15)
#else
#define EVENS(a, b) __builtin_shuffle(a, b, (ivec){0, 2, 4, 6, 8, 10, 12, 14})
#define ODDS(a, b) __builtin_shuffle(a, b, (ivec){1, 3, 5, 7, 9, 11, 13, 15})
#define LOW_HALVES(a, b) __builtin_shuffle(a, b, (ivec){0, 8, 1, 9, 2, 10, 3, 11})
#define HIGH_HALVES(a, b) __builtin_shuffle(a, b, (ivec){4, 12, 5, 13, 6, 14, 7, 15})
#endif

/* v at p, but nothing at or past `end` (its plane's end): a whole vector, or lane by lane. */
INLINE void store_row(float *p, vec v, const float *end) {
    if (p + VEC <= end) {
        store(p, v);
        return;
    }
    for (int k = 0; p + k < end; k++) p[k] = v[k];
}

/* A layer's geometry: input C x H x W, outputs O x H2 x W2, pooled h x w; `vectors` lane vectors
   an output row (even), `windows` a row of windows, `reach` the floats a row's loads reach from
   its start; the lanes of an output row's last vector that are outputs, and of a row of
   windows' last vector that are windows. */
typedef struct {
    int64_t S, C, O, B, H, W, H2, W2, h, w, vectors, windows, in_vectors, reach;
    ivec output_tail, window_tail;
} shape;
static shape shape_of(int64_t S, int64_t C, int64_t O, int64_t B, int64_t H, int64_t W) {
    shape g = {.S = S, .C = C, .O = O, .B = B, .H = H, .W = W, .H2 = H - 2, .W2 = W - 2, .h = (H - 2) / 2,
               .w = (W - 2) / 2};
    g.vectors = 2 * vectors_for((g.W2 + 1) / 2);
    g.windows = g.vectors / 2;
    g.in_vectors = vectors_for(W);
    g.reach = VEC * g.vectors + 2;
    g.output_tail = below(g.W2 / VEC * VEC, g.W2);
    g.window_tail = below(g.w / VEC * VEC, g.w);
    return g;
}

/* Strides (in floats) of an input x: per seed (0: one x for every seed), sample and channel;
   a plane's rows are contiguous, W apart. */
typedef struct {
    int64_t seed, sample, channel;
} strides;

/* One sample's input rows (C planes of H): where each row's loads read, its own place in x or,
   for the rows whose loads would run past their plane's end, a zero-padded copy in `copies`
   (C x H rows of `reach` floats at most). */
static void sample_rows(const float *x, strides xs, const shape *g, int64_t s, int64_t n, const float **rows,
                        float *copies) {
    for (int64_t c = 0; c < g->C; c++) {
        const float *plane = x + s * xs.seed + n * xs.sample + c * xs.channel;
        for (int64_t y = 0; y < g->H; y++) {
            const float *row = plane + y * g->W;
            if (g->reach <= (g->H - y) * g->W) {
                rows[c * g->H + y] = row;
            } else {
                float *copy = copies + (c * g->H + y) * g->reach;
                memcpy(copy, row, sizeof(float) * g->W);
                memset(copy + g->W, 0, sizeof(float) * (g->reach - g->W));
                rows[c * g->H + y] = copy;
            }
        }
    }
}

/* The 3x3 convolution of one sample's input rows with one output channel's kernels k (C x 9) and
   bias, for output rows i0.. i0+NR-1 and lane vectors v0.. v0+NV-1: out[r][v]. Each output:
   bias, then + k[c, di, dj] x input for c, di, dj in order, a multiply and an add each
   (reference_conv3x3's order). A block of NR x NV = 8 sums (or fewer) stays in registers. */
INLINE void conv_block(const float *const *restrict rows, int64_t C, int64_t H, const float *restrict k, float bias,
                       int64_t i0, int64_t v0, const int NR, const int NV, vec out[4][4]) {
    UNROLL
    for (int r = 0; r < NR; r++)
        UNROLL
        for (int v = 0; v < NV; v++) out[r][v] = splat(bias);
    for (int64_t c = 0; c < C; c++) {
        UNROLL
        for (int di = 0; di < 3; di++) {
            RELOAD;
            const vec k0 = splat(k[c * 9 + di * 3]), k1 = splat(k[c * 9 + di * 3 + 1]), k2 = splat(k[c * 9 + di * 3 + 2]);
            UNROLL
            for (int r = 0; r < NR; r++) {
                const float *row = rows[c * H + i0 + r + di] + v0 * VEC;
                UNROLL
                for (int v = 0; v < NV; v++) {
                    out[r][v] = out[r][v] + k0 * load(row + v * VEC);
                    out[r][v] = out[r][v] + k1 * load(row + v * VEC + 1);
                    out[r][v] = out[r][v] + k2 * load(row + v * VEC + 2);
                }
            }
        }
    }
}

/* Blocks of `rows` rows of `vectors` lane vectors: NR x NV = 8 sums where they fit (NV 4 or 2, NR
   2, or 4 where a row has 2 vectors or 1), smaller blocks for the last rows and vectors (with an
   even number of vectors and rows, NV and NR stay even); with `single`, one row a block (a
   block's rows then come one after the other in memory, whatever the vectors). BODY runs with
   the constants NR_ and NV_, for rows i.. and vectors v0.. */
#define FOR_BLOCKS(rows, vectors, single, ...)                                                                         \
    for (int64_t i = 0; i < (rows);) {                                                                                 \
        const int64_t left = (rows) - i;                                                                               \
        const int NR = (single) ? 1 : (vectors) <= 2 && left >= 4 ? 4 : left >= 2 ? 2 : 1;                             \
        for (int64_t v0 = 0; v0 < (vectors);) {                                                                        \
            const int64_t more = (vectors) - v0;                                                                       \
            const int NV = NR == 4 ? (more >= 2 ? 2 : 1) : more >= 4 ? 4 : more >= 2 ? 2 : 1;                          \
            switch (NR * 10 + NV) {                                                                                    \
            case 11: { const int NR_ = 1, NV_ = 1; __VA_ARGS__; } break;                                               \
            case 12: { const int NR_ = 1, NV_ = 2; __VA_ARGS__; } break;                                               \
            case 14: { const int NR_ = 1, NV_ = 4; __VA_ARGS__; } break;                                               \
            case 21: { const int NR_ = 2, NV_ = 1; __VA_ARGS__; } break;                                               \
            case 22: { const int NR_ = 2, NV_ = 2; __VA_ARGS__; } break;                                               \
            case 24: { const int NR_ = 2, NV_ = 4; __VA_ARGS__; } break;                                               \
            case 41: { const int NR_ = 4, NV_ = 1; __VA_ARGS__; } break;                                               \
            case 42: { const int NR_ = 4, NV_ = 2; __VA_ARGS__; } break;                                               \
            }                                                                                                          \
            v0 += NV;                                                                                                  \
        }                                                                                                              \
        i += NR;                                                                                                       \
    }

/* ReLU (with `relu`): a < 0 ? 0 : a, as the reference's; NaN and -0 stay. */
INLINE vec activate(vec a, int64_t relu) { return relu ? vmax(splat(0.0f), a) : a; }

/* k-bit quantization, as ibray.quantization.Quantizer: code = round((a - low) * inverse) clamped
   to [0, levels] (NaN stays NaN, as torch's clamp), value = code * step + low. */
INLINE void quantize(vec a, vec low, vec step, vec inverse, vec levels, vec *value, vec *code) {
    vec c = vround((a - low) * inverse);
    c = vmin(levels, vmax(splat(0.0f), c)); /* c < 0 ? 0 : c, then c > levels ? levels : c */
    *code = c;
    *value = c * step + low;
}

/* Eight 2x2 windows from two pairs of output vectors (16 outputs of the top row, of the bottom
   row), quantized, and each window's maximum: its first maximum (row-major) quantized value and
   code, its position (0..3) and that output's own value (which tells whether ReLU passed its
   gradient). */
typedef struct {
    vec value, code, raw;
    ivec which;
} window;
INLINE window pool_windows(vec top0, vec top1, vec bottom0, vec bottom1, vec low, vec step, vec inverse,
                           vec levels) {
    const vec a[4] = {EVENS(top0, top1), ODDS(top0, top1), EVENS(bottom0, bottom1), ODDS(bottom0, bottom1)};
    window best;
    quantize(a[0], low, step, inverse, levels, &best.value, &best.code);
    best.raw = a[0];
    best.which = (ivec){0};
    UNROLL
    for (int p = 1; p < 4; p++) {
        vec value, code;
        quantize(a[p], low, step, inverse, levels, &value, &code);
        const ivec more = value > best.value;
        best.value = vmax(value, best.value);
        best.code = vselect(more, code, best.code);
        best.raw = vselect(more, a[p], best.raw);
        best.which = iselect(more, (ivec){0} + p, best.which);
    }
    return best;
}

/* Scratch of a sample's row table and row copies. */
typedef struct {
    const float **rows;
    float *copies;
} sample_scratch;
static int scratch_for(const shape *g, sample_scratch *t) {
    t->rows = malloc(sizeof(float *) * g->C * g->H);
    t->copies = malloc(sizeof(float) * g->C * g->H * g->reach);
    return t->rows && t->copies;
}
static void scratch_free(sample_scratch *t) {
    free(t->rows);
    free(t->copies);
}

/* Pooling a block's rows of outputs (pairs of rows, pairs of vectors) in a training pass: the
   windows' quantized values and codes stored at values_o and codes_o (rows of w, their plane
   ending at values_o + plane), and their routes at route_o (rows of `windows` vectors of bytes). */
#define POOL_BLOCK(sums)                                                                                               \
    UNROLL                                                                                                             \
    for (int r = 0; r + 1 < NR_; r += 2)                                                                               \
        UNROLL                                                                                                         \
        for (int v = 0; v + 1 < NV_; v += 2) {                                                                         \
            const window best = pool_windows(activate(sums[r][v], 1), activate(sums[r][v + 1], 1),                     \
                                             activate(sums[r + 1][v], 1), activate(sums[r + 1][v + 1], 1), lo, st,     \
                                             inv, top);                                                                \
            const int64_t row = (i + r) / 2, u = (v0 + v) / 2;                                                         \
            if (u * VEC < g.w) {                                                                                       \
                store_row(values_o + row * g.w + u * VEC, best.value, values_o + plane);                              \
                store_row(codes_o + row * g.w + u * VEC, best.code, codes_o + plane);                                 \
            }                                                                                                          \
            ivec through = best.raw > splat(0.0f);                                                                     \
            through = (u + 1) * VEC <= g.w ? through : u * VEC < g.w ? through & g.window_tail : (ivec){0};           \
            store_bytes(route_o + (row * g.windows + u) * VEC, iselect(through, best.which, (ivec){0} + 4));           \
        }

/* The measuring pass of a conv layer (no gradient, the quantizer's ranges as they stand):
   convolution, ReLU (with `relu`), quantization and 2x2 pooling in one pass over x (SX, C, B, H,
   W) with strides xs, per-seed w (S, O, C, 3, 3), b (S, O) and low, step, inverse (S): the pooled
   quantized values and their codes, both (S, B, O, h, w). Only the rows that pooling keeps are
   computed. (Codes written neuron by neuron, as the counting reads them, took a measurement
   1.1 s longer for 0.36 s less counting: a store a code, each to another cache line.) */
int conv_quantize_pool(const float *restrict x, int64_t x_seed, int64_t x_sample, int64_t x_channel,
                       const float *restrict w, const float *restrict b, const float *restrict low,
                       const float *restrict step, const float *restrict inverse, float levels, int64_t relu,
                       float *restrict values, float *restrict codes, int64_t S, int64_t C, int64_t O, int64_t B,
                       int64_t H, int64_t W) {
    const shape g = shape_of(S, C, O, B, H, W);
    const strides xs = {x_seed, x_sample, x_channel};
    sample_scratch t;
    if (!scratch_for(&g, &t)) return scratch_free(&t), 1;
    const int64_t plane = g.h * g.w;
    const vec top = splat(levels);
    for (int64_t n = 0; n < B; n++)
        for (int64_t s = 0; s < S; s++) {
            if (s == 0 || x_seed) sample_rows(x, xs, &g, s, n, t.rows, t.copies);
            const vec lo = splat(low[s]), st = splat(step[s]), inv = splat(inverse[s]);
            for (int64_t o = 0; o < O; o++) {
                const float *k = w + (s * O + o) * C * 9;
                float *values_o = values + ((s * B + n) * O + o) * plane, *codes_o = codes + ((s * B + n) * O + o) * plane;
                FOR_BLOCKS(2 * g.h, g.vectors, 0, {
                    vec sums[4][4];
                    conv_block(t.rows, C, H, k, b[s * O + o], i, v0, NR_, NV_, sums);
                    UNROLL
                    for (int r = 0; r + 1 < NR_; r += 2)
                        UNROLL
                        for (int v = 0; v + 1 < NV_; v += 2) {
                            /* the quantizer is monotone: a window's largest quantized value (and code)
                               is that of its largest output, and ReLU's of the largest, as the first
                               maximum of the quantized values (a NaN wins only in the window's first
                               place, as there) */
                            const vec top0 = sums[r][v], top1 = sums[r][v + 1];
                            const vec bottom0 = sums[r + 1][v], bottom1 = sums[r + 1][v + 1];
                            vec most = EVENS(top0, top1);
                            most = vmax(ODDS(top0, top1), most);
                            most = vmax(EVENS(bottom0, bottom1), most);
                            most = vmax(ODDS(bottom0, bottom1), most);
                            vec value, code;
                            quantize(activate(most, relu), lo, st, inv, top, &value, &code);
                            const int64_t row = (i + r) / 2, u = (v0 + v) / 2;
                            if (u * VEC < g.w) {
                                store_row(values_o + row * g.w + u * VEC, value, values_o + plane);
                                store_row(codes_o + row * g.w + u * VEC, code, codes_o + plane);
                            }
                        }
                })
            }
        }
    scratch_free(&t);
    return 0;
}

/* Per seed, the minimum and maximum of ReLU's outputs (>= 0, or NaN) and a NaN check: their sum,
   NaN only where one of them is (+inf adds up to +inf). */
typedef struct {
    vec lowest, highest, check;
} extremes_sums;
static extremes_sums extremes_start(void) {
    const extremes_sums e = {splat(INFINITY), splat(0.0f), splat(0.0f)};
    return e;
}
/* ReLU's outputs a (lane vector v of an output row) into e; lanes past the row left out. */
INLINE void extremes_add(extremes_sums *e, vec a, int64_t v, const shape *g) {
    if ((v + 1) * VEC > g->W2) a = vselect(g->output_tail, a, splat(0.0f));
    e->highest = vmax(a, e->highest);
    e->check = e->check + a;
    if ((v + 1) * VEC > g->W2) a = vselect(g->output_tail, a, splat(INFINITY));
    e->lowest = vmin(a, e->lowest);
}
static void extremes_end(const extremes_sums *e, float *out) {
    float lo = INFINITY, hi = 0.0f, sum = 0.0f;
    for (int k = 0; k < VEC; k++) {
        lo = e->lowest[k] < lo ? e->lowest[k] : lo;
        hi = e->highest[k] > hi ? e->highest[k] : hi;
        sum = sum + e->check[k];
    }
    out[0] = sum != sum ? NAN : lo; /* a NaN among them: amin's and amax's NaN */
    out[1] = sum != sum ? NAN : hi;
}

/* A training pass's conv layer with ReLU, first half: per seed the minimum and maximum of its
   outputs over the first `valid` samples (extremes (S, 2); both NaN where an output is NaN), the
   range the quantizer takes before anything is quantized. */
int conv_extremes(const float *restrict x, int64_t x_seed, int64_t x_sample, int64_t x_channel,
                  const float *restrict w, const float *restrict b, float *restrict extremes, int64_t S, int64_t C,
                  int64_t O, int64_t B, int64_t H, int64_t W, int64_t valid) {
    const shape g = shape_of(S, C, O, B, H, W);
    const strides xs = {x_seed, x_sample, x_channel};
    sample_scratch t;
    if (!scratch_for(&g, &t)) return scratch_free(&t), 1;
    const int64_t output_vectors = vectors_for(g.W2);
    for (int64_t s = 0; s < S; s++) {
        extremes_sums e = extremes_start();
        for (int64_t n = 0; n < valid && n < B; n++) {
            sample_rows(x, xs, &g, s, n, t.rows, t.copies);
            for (int64_t o = 0; o < O; o++) {
                const float *k = w + (s * O + o) * C * 9;
                FOR_BLOCKS(g.H2, output_vectors, 0, {
                    vec sums[4][4];
                    conv_block(t.rows, C, H, k, b[s * O + o], i, v0, NR_, NV_, sums);
                    UNROLL
                    for (int r = 0; r < NR_; r++)
                        UNROLL
                        for (int v = 0; v < NV_; v++) extremes_add(&e, activate(sums[r][v], 1), v0 + v, &g);
                })
            }
        }
        extremes_end(&e, extremes + 2 * s);
    }
    scratch_free(&t);
    return 0;
}

/* A training pass's conv layer with ReLU, second half: the convolution again, quantized under
   the per-seed low, step, inverse (the range the quantizer took) and 2x2-pooled: the pooled
   values and codes (S, B, O, h, w), and per window `route` (S, O, B, h, windows x VEC), which
   output takes its gradient: 0..3 (row-major in the window), or 4 where none does (ReLU cut it,
   or a lane past the row's windows). With `extremes`, also conv_extremes's, in the same pass
   (the range taken before this batch may turn out to be the range with it: then this pass was
   the only one needed). Only the seeds s with only[s] set, unless `only` is NULL. */
int conv_quantize_pool_train(const float *restrict x, int64_t x_seed, int64_t x_sample, int64_t x_channel,
                             const float *restrict w, const float *restrict b, const float *restrict low,
                             const float *restrict step, const float *restrict inverse, float levels,
                             float *restrict values, float *restrict codes, uint8_t *restrict route,
                             float *restrict extremes, int64_t valid, const uint8_t *restrict only, int64_t S,
                             int64_t C, int64_t O, int64_t B, int64_t H, int64_t W) {
    const shape g = shape_of(S, C, O, B, H, W);
    const strides xs = {x_seed, x_sample, x_channel};
    sample_scratch t;
    if (!scratch_for(&g, &t)) return scratch_free(&t), 1;
    const int64_t plane = g.h * g.w, output_vectors = vectors_for(g.W2);
    const vec top = splat(levels);
    for (int64_t s = 0; s < S; s++) {
        if (only && !only[s]) continue;
        const vec lo = splat(low[s]), st = splat(step[s]), inv = splat(inverse[s]);
        extremes_sums e = extremes_start();
        for (int64_t n = 0; n < B; n++) {
            sample_rows(x, xs, &g, s, n, t.rows, t.copies);
            const int counted = extremes && n < valid;
            for (int64_t o = 0; o < O; o++) {
                const float *k = w + (s * O + o) * C * 9;
                float *values_o = values + ((s * B + n) * O + o) * plane, *codes_o = codes + ((s * B + n) * O + o) * plane;
                uint8_t *route_o = route + ((s * O + o) * B + n) * g.h * g.windows * VEC;
                FOR_BLOCKS(2 * g.h, g.vectors, 0, {
                    vec sums[4][4];
                    conv_block(t.rows, C, H, k, b[s * O + o], i, v0, NR_, NV_, sums);
                    if (counted) {
                        UNROLL
                        for (int r = 0; r < NR_; r++)
                            UNROLL
                            for (int v = 0; v < NV_; v++)
                                if (v0 + v < output_vectors) extremes_add(&e, activate(sums[r][v], 1), v0 + v, &g);
                    }
                    POOL_BLOCK(sums)
                })
                if (counted && g.H2 > 2 * g.h) { /* an odd last row: in the range, not pooled */
                    FOR_BLOCKS(1, output_vectors, 1, {
                        vec sums[4][4];
                        conv_block(t.rows, C, H, k, b[s * O + o], 2 * g.h, v0, NR_, NV_, sums);
                        UNROLL
                        for (int v = 0; v < NV_; v++) extremes_add(&e, activate(sums[0][v], 1), v0 + v, &g);
                    })
                }
            }
        }
        if (extremes) extremes_end(&e, extremes + 2 * s);
    }
    scratch_free(&t);
    return 0;
}

/* The gradients of a training pass's conv layer from the pooled values' gradient `grad` (S, B, O,
   h, w, contiguous, `total` floats) and `route`: dw (S, O, C, 3, 3), db (S, O) and, unless it is
   NULL, dx (S, B, C, H, W). A seed's weight and bias gradients are summed in a fixed order of
   its own: per lane of a row's vectors, over samples, output channels' rows and vectors in
   order, then the lanes in order. dx: per input value, over output channels, di and dj in
   order. */
int conv_backward_train(const float *restrict x, int64_t x_seed, int64_t x_sample, int64_t x_channel,
                        const float *restrict w, const float *restrict grad, int64_t total,
                        const uint8_t *restrict route, float *restrict dw, float *restrict db, float *restrict dx,
                        int64_t S, int64_t C, int64_t O, int64_t B, int64_t H, int64_t W) {
    const shape g = shape_of(S, C, O, B, H, W);
    const strides xs = {x_seed, x_sample, x_channel};
    const int64_t kept = 2 * g.h, plane = g.h * g.w;
    const int64_t lanes = VEC * (g.vectors > g.in_vectors ? g.vectors : g.in_vectors), span = VEC + lanes;
    const int64_t sums = O * (1 + 9 * C); /* per output channel: the bias, then C x 9 taps, VEC lanes each */
    sample_scratch t;
    int ok = scratch_for(&g, &t);
    float *dz = calloc(O * kept * span + VEC, sizeof(float)); /* rows of VEC zeros, then the outputs' gradient */
    float *acc = malloc(sizeof(float) * VEC * sums);
    if (!ok || !dz || !acc) {
        scratch_free(&t), free(dz), free(acc);
        return 1;
    }
    for (int64_t s = 0; s < S; s++) {
        memset(acc, 0, sizeof(float) * VEC * sums);
        const float *ws = w + s * O * C * 9;
        for (int64_t n = 0; n < B; n++) {
            sample_rows(x, xs, &g, s, n, t.rows, t.copies);
            for (int64_t o = 0; o < O; o++) { /* the outputs' gradient, through pooling and ReLU */
                const int64_t at = ((s * B + n) * O + o) * plane;
                const uint8_t *taken = route + ((s * O + o) * B + n) * g.h * g.windows * VEC;
                for (int64_t i = 0; i < g.h; i++) {
                    float *upper = dz + (o * kept + 2 * i) * span + VEC, *lower = upper + span;
                    for (int64_t u = 0; u < g.windows; u++) {
                        const int64_t from = at + i * g.w + u * VEC;
                        vec gv = splat(0.0f); /* lanes past the row's windows are routed nowhere */
                        if (from + VEC <= total) {
                            gv = load(grad + from);
                        } else {
                            for (int64_t k = 0; from + k < total; k++) gv[k] = grad[from + k];
                        }
                        const ivec to = load_bytes(taken + (i * g.windows + u) * VEC);
                        const vec zero = splat(0.0f);
                        const vec e0 = vselect(to == 0, gv, zero), o0 = vselect(to == 1, gv, zero);
                        const vec e1 = vselect(to == 2, gv, zero), o1 = vselect(to == 3, gv, zero);
                        store(upper + 2 * u * VEC, LOW_HALVES(e0, o0));
                        store(upper + (2 * u + 1) * VEC, HIGH_HALVES(e0, o0));
                        store(lower + 2 * u * VEC, LOW_HALVES(e1, o1));
                        store(lower + (2 * u + 1) * VEC, HIGH_HALVES(e1, o1));
                    }
                }
            }
            for (int64_t o = 0; o < O; o++) { /* the bias's sum beside the first input channel's taps */
                float *bias_sum = acc + o * (1 + 9 * C) * VEC;
                vec bias = load(bias_sum);
                for (int64_t c = 0; c < C; c++) {
                    float *tap = bias_sum + (1 + 9 * c) * VEC;
                    vec sum[9];
                    UNROLL
                    for (int k = 0; k < 9; k++) sum[k] = load(tap + k * VEC);
                    for (int64_t y = 0; y < kept; y++) {
                        const float *row = dz + (o * kept + y) * span + VEC;
                        const float *in[3] = {t.rows[c * H + y], t.rows[c * H + y + 1], t.rows[c * H + y + 2]};
                        for (int64_t v = 0; v < g.vectors; v++) {
                            const vec d = load(row + v * VEC);
                            if (c == 0) bias = bias + d;
                            UNROLL
                            for (int di = 0; di < 3; di++)
                                UNROLL
                                for (int dj = 0; dj < 3; dj++)
                                    sum[3 * di + dj] = sum[3 * di + dj] + d * load(in[di] + v * VEC + dj);
                        }
                    }
                    UNROLL
                    for (int k = 0; k < 9; k++) store(tap + k * VEC, sum[k]);
                }
                store(bias_sum, bias);
            }
            if (!dx) continue;
            for (int64_t c = 0; c < C; c++) { /* rows in order (blocks of several rows hold whole rows) */
                float *image = dx + ((s * B + n) * C + c) * H * W;
                FOR_BLOCKS(H, g.in_vectors, g.in_vectors > 2, {
                    vec sums[4][4];
                    UNROLL
                    for (int r = 0; r < NR_; r++)
                        UNROLL
                        for (int v = 0; v < NV_; v++) sums[r][v] = splat(0.0f);
                    for (int64_t o = 0; o < O; o++) {
                        const float *k = ws + (o * C + c) * 9;
                        UNROLL
                        for (int di = 0; di < 3; di++) {
                            RELOAD;
                            const vec k0 = splat(k[3 * di]), k1 = splat(k[3 * di + 1]), k2 = splat(k[3 * di + 2]);
                            UNROLL
                            for (int r = 0; r < NR_; r++) {
                                const int64_t y = i + r - di;
                                if (y < 0 || y >= kept) continue;
                                const float *row = dz + (o * kept + y) * span + VEC + v0 * VEC;
                                UNROLL
                                for (int v = 0; v < NV_; v++) {
                                    sums[r][v] = sums[r][v] + k0 * load(row + v * VEC);
                                    sums[r][v] = sums[r][v] + k1 * load(row + v * VEC - 1);
                                    sums[r][v] = sums[r][v] + k2 * load(row + v * VEC - 2);
                                }
                            }
                        }
                    }
                    UNROLL
                    for (int r = 0; r < NR_; r++)
                        UNROLL
                        for (int v = 0; v < NV_; v++)
                            store_row(image + (i + r) * W + (v0 + v) * VEC, sums[r][v], image + H * W);
                })
            }
        }
        for (int64_t o = 0; o < O; o++)
            for (int64_t k = 0; k < 1 + 9 * C; k++) {
                const vec sum = load(acc + (o * (1 + 9 * C) + k) * VEC);
                float total_sum = 0.0f;
                for (int j = 0; j < VEC; j++) total_sum = total_sum + sum[j];
                if (k == 0)
                    db[s * O + o] = total_sum;
                else
                    dw[(s * O + o) * C * 9 + k - 1] = total_sum;
            }
    }
    scratch_free(&t), free(dz), free(acc);
    return 0;
}
"""

FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-Wno-psabi", "-shared", "-fPIC"]
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p


def _cpu_identity() -> str:
    """What -march=native compiles for: the machine and, on Linux, the CPU's feature flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()} {flags}"


def cache_folder() -> Path:
    """$IBRAY_KERNEL_CACHE, else ~/.cache/ibray/kernels."""
    override = os.environ.get("IBRAY_KERNEL_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "ibray" / "kernels"


def _compile(compiler: str, target: Path) -> str | None:
    """Build the library at `target` (atomically: trials on one node may race); None when
    built, else why not."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        source = Path(work) / "conv_kernels.c"
        source.write_text(SOURCE)
        built = Path(work) / target.name
        why = "no output"
        for extra in (["-march=native"], []):  # some compilers (or CPUs) refuse -march=native
            try:
                done = subprocess.run(
                    [compiler, *FLAGS, *extra, str(source), "-o", str(built)], capture_output=True, text=True
                )
            except OSError as error:
                return f"{compiler} could not run: {error}"

            if done.returncode == 0:
                os.replace(built, target)
                return None
            said = (done.stderr or done.stdout).strip().splitlines()
            errors = [line for line in said if "error" in line] or said[-1:] or [f"exit status {done.returncode}"]
            why = errors[0].strip()
        return f"{compiler} failed: {why}"


class _Library:
    def __init__(self, handle: ctypes.CDLL) -> None:
        def bind(name: str, arguments: list, result=ctypes.c_int):
            function = getattr(handle, name)
            function.argtypes, function.restype = arguments, result
            return function

        self.conv_forward = bind("conv3x3_forward", [_PTR] * 4 + [_I64] * 8)
        self.conv_backward = bind("conv3x3_backward", [_PTR] * 6 + [_I64] * 7 + [_PTR])
        self.pool_forward = bind("pool2x2_forward", [_PTR] * 3 + [_I64] * 3, None)
        self.quantize_pool = bind("quantize_pool2x2_forward", [_PTR] * 4 + [ctypes.c_float] + [_PTR] * 3 + [_I64] * 4)
        self.pool_backward = bind("pool2x2_backward", [_PTR] * 3 + [_I64] * 3, None)
        self.conv_quantize_pool = bind(
            "conv_quantize_pool", [_PTR] + [_I64] * 3 + [_PTR] * 5 + [ctypes.c_float, _I64] + [_PTR] * 2 + [_I64] * 6
        )
        self.conv_extremes = bind("conv_extremes", [_PTR] + [_I64] * 3 + [_PTR] * 3 + [_I64] * 7)
        self.conv_quantize_pool_train = bind(
            "conv_quantize_pool_train",
            [_PTR] + [_I64] * 3 + [_PTR] * 5 + [ctypes.c_float] + [_PTR] * 4 + [_I64, _PTR] + [_I64] * 6,
        )
        self.conv_backward_train = bind(
            "conv_backward_train", [_PTR] + [_I64] * 3 + [_PTR] * 2 + [_I64] + [_PTR] * 4 + [_I64] * 6
        )


def _checked(status: int) -> None:
    """The kernels that take scratch memory return 1 where malloc failed."""
    if status:
        raise MemoryError("a conv kernel's scratch memory could not be allocated")


_lock = threading.Lock()
_loaded: list = []  # [library or None], once tried


def library() -> _Library | None:
    """The compiled kernels, built on first use; None where they cannot be (then one warning)."""
    with _lock:
        if _loaded:
            return _loaded[0]
        why = None
        if os.environ.get("IBRAY_CONV_KERNELS", "c") == "torch":
            why = "IBRAY_CONV_KERNELS=torch"
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if why is None and compiler is None:
            why = "no C compiler found (cc, gcc or clang; or set CC)"
        lib = None
        if why is None:
            key = hashlib.sha256("\n".join([SOURCE, " ".join(FLAGS), compiler, _cpu_identity()]).encode()).hexdigest()
            target = cache_folder() / f"ibray_conv_{key[:16]}.so"
            if not target.exists():
                why = _compile(compiler, target)
            if why is None:
                try:
                    lib = _Library(ctypes.CDLL(str(target)))
                except OSError as error:
                    why = f"loading {target} failed: {error}"
        if lib is None and why != "IBRAY_CONV_KERNELS=torch":
            warnings.warn(
                f"ibray: the conv network's C kernels are unavailable ({why}); it runs its torch path: the "
                "same forward values, gradients equal to within float32 rounding, several times slower",
                stacklevel=2,
            )
        _loaded.append(lib)
        return lib


def _address(tensor: torch.Tensor) -> int:
    return tensor.data_ptr()


def _usable(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and library() is not None


# -- torch references (what a GPU, or a machine without a C compiler, runs) --------------------


def reference_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (S or 1, C, B, H, W), weight (S, O, C, 3, 3), bias (S, O) -> (S, O, B, H-2, W-2), in the
    C kernel's order and rounding (a multiply, then an add, per tap)."""
    seeds, outs, channels = weight.shape[:3]
    side_h, side_w = x.shape[-2] - 2, x.shape[-1] - 2
    out = bias.view(seeds, outs, 1, 1, 1).expand(seeds, outs, x.shape[2], side_h, side_w)
    for c in range(channels):
        image = x[:, c].unsqueeze(1)  # (S or 1, 1, B, H, W)
        for di in range(3):
            for dj in range(3):
                tap = weight[:, :, c, di, dj].view(seeds, outs, 1, 1, 1)
                out = out + tap * image[..., di : di + side_h, dj : dj + side_w]
    return out


def reference_pool2x2(values: torch.Tensor) -> torch.Tensor:
    """2x2 max-pooling of (..., H, W) by torch's kernel (first maximum takes the gradient)."""
    lead = values.shape[:-2]
    pooled = torch.nn.functional.max_pool2d(values.reshape(-1, *values.shape[-2:]), 2)
    return pooled.view(*lead, *pooled.shape[-2:])


# -- autograd functions over the C kernels -----------------------------------------------------


def _shape(x: torch.Tensor, weight: torch.Tensor) -> list[int]:
    """The kernels' (S, shared, C, O, B, H, W)."""
    seeds, outs, channels = weight.shape[:3]
    _, _, batch, side_h, side_w = x.shape
    return [seeds, int(x.shape[0] == 1 and seeds > 1), channels, outs, batch, side_h, side_w]


class _Conv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> torch.Tensor:
        x, weight, bias = x.contiguous(), weight.contiguous(), bias.contiguous()
        seeds, _, _, outs, batch, side_h, side_w = shape = _shape(x, weight)
        out = torch.empty(seeds, outs, batch, side_h - 2, side_w - 2)
        _checked(
            library().conv_forward(
                _address(x),
                _address(weight),
                _address(bias),
                _address(out),
                *shape,
                int(relu),
            )
        )
        ctx.save_for_backward(x, weight, out if relu else None)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, relu_out = ctx.saved_tensors
        grad = grad.contiguous()
        seeds, shared, _, outs, *_ = shape = _shape(x, weight)
        d_weight = torch.empty_like(weight)
        d_bias = torch.empty(seeds, outs)
        d_x = torch.empty_like(x) if ctx.needs_input_grad[0] and not shared else None
        _checked(
            library().conv_backward(
                _address(x), _address(weight), _address(grad), _address(d_weight), _address(d_bias),
                _address(d_x) if d_x is not None else None, *shape,
                _address(relu_out) if relu_out is not None else None,
            )
        )  # fmt: skip
        if ctx.needs_input_grad[0] and shared:  # x shared by all seeds: the seeds' input gradients add up
            leaf = x.detach().requires_grad_()
            through = grad if relu_out is None else grad * (relu_out > 0)
            d_x = torch.autograd.grad(reference_conv3x3(leaf, weight.detach(), d_bias), leaf, through)[0]
        return d_x, d_weight, d_bias, None


class _Pool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: torch.Tensor) -> torch.Tensor:
        values = values.contiguous()
        *lead, side_h, side_w = values.shape
        planes = values.numel() // (side_h * side_w)
        out = torch.empty(*lead, side_h // 2, side_w // 2)
        which = torch.empty(out.shape, dtype=torch.uint8)
        library().pool_forward(_address(values), _address(out), _address(which), planes, side_h, side_w)
        ctx.save_for_backward(which)
        ctx.shape = values.shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (which,) = ctx.saved_tensors
        grad = grad.contiguous()
        *_, side_h, side_w = ctx.shape
        d_values = torch.empty(ctx.shape)
        library().pool_backward(
            _address(grad), _address(which), _address(d_values), which.numel() // which.shape[-1] // which.shape[-2],
            side_h, side_w,
        )  # fmt: skip
        return d_values


class _QuantizePool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, low, step, inverse, levels):
        values = values.contiguous()
        seeds, *_, side_h, side_w = values.shape
        planes = values.numel() // (seeds * side_h * side_w)
        out = torch.empty(*values.shape[:-2], side_h // 2, side_w // 2)
        codes = torch.empty_like(out)
        which = torch.empty(out.shape, dtype=torch.uint8)
        low, step, inverse = (t.contiguous().float() for t in (low, step, inverse))
        _checked(
            library().quantize_pool(
                _address(values), _address(low), _address(step), _address(inverse), float(levels),
                _address(out), _address(codes), _address(which), seeds, planes, side_h, side_w,
            )
        )  # fmt: skip
        ctx.save_for_backward(which)
        ctx.shape = values.shape
        ctx.mark_non_differentiable(codes)
        return out, codes

    @staticmethod
    def backward(ctx, grad, _codes_grad):
        return _Pool2x2.backward(ctx, grad), None, None, None, None


def quantize_pool2x2(values: torch.Tensor, quantizer) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantizer` (ibray.quantization.Quantizer, its ranges already updated from `values`) on
    values (S, C, B, H, W), then 2x2 max-pooling: (pooled quantized values, their codes). The
    gradient is the straight-through one, routed to each window's first maximum of the quantized
    values: the same numbers as quantizing, then `pool2x2`, bit for bit (tested)."""
    low, step, inverse = quantizer.grid(values.dim())
    if _usable(values, low, step, inverse):
        return _QuantizePool2x2.apply(values, low.reshape(-1), step.reshape(-1), inverse.reshape(-1), quantizer.levels)
    with torch.no_grad():
        quantized, _ = quantizer._quantize(values)  # the quantizer's own arithmetic, not a copy
    pooled = pool2x2(straight_through(values, quantized))
    return pooled, quantizer.codes_of(pooled.detach())


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """3x3 'valid' convolution with per-seed kernels: x (S or 1, C, B, H, W), channels first,
    weight (S, O, C, 3, 3), bias (S, O) -> (S, O, B, H-2, W-2), then ReLU with `relu` (in the
    same pass: the same values and gradient as torch.relu after it). The C kernel on the CPU,
    the torch reference elsewhere (same forward values)."""
    if _usable(x, weight, bias):
        return _Conv3x3.apply(x, weight, bias, relu)
    out = reference_conv3x3(x, weight, bias)
    return torch.relu(out) if relu else out


def _input_strides(x: torch.Tensor, seeds: int) -> tuple[torch.Tensor, list[int]]:
    """x (S or 1, C, B, H, W) with its planes' rows contiguous, and the kernels' strides of it
    (seed, 0 where one x serves every seed; sample; channel)."""
    if x.stride(-1) != 1 or x.stride(-2) != x.shape[-1]:
        x = x.contiguous()
    return x, [x.stride(0) if x.shape[0] > 1 else 0, x.stride(2), x.stride(1)]


def _pooled_lanes(side_w: int) -> int:
    """The fused kernels' lanes of a row of pooling windows (a multiple of 8)."""
    return -(-((side_w - 2 + 1) // 2) // 8) * 8


def _range_bits(quantizer) -> np.ndarray:
    """The quantizer's low and high, (2, S), as their bits (NumPy: a few microseconds, where each
    torch call on so small a tensor costs tens)."""
    return np.stack([quantizer.low.numpy(), quantizer.high.numpy()]).view(np.int32)


_helpers: list[ThreadPoolExecutor] = []  # one helper thread, started on first use


def _by_seeds(call, seeds: int, threads: int) -> None:
    """`call(first, stop)` for seeds first..stop-1: all of them on this thread, or with
    `threads` 2 or more, the first half here and the second on a helper thread at once (ctypes
    lets the GIL go for the call). A training pass's kernels loop over the seeds outermost and
    carry nothing from one seed to the next, so a seed's numbers are the same whichever half it
    falls in (tested)."""
    if threads < 2 or seeds < 2:
        call(0, seeds)
        return
    with _lock:
        if not _helpers:
            _helpers.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="ibray-conv"))
    half = (seeds + 1) // 2
    second = _helpers[0].submit(call, half, seeds)
    try:
        call(0, half)
    finally:
        second.result()


def _seeds_input(x: torch.Tensor, strides: list[int], part: slice) -> torch.Tensor:
    """The input of the seeds in `part`: x itself where one x serves every seed (seed stride 0)."""
    return x if strides[0] == 0 else x[part]


class _ConvQuantizePool(torch.autograd.Function):
    """A training pass's conv layer: convolution with ReLU, the quantizer's range update,
    quantization and 2x2 pooling in C. With the range tracked over the epoch (the default), one
    pass quantizes under the range so far and finds the batch's extremes; a second, computing the
    convolution again rather than keeping it, runs only for the seeds whose range the batch moved
    (most batches move none). With a per-batch range, one pass finds the range and one quantizes.
    The backward pass routes each window's gradient to its first maximum, through ReLU, into the
    convolution's gradients in one pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, quantizer, valid, threads):
        x, strides, weight, bias, shape, values, codes = _conv_pass_inputs(x, weight, bias)
        seeds, _, outs, batch, _, side_w = shape
        valid = batch if valid is None else valid
        route = torch.empty(seeds, outs, batch, values.shape[-2], _pooled_lanes(side_w), dtype=torch.uint8)
        extremes = torch.empty(seeds, 2)
        lib = library()

        def quantize_pool(with_extremes=False, only=None):
            low, step, inverse = (t.reshape(-1).contiguous() for t in quantizer.grid(1))

            def call(first: int, stop: int) -> None:
                part = slice(first, stop)
                _checked(
                    lib.conv_quantize_pool_train(
                        _address(_seeds_input(x, strides, part)), *strides, _address(weight[part]),
                        _address(bias[part]), _address(low[part]), _address(step[part]), _address(inverse[part]),
                        float(quantizer.levels), _address(values[part]), _address(codes[part]), _address(route[part]),
                        _address(extremes[part]) if with_extremes else None, valid,
                        _address(only[part]) if only is not None else None, stop - first, *shape[1:],
                    )
                )  # fmt: skip

            _by_seeds(call, seeds, threads)

        if not quantizer.training:  # the ranges stand as they are
            quantize_pool()
        elif quantizer.tracking == "epoch":
            # Most of an epoch's batches leave its min/max range as it was: quantize under the range
            # so far, finding the batch's extremes in the same pass, and again (the seeds whose range
            # the batch moved, to the last bit) only where it moved: the same numbers as with the
            # range first. (An epoch's first batch, with no range yet, is quantized twice.)
            before = _range_bits(quantizer)
            quantize_pool(with_extremes=True)
            quantizer.observe(extremes)  # their minima and maxima: the batch's (valid samples only)
            moved = (_range_bits(quantizer) != before).any(axis=0)
            if moved.any():
                quantize_pool(only=torch.from_numpy(moved.astype(np.uint8)))
        else:

            def call(first: int, stop: int) -> None:
                part = slice(first, stop)
                _checked(
                    lib.conv_extremes(
                        _address(_seeds_input(x, strides, part)), *strides, _address(weight[part]),
                        _address(bias[part]), _address(extremes[part]), stop - first, *shape[1:], valid,
                    )
                )  # fmt: skip

            _by_seeds(call, seeds, threads)
            quantizer.observe(extremes)
            quantize_pool()
        ctx.save_for_backward(x, weight, route)
        ctx.threads = threads
        ctx.mark_non_differentiable(codes)
        ctx.set_materialize_grads(False)  # the codes' gradient: not a tensor of zeros the size of the codes
        return values.transpose(1, 2), codes.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad, _codes_grad):
        x, weight, route = ctx.saved_tensors
        seeds, outs, channels = weight.shape[:3]
        _, _, batch, side_h, side_w = x.shape
        if grad is None:  # the values took no part in the loss
            grad = torch.zeros(seeds, outs, batch, (side_h - 2) // 2, (side_w - 2) // 2)
        grad = grad.transpose(1, 2).contiguous()  # (S, B, O, h, w)
        d_weight = torch.empty_like(weight)
        d_bias = torch.empty(seeds, outs)
        d_x = torch.empty(seeds, batch, channels, side_h, side_w) if ctx.needs_input_grad[0] else None
        strides = _input_strides(x, seeds)[1]
        lib = library()

        def call(first: int, stop: int) -> None:
            part = slice(first, stop)
            _checked(
                lib.conv_backward_train(
                    _address(_seeds_input(x, strides, part)), *strides, _address(weight[part]),
                    _address(grad[part]), grad[part].numel(), _address(route[part]), _address(d_weight[part]),
                    _address(d_bias[part]), _address(d_x[part]) if d_x is not None else None, stop - first,
                    channels, outs, batch, side_h, side_w,
                )
            )  # fmt: skip

        _by_seeds(call, seeds, ctx.threads)
        return d_x.transpose(1, 2) if d_x is not None else None, d_weight, d_bias, None, None, None


def conv3x3_quantize_pool(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    relu: bool,
    quantizer,
    valid: int | None = None,
    threads: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv layer of the study's network in one go: `conv3x3` (with `relu`), then the
    quantizer's range update from its outputs (in training mode; only the first `valid` samples
    count), then `quantize_pool2x2`: (pooled quantized values, their codes), (S, O, B, (H-2)/2,
    (W-2)/2), the same numbers as those steps one by one (tested), without the full-size output
    kept. A measuring pass (no gradient, ranges fixed) is one C pass that computes only the
    outputs pooling keeps; training is one or two (see _ConvQuantizePool) and one backward, each
    on `threads` threads (1, or 2: the seeds in two halves at once, the same numbers)."""
    seeds, outs = weight.shape[:2]
    if _usable(x, weight, bias):
        differentiated = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias))
        if not quantizer.training and not differentiated:
            return _measuring_pass(x, weight, bias, relu, quantizer)
        if relu and (x.shape[0] == seeds or not x.requires_grad):  # not an x shared by the seeds with a gradient
            return _ConvQuantizePool.apply(x, weight, bias, quantizer, valid, threads)
    out = conv3x3(x, weight, bias, relu)
    quantizer.observe(out, valid, batch_dim=2)
    return quantize_pool2x2(out, quantizer)


@torch.no_grad()
def _measuring_pass(x, weight, bias, relu, quantizer):
    """`conv3x3_quantize_pool` without a gradient and with the ranges fixed, in one C pass."""
    x, strides, weight, bias, shape, values, codes = _conv_pass_inputs(x, weight, bias)
    low, step, inverse = (t.reshape(-1).contiguous() for t in quantizer.grid(1))
    _checked(
        library().conv_quantize_pool(
            _address(x), *strides, _address(weight), _address(bias), _address(low), _address(step),
            _address(inverse), float(quantizer.levels), int(relu), _address(values), _address(codes), *shape,
        )
    )  # fmt: skip
    return values.transpose(1, 2), codes.transpose(1, 2)


class _ConvPass(NamedTuple):
    """What a fused conv layer's C passes take."""

    x: torch.Tensor  # the input as the kernels read it
    strides: list[int]  # its strides: seed (0 where one input serves every seed), sample, channel
    weight: torch.Tensor  # (S, O, C, 3, 3), contiguous
    bias: torch.Tensor  # (S, O), contiguous
    shape: list[int]  # seeds, channels, outs, batch, side_h, side_w
    values: torch.Tensor  # the pooled quantized values to fill, (S, B, O, (H-2)/2, (W-2)/2)
    codes: torch.Tensor  # their codes, the same shape


def _conv_pass_inputs(x, weight, bias) -> _ConvPass:
    seeds, outs, channels = weight.shape[:3]
    _, _, batch, side_h, side_w = x.shape
    x, strides = _input_strides(x, seeds)
    values = torch.empty(seeds, batch, outs, (side_h - 2) // 2, (side_w - 2) // 2)
    shape = [seeds, channels, outs, batch, side_h, side_w]
    return _ConvPass(x, strides, weight.contiguous(), bias.contiguous(), shape, values, torch.empty_like(values))


def pool2x2(values: torch.Tensor) -> torch.Tensor:
    """2x2 max-pooling of (..., H, W) (odd sides: the last row or column left out); a window's
    gradient goes to its first maximum (row-major)."""
    if _usable(values):
        return _Pool2x2.apply(values)
    return reference_pool2x2(values)
