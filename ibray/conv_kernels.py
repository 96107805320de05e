"""The conv network's 3x3 convolutions and 2x2 max-pooling as direct loops in C, batched over seeds.

The study's conv layers are tiny (1 or 2 channels in, 2 out, 3x3): as matrix products they need
every pixel's nine neighbours copied out as patches, nine times the image, for 18 multiply-adds
per output pair, and torch's pooling kernel spends more on indexing 5,000 small planes than on
the maxima. A direct loop reads the image once, keeps a row of outputs in registers and does no
copying. The source below is compiled on first use by the system's C compiler (`cc`, a fraction
of a second) into a cache folder and called through ctypes, which releases the GIL, so the
measuring thread goes on beside it.

Arithmetic, defined so that it does not depend on a seed's slot or its batch mates:
- forward: out = bias, then + w[c, di, dj] * x[c, i + di, j + dj] for c, di, dj in that order,
  each product and each sum rounded to float32 (compiled with -ffp-contract=off: no fused
  multiply-add). `reference_conv3x3` computes the same in torch, bit for bit (tested), and is
  what a GPU runs, so conv forward values agree between CPU and GPU;
- weight and bias gradients: one running float32 sum per output column j over (sample, row)
  in order, then the columns summed in order; the input gradient summed over (out channel, di,
  dj) in order. Sums over the same numbers as autograd's, in another order: equal to within
  float32 rounding, not bit for bit (tested against autograd of the reference);
- max-pooling routes a window's gradient to its first maximum in row-major order, as torch's
  `max_pool2d` (tested).

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
from pathlib import Path

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
   by every seed) or S. With `relu`, ReLU applied (x < 0 ? 0 : x). With `codes`, the outputs are
   quantized under the per-seed low, step, inverse and levels and 2x2-pooled as quantize_pool_plane
   does (the measuring pass: no gradient, fixed ranges): out and codes (S, O, B, (H-2)/2, (W-2)/2).
   The plane is done in blocks of
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
                    int64_t S, int64_t shared, int64_t C, int64_t O, int64_t B, int64_t H, int64_t W, int64_t relu,
                    const float *restrict low, const float *restrict step, const float *restrict inverse, float levels,
                    float *restrict codes) {
    float *wide = malloc(sizeof(float) * ((H - 2) * W + 4 * W));
    if (!wide) return 1;
    float *buffer = wide + (H - 2) * W;
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
                if (codes) { /* quantized and pooled straight away: out and codes are (S, O, B, H2/2, W2/2) */
                    const int64_t at = ((s * O + o) * B + n) * (H2 / 2) * (W2 / 2);
                    quantize_pool_plane(wide, W, H2, W2, low[s], step[s], inverse[s], levels, out + at, codes + at,
                                        NULL, buffer);
                    continue;
                }
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

        self.conv_forward = bind("conv3x3_forward", [_PTR] * 4 + [_I64] * 8 + [_PTR] * 3 + [ctypes.c_float, _PTR])
        self.conv_backward = bind("conv3x3_backward", [_PTR] * 6 + [_I64] * 7 + [_PTR])
        self.pool_forward = bind("pool2x2_forward", [_PTR] * 3 + [_I64] * 3, None)
        self.quantize_pool = bind("quantize_pool2x2_forward", [_PTR] * 4 + [ctypes.c_float] + [_PTR] * 3 + [_I64] * 4)
        self.pool_backward = bind("pool2x2_backward", [_PTR] * 3 + [_I64] * 3, None)


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
                None,
                None,
                None,
                0.0,
                None,
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


@torch.no_grad()
def conv3x3_quantize_pool(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool, quantizer
) -> tuple[torch.Tensor, torch.Tensor]:
    """A measuring pass's conv layer in one pass (no gradient, the quantizer's ranges as they
    stand): `conv3x3`, then `quantize_pool2x2`, without the full-size output ever written:
    (pooled quantized values, their codes), (S, O, B, (H-2)/2, (W-2)/2). The same numbers as the
    two steps (tested)."""
    seeds, outs = weight.shape[:2]
    low, step, inverse = (t.reshape(-1).contiguous() for t in quantizer.grid(1))
    if not _usable(x, weight, bias, low, step, inverse):
        return quantize_pool2x2(conv3x3(x, weight, bias, relu), quantizer)
    x, weight, bias = x.contiguous(), weight.contiguous(), bias.contiguous()
    shape = _shape(x, weight)
    pooled = (seeds, outs, shape[4], (shape[5] - 2) // 2, (shape[6] - 2) // 2)
    out, codes = torch.empty(pooled), torch.empty(pooled)
    _checked(
        library().conv_forward(
            _address(x), _address(weight), _address(bias), _address(out), *shape, int(relu),
            _address(low), _address(step), _address(inverse), float(quantizer.levels), _address(codes),
        )
    )  # fmt: skip
    return out, codes


def pool2x2(values: torch.Tensor) -> torch.Tensor:
    """2x2 max-pooling of (..., H, W) (odd sides: the last row or column left out); a window's
    gradient goes to its first maximum (row-major)."""
    if _usable(values):
        return _Pool2x2.apply(values)
    return reference_pool2x2(values)
