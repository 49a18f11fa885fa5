"""Int8 inference: dynamic row quantisation, the int8 linear layer (uint8 x int8 -> int32) and the int8 embedding.

Weights (offline, once):    symmetric, per output channel (per row of W (Cout, Cin)):
    s_w[o] = max_k |W[o, k]| / 127            (1 when the row is all zero)
    q_w[o, k] = clip(round(W[o, k] / s_w[o]), -127, 127)       int8; -128 is never used, so the range is symmetric
    W^[o, k] = s_w[o] q_w[o, k]
Activations (at run time, per row n of x (N, Cin), asymmetric, uint8):
    lo = min(0, min_k x[n, k]),  hi = max(0, max_k x[n, k])   (the range always holds 0 ...)
    s_x[n] = (hi - lo) / 255                  (at least float32's smallest normal, so 1/s_x is finite)
    z[n] = round(-lo / s_x[n])                in [0, 255]: the zero point, an integer (... and 0 is exact: padding
                                              and ReLU zeros stay exactly zero)
    q_x[n, k] = clip(round(x[n, k] / s_x[n]) + z[n], 0, 255)    uint8
    x^[n, k] = s_x[n] (q_x[n, k] - z[n])
The product, in integers then one scaling per output:
    acc[n, o] = sum_k q_x[n, k] q_w[o, k]                          int32 (exact: |acc| <= 255 * 127 * Cin < 2^31
                                                                   for Cin <= MAX_CIN = 66311)
    y[n, o]   = float32(acc[n, o] - z[n] r[o]) * (s_x[n] s_w[o]) + b[o]    with r[o] = sum_k q_w[o, k] (precomputed)
              = x^[n] . W^[o] + b[o]   (up to float32 rounding), since sum_k (q_x - z) q_w = acc - z r.
Embedding (V, C) table: the word-embedding rows quantised exactly as weight rows (symmetric, per row):
    out[p, :] = s_e[ids[p]] * q_e[ids[p], :]      float32
The MLM head's vocabulary projection is tied to that table: the same int8 rows and per-row scales are its int8
weight with per-output-channel scales, so a tied model stays tied after quantisation.

Why uint8 activations with a zero point rather than int8 symmetric ones: AVX-512 VNNI's `vpdpbusd` multiplies
UNSIGNED bytes by SIGNED bytes, so uint8 x int8 is what the instruction takes as it is (int8 activations would
need a +128 shift and the same correction term anyway); and the asymmetric range spends all 256 levels on
[lo, hi]: BERT's GELU outputs lie in [-0.17, max], where a symmetric range [-max, max] would waste half the
levels and double the step s_x (and the error below). The zero point costs one term z[n] r[o] per output.

Error bound (derived; `linear_error_bound` computes it per element, the tests assert it):
    x.w - x^.W^ = (x - x^).W^ + x.(w - W^)   exactly, so with the rounding bounds
    |x - x^| <= s_x (1/2 + SLACK),  |w - W^| <= s_w (1/2 + SLACK)
    |y - (x.w + b)| <= s_x (1/2 + SLACK) sum_k |W^[o, k]| + s_w (1/2 + SLACK) sum_k |x[n, k]|
                       + 5 u (sum_k |x^[n, k]| |W^[o, k]| + |b[o]|)                           u = 2^-24
    Rounding to nearest gives 1/2; SLACK = 2^-13 covers the float32 arithmetic of the quantiser (x * (1/s_x) is
    off by <= 2 u |x / s_x| <= 510 u, the + 0.5 before the floor by 2^-16, the zero point likewise, and the grid
    [-z s_x, (255 - z) s_x] may miss [lo, hi] by 2 u (hi - lo): together < 1e-4 < 2^-13) and the weights' float32
    scale. Saturation never adds error: the grid covers [lo, hi] up to those terms, and q_w never exceeds 127
    because s_w is chosen from the row's maximum. The last term is the float32 epilogue: the int32 -> float32
    conversion, the product s_x s_w, the product with it (3 u) and the bias add (u), all relative.
    Embedding rows: |e - out| <= s_e (1/2 + SLACK) + u |out|.

Versions:
    quantize_weight_ref / quantize_rows_ref   NumPy, written for reading (the weight quantiser IS the NumPy one:
                                               it runs once, offline)
    int8_matmul_ref                            int64 NumPy product: the exact integer result
    int8_linear_ref                            float64 NumPy of the quantised computation (the maths above)
    quantize_rows_cpu                          Numba, prange over rows; the row's min and max by LLVM's
                                               llvm.minimum / llvm.maximum (they vectorise; NaN propagates), the
                                               quantising loop vectorised; writes the padded buffer the GEMM reads
    int8 GEMM, CPU "vnni"                      AVX-512 VNNI: `vpdpbusd` reached through an LLVM intrinsic
                                               (`llvm.x86.avx512.vpdpbusd.512`, declared by `_vnni_tile` below).
                                               A 6 x 64 register tile (24 zmm accumulators of 16 int32 lanes): per
                                               4 steps of k, 4 vector loads of packed weights, 6 broadcasts of 4
                                               activation bytes, 24 vpdpbusd (each 64 multiply-adds). The weights
                                               are packed once (`pack_weight`) so that 16 output channels x 4 k are
                                               one 64-byte vector. Tiles are shared by the threads in contiguous
                                               runs (a packed weight panel reused over the row blocks of a 1 MiB
                                               activation panel); a whole tile is dequantised in its registers
                                               and stored as float32 (`_vnni_tile_dequant`; measured: +10-60% GOP
                                               per CPU-second over storing the int32 tile and dequantising it
                                               from memory), an edge tile through memory (`_store_row`).
                                               Measured (one core, machine shared, best of 40): ~455 GOP/s at
                                               (1024, 768) x (768, 3072), ~860 GOP/s on 2 cores; numpy's float32
                                               sgemm reaches ~280 GFLOP/s on 2 cores here.
    int8 GEMM, CPU "portable"                  any CPU: Numba dot products over the plain (Cout, Cin) int8
                                               weight, 2 rows x 4 outputs at a time, int32 sums (LLVM vectorises
                                               them with what the CPU has: vpmaddwd on AVX2 / AVX-512BW,
                                               vpdpwssd where VNNI is there)
    int8_embedding_cpu                         Numba, prange over positions
    *_cuda                                     numba.cuda: a row-quantiser (one block per row, shared-memory
                                               min/max), a tiled shared-memory GEMM with int32 products summed in
                                               int32 (numba-cuda does not expose `dp4a`, so each product is an
                                               int32 multiply-add), the same epilogue, and the embedding lookup
The CPU kernel is chosen by `cpu_kernel()`: "vnni" where Numba's target CPU has avx512vnni (llvmlite's host
features, or NUMBA_CPU_FEATURES when set), else "portable"; MINIDISTIL_INT8_KERNEL=portable|vnni overrides it,
and every entry point takes kernel=... . Both give identical integers.

Inference only: there is no backward (the model's int8 op refuses one); the forwards return their output alone.
"""
from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from . import _checks, _cuda

MAX_CIN = (2**31 - 1) // (255 * 127)      # 66311: the longest reduction whose int32 sum cannot overflow
SLACK = 2.0**-13                           # float32 arithmetic of the quantisers, see the docstring
U32 = 2.0**-24                             # float32 unit roundoff
MR = 6                                     # rows of the VNNI register tile
NR = 4                                     # zmm vectors of 16 output channels per tile
TILE_COLS = 16 * NR                        # 64 output channels per tile
KGROUP = 4                                 # bytes of k per int32 lane of vpdpbusd
PANEL_BYTES = 1024 * 1024                  # activation rows walked together by the VNNI GEMM (an L2 of 1 MB)
_FLT_MIN = np.float32(np.finfo(np.float32).tiny)
_F0 = np.float32(0.0)
_F255 = np.float32(255.0)
_HALF = np.float32(0.5)


class Int8Weight(NamedTuple):
    """A linear layer's weight, quantised (built by `prepare_weight` / `quantize_weight`).

    q        (Cout, Cin) int8, the symmetric per-output-channel weight
    scale    (Cout,) float32 s_w
    row_sum  (Cout,) int32 r[o] = sum_k q[o, k], for the activations' zero point
    packed   VNNI layout of q, 1-d int8 (64-byte aligned), or None (on a device): for each block of 64 output
             channels, for each group of 4 k, 4 vectors x 16 channels x 4 bytes (see `pack_weight`); Cout padded
             to a multiple of 64 and Cin to a multiple of 4 with zeros
    """
    q: np.ndarray
    scale: np.ndarray
    row_sum: np.ndarray
    packed: np.ndarray | None


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference


def quantize_weight_ref(w):
    """W (Cout, Cin) float -> (q int8 (Cout, Cin), s_w float32 (Cout,)): symmetric, per output channel."""
    w64 = np.asarray(w, dtype=np.float64)
    amax = np.abs(w64).max(axis=-1, initial=0.0)                       # (Cout,)
    scale = (amax / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0                                            # an all-zero row: any scale, q = 0
    q = np.clip(np.rint(w64 / scale.astype(np.float64)[:, None]), -127, 127).astype(np.int8)
    return q, scale


def quantize_rows_ref(x):
    """x (N, K) float32 -> (q uint8 (N, K), s_x float32 (N,), z int32 (N,)), asymmetric per row, in the float32
    operations of the kernels (so their results agree with this one exactly)."""
    x = np.asarray(x, dtype=np.float32)
    lo = np.minimum(x.min(axis=1, initial=np.inf), _F0)                # (N,)
    hi = np.maximum(x.max(axis=1, initial=-np.inf), _F0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        s = (hi - lo) / _F255                                          # s_x = (hi - lo) / 255
        bad = ~np.isfinite(s)                          # NaN or inf in the row, or a range beyond float32
        s = np.maximum(s, _FLT_MIN).astype(np.float32)
        s[bad] = np.nan                                                # ... gives NaN outputs
        inv = (np.float32(1.0) / s).astype(np.float32)
        z = np.clip(np.floor(-lo * inv + _HALF), _F0, _F255)           # zero point round(-lo / s_x)
        v = np.clip(np.floor(x * inv[:, None] + _HALF) + z[:, None], _F0, _F255)
    v = np.where(np.isnan(v), _F0, v)
    z = np.where(np.isnan(z), _F0, z)
    return v.astype(np.uint8), s, z.astype(np.int32)


def int8_matmul_ref(qx, qw):
    """acc (N, Cout) int64 = qx (N, K) uint8 @ qw (Cout, K)^T int8: the exact integer product."""
    return np.asarray(qx, dtype=np.int64) @ np.asarray(qw, dtype=np.int64).T


def int8_linear_ref(x, q, scale, b=None):
    """float64 y (N, Cout) of the quantised linear layer: rows of x quantised as quantize_rows_ref, the integer
    product exact, then y = (acc - z r) s_x s_w + b in float64."""
    qx, sx, z = quantize_rows_ref(x)
    acc = int8_matmul_ref(qx, q)                                       # (N, Cout) exact
    r = np.asarray(q, dtype=np.int64).sum(axis=1)                      # (Cout,)
    y = (acc - z.astype(np.int64)[:, None] * r[None, :]) * (sx.astype(np.float64)[:, None]
                                                          * scale.astype(np.float64)[None, :])
    return y + (0.0 if b is None else np.asarray(b, dtype=np.float64))


def int8_embedding_ref(ids, q, scale):
    """out (*ids.shape, C) float32 = s_e[ids] * q_e[ids]."""
    ids = np.asarray(ids)
    return (scale[ids][..., None] * q[ids].astype(np.float32)).astype(np.float32)


def dequantize(q, scale):
    """W^ = s q (row scales), float32."""
    return (np.asarray(scale, dtype=np.float32)[:, None] * np.asarray(q, dtype=np.float32)).astype(np.float32)


def linear_error_bound(x, q, scale, b=None):
    """The derived bound (module docstring) on |y - (x W^T + b)| for every output (N, Cout), float64, for the float
    weight W that q, scale came from. x (N, Cin) float32."""
    x64 = np.asarray(x, dtype=np.float64)
    qx, sx, z = quantize_rows_ref(x)
    xh = sx.astype(np.float64)[:, None] * (qx.astype(np.float64) - z[:, None])          # x^ (N, Cin)
    wh = np.asarray(scale, dtype=np.float64)[:, None] * np.asarray(q, dtype=np.float64)   # W^ (Cout, Cin)
    half = 0.5 + SLACK
    bound = (sx.astype(np.float64)[:, None] * half * np.abs(wh).sum(axis=1)[None, :]
             + np.abs(x64).sum(axis=1)[:, None] * half * np.asarray(scale, dtype=np.float64)[None, :]
             + 5 * U32 * (np.abs(xh) @ np.abs(wh).T))
    if b is not None:
        bound = bound + 5 * U32 * np.abs(np.asarray(b, dtype=np.float64))[None, :]
    return bound


def embedding_error_bound(ids, q, scale):
    """Bound on |table[ids] - out| per element: s_e (1/2 + SLACK) + u |out|."""
    out = int8_embedding_ref(ids, q, scale).astype(np.float64)
    return np.asarray(scale, dtype=np.float64)[np.asarray(ids)][..., None] * (0.5 + SLACK) + U32 * np.abs(out)


# ---------------------------------------------------------------------------------------------------------------
# preparing a weight (offline, NumPy)


def _aligned_empty(shape, dtype, align: int = 64):
    """An uninitialised C-contiguous array whose data starts on an `align`-byte boundary (a 64-byte vector load
    then never straddles two cache lines)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(n + align, dtype=np.uint8)
    off = (-buf.ctypes.data) % align
    return buf[off:off + n].view(dtype).reshape(shape)


def pack_weight(q):
    """q (Cout, Cin) int8 -> the VNNI layout, 1-d: block c of 64 channels, group g of 4 k, vector v of 16 channels,
    lane l, byte j  =  q[64 c + 16 v + l, 4 g + j]  (zeros beyond Cout and Cin)."""
    cout, cin = q.shape
    cp = -(-cout // TILE_COLS) * TILE_COLS
    kp = -(-cin // KGROUP) * KGROUP
    full = np.zeros((cp, kp), np.int8)
    full[:cout, :cin] = q
    blocks = full.reshape(cp // TILE_COLS, NR, 16, kp // KGROUP, KGROUP).transpose(0, 3, 1, 2, 4)
    out = _aligned_empty((cp * kp,), np.int8)
    out[:] = blocks.reshape(-1)
    return out


def prepare_weight(q, scale) -> Int8Weight:
    """An Int8Weight from an int8 weight and its float32 scales (checked): row sums and the packed layout."""
    _checks.check_array("q", q, dtype=np.int8, ndim=2)
    _checks.check_array("scale", scale, ndim=1, shape=(q.shape[0],))
    if q.shape[1] > MAX_CIN:
        raise ValueError(f"q: Cin = {q.shape[1]} exceeds {MAX_CIN}, beyond which int32 sums could overflow")
    if (q == -128).any():
        raise ValueError("q: holds -128; symmetric int8 weights lie in [-127, 127]")
    row_sum = q.sum(axis=1, dtype=np.int64).astype(np.int32)
    return Int8Weight(q, scale, row_sum, pack_weight(q))


def quantize_weight(w) -> Int8Weight:
    """W (Cout, Cin) float32 -> Int8Weight (symmetric per output channel, as quantize_weight_ref)."""
    _checks.check_array("w", w, ndim=2)
    if not np.isfinite(w).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(w))[0])
        raise ValueError(f"w: non-finite value {w[bad]} at {bad}; a weight must be finite to be quantised")
    return prepare_weight(*quantize_weight_ref(w))


# ---------------------------------------------------------------------------------------------------------------
# CPU kernel choice


KERNELS = ("vnni", "portable")


@functools.cache
def vnni_available() -> bool:
    """True when Numba compiles for a CPU with AVX-512 VNNI: the features Numba's code generator uses (its
    NUMBA_CPU_FEATURES setting when given, else llvmlite's host features)."""
    from numba.core import config  # noqa: PLC0415
    feats = config.CPU_FEATURES
    if feats is None:
        import llvmlite.binding as ll  # noqa: PLC0415
        feats = ll.get_host_cpu_features().flatten()
    flags = set(feats.split(","))
    return "+avx512vnni" in flags and "+avx512f" in flags


def cpu_kernel(kernel: str | None = None) -> str:
    """The CPU GEMM to use: `kernel` when given, else MINIDISTIL_INT8_KERNEL, else "vnni" where available."""
    kernel = kernel or os.environ.get("MINIDISTIL_INT8_KERNEL") or ("vnni" if vnni_available() else "portable")
    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {KERNELS} (or MINIDISTIL_INT8_KERNEL), got {kernel!r}")
    if kernel == "vnni" and not vnni_available():
        raise ValueError("kernel: 'vnni' needs a CPU with AVX-512 VNNI, which Numba's target CPU lacks; "
                         "use 'portable'")
    return kernel


# ---------------------------------------------------------------------------------------------------------------
# Numba CPU: row quantisation


def _float32_intrinsic(name):
    """A Numba function of two float32 numbers that calls the LLVM intrinsic `name` (llvm.minimum / llvm.maximum:
    IEEE minimum and maximum that propagate NaN). A loop reducing with them vectorises (minps/maxps on 16
    lanes); a compare-and-select reduction does not (measured: 3072 floats, min and max, 1.7 -> 0.57 us)."""
    @intrinsic
    def fn(typingctx, a, b):
        if not (a == types.float32 and b == types.float32):
            return None

        def codegen(context, builder, sig, args):
            from llvmlite import ir
            f32 = ir.FloatType()
            f = builder.module.declare_intrinsic(name, [f32], ir.FunctionType(f32, [f32, f32]))
            return builder.call(f, list(args))

        return types.float32(a, b), codegen
    return fn


_fminimum = _float32_intrinsic("llvm.minimum")
_fmaximum = _float32_intrinsic("llvm.maximum")
_INF = np.float32(np.inf)
_NAN = np.float32(np.nan)


@njit(cache=True, parallel=True)
def _quantize_rows(x, q, scale, zp):
    """x (N, K) float32 -> q (Np, Kp) uint8 (padding rows and columns set to 0), scale (N,), zp (N,) int32.
    A row holding NaN or inf (or whose range overflows float32) gets scale NaN, so its outputs are NaN."""
    N, K = x.shape
    Np, Kp = q.shape
    for n in prange(Np):
        if n >= N:
            for k in range(Kp):
                q[n, k] = 0
            continue
        lo = _F0
        hi = _F0
        for k in range(K):                                          # min(0, x), max(0, x); NaN propagates
            lo = _fminimum(lo, x[n, k])
            hi = _fmaximum(hi, x[n, k])
        s = (hi - lo) / _F255                                       # s_x = (hi - lo) / 255
        bad = not s < _INF                                          # NaN or inf
        s = s if s > _FLT_MIN else _FLT_MIN
        s = _NAN if bad else s
        inv = np.float32(1.0) / s
        z = np.floor(-lo * inv + _HALF)                             # round(-lo / s_x); NaN -> 0 below
        z = z if z > _F0 else _F0
        z = z if z < _F255 else _F255
        for k in range(K):
            v = np.floor(x[n, k] * inv + _HALF) + z                 # round(x / s_x) + z, clipped to [0, 255]
            v = v if v > _F0 else _F0
            v = v if v < _F255 else _F255
            q[n, k] = np.uint8(np.int32(v))
        for k in range(K, Kp):
            q[n, k] = 0
        scale[n] = s
        zp[n] = np.int32(z)


def _quantize_padded(x2, rows_to: int, cols_to: int):
    """Quantise the rows of x2 (N, K) into a (N rounded up to `rows_to`, K rounded up to `cols_to`) buffer."""
    N, K = x2.shape
    Np = max(rows_to, -(-N // rows_to) * rows_to)
    Kp = -(-K // cols_to) * cols_to
    q = _aligned_empty((Np, Kp), np.uint8)
    scale = np.empty(N, np.float32)
    zp = np.empty(N, np.int32)
    _quantize_rows(x2, q, scale, zp)
    return q, scale, zp


def quantize_rows_cpu(x):
    """x (N, K) float32 -> (q uint8 (N, K), s_x (N,), z int32 (N,)), as quantize_rows_ref."""
    _checks.check_array("x", x, ndim=2)
    q, s, z = _quantize_padded(x, 1, 1)
    return q[:x.shape[0]], s, z


# ---------------------------------------------------------------------------------------------------------------
# Numba CPU: the VNNI register tile, as an LLVM intrinsic


def _emit_vnni_loop(context, builder, sig, args):
    """LLVM IR of the register tile's loop (shared by the two intrinsics below); args start with (a, row0, packed,
    woff, kg). Returns the MR x NR final <16 x i32> accumulators (valid in the current block) and helpers."""
    from llvmlite import ir
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    v16 = ir.VectorType(i32, 16)
    c64 = lambda n: ir.Constant(i64, n)  # noqa: E731
    a_, row0_, packed_, woff_, kg_ = args[:5]
    row0_, woff_, kg_ = (context.cast(builder, v, ty, types.int64)
                         for v, ty in ((row0_, sig.args[1]), (woff_, sig.args[3]), (kg_, sig.args[4])))
    fn = builder.module.declare_intrinsic("llvm.x86.avx512.vpdpbusd.512", fnty=ir.FunctionType(v16, [v16] * 3))
    arr_a = context.make_array(sig.args[0])(context, builder, a_)
    arr_w = context.make_array(sig.args[2])(context, builder, packed_)
    lda = builder.extract_value(arr_a.strides, 0)                       # bytes per row of a
    abase = builder.gep(builder.bitcast(arr_a.data, i8.as_pointer()), [builder.mul(row0_, lda)])
    wbase = builder.gep(builder.bitcast(arr_w.data, i8.as_pointer()), [woff_])
    zero = ir.Constant(v16, None)
    entry = builder.block
    loop = builder.append_basic_block("vnni.loop")
    done = builder.append_basic_block("vnni.done")
    builder.cbranch(builder.icmp_signed(">", kg_, c64(0)), loop, done)

    builder.position_at_end(loop)
    g = builder.phi(i64)
    acc = [[builder.phi(v16) for _ in range(NR)] for _ in range(MR)]
    g.add_incoming(c64(0), entry)
    for row in acc:
        for p in row:
            p.add_incoming(zero, entry)
    panel = builder.gep(wbase, [builder.mul(g, c64(KGROUP * TILE_COLS))])
    w = [builder.load(builder.bitcast(builder.gep(panel, [c64(64 * v)]), v16.as_pointer()), align=1)
         for v in range(NR)]
    new = []
    for r in range(MR):
        pa = builder.gep(abase, [builder.add(builder.mul(c64(r), lda), builder.mul(g, c64(KGROUP)))])
        x = builder.load(builder.bitcast(pa, i32.as_pointer()), align=1)
        xv = builder.insert_element(ir.Constant(v16, ir.Undefined), x, ir.Constant(i32, 0))
        xv = builder.shuffle_vector(xv, ir.Constant(v16, ir.Undefined), ir.Constant(v16, [0] * 16))
        new.append([builder.call(fn, [acc[r][v], xv, w[v]]) for v in range(NR)])
    g_next = builder.add(g, c64(1))
    g.add_incoming(g_next, loop)
    for r in range(MR):
        for v in range(NR):
            acc[r][v].add_incoming(new[r][v], loop)
    builder.cbranch(builder.icmp_signed("<", g_next, kg_), loop, done)

    builder.position_at_end(done)
    final = [[None] * NR for _ in range(MR)]
    for r in range(MR):                                                 # LLVM wants the phis first in a block
        for v in range(NR):
            p = builder.phi(v16)
            p.add_incoming(zero, entry)
            p.add_incoming(new[r][v], loop)
            final[r][v] = p
    return final, row0_, c64


def _vnni_ok(a, row0, packed, woff, kg):
    return (isinstance(a, types.Array) and a.dtype == types.uint8 and a.ndim == 2 and a.layout == "C"
            and isinstance(packed, types.Array) and packed.dtype == types.int8 and packed.ndim == 1
            and all(isinstance(v, types.Integer) for v in (row0, woff, kg)))


def _is_array(t, dtype, ndim):
    return isinstance(t, types.Array) and t.dtype == dtype and t.ndim == ndim and t.layout == "C"


@intrinsic
def _vnni_tile(typingctx, a, row0, packed, woff, kg, t):
    """t (MR, 64) int32 = sum over the kg groups of 4 k of  a[row0 + r, 4g:4g+4] . packed panel  (integers).

    a: (Np, Kp) uint8 C-contiguous activations; packed: the 1-d VNNI weight layout, woff the byte offset of this
    tile's 64-channel panel (kg * 256 bytes); t: the C-contiguous int32 output tile. Emitted as one LLVM loop over
    g whose 24 accumulators are <16 x i32> SSA values (they stay in zmm registers):
        w_v   = load <16 x i32> from panel + 256 g + 64 v               v = 0..3 (16 channels x 4 bytes each)
        a_r   = broadcast of the i32 at a + (row0 + r) lda + 4 g        r = 0..5 (4 activation bytes)
        acc_rv = vpdpbusd(acc_rv, a_r, w_v)                             acc += sum of 4 u8 x s8 products per lane
    The intrinsic is declared with <16 x i32> operands (the form of LLVM <= 20; LLVM 21+ upgrades it to its
    <64 x i8> form when it parses the module)."""
    if not (_vnni_ok(a, row0, packed, woff, kg) and _is_array(t, types.int32, 2)):
        return None

    def codegen(context, builder, sig, args):
        from llvmlite import ir
        final, _, c64 = _emit_vnni_loop(context, builder, sig, args)
        arr_t = context.make_array(sig.args[5])(context, builder, args[5])
        ldt = builder.extract_value(arr_t.strides, 0)
        tbase = builder.bitcast(arr_t.data, ir.IntType(8).as_pointer())
        for r in range(MR):
            for v in range(NR):
                pt = builder.gep(tbase, [builder.add(builder.mul(c64(r), ldt), c64(64 * v))])
                builder.store(final[r][v], builder.bitcast(pt, final[r][v].type.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(a, row0, packed, woff, kg, t), codegen


@intrinsic
def _vnni_tile_dequant(typingctx, a, row0, packed, woff, kg, y, col0, sx, zp, ws, wsum, bias, has_bias):
    """The same tile, written to y[row0:row0+MR, col0:col0+64] (float32) straight from the registers:
        y = float32(acc - z[n] r[o]) * (s_x[n] s_w[o]) + b[o]       (+ b only when has_bias)
    the operations of _store_row in the same order (the same numbers), for a tile wholly inside y (no bounds
    checks: the caller guarantees it). Skips the int32 tile's round trip through memory."""
    ok = (_vnni_ok(a, row0, packed, woff, kg) and _is_array(y, types.float32, 2) and isinstance(col0, types.Integer)
          and all(_is_array(v, d, 1) for v, d in ((sx, types.float32), (zp, types.int32), (ws, types.float32),
                                                   (wsum, types.int32), (bias, types.float32)))
          and isinstance(has_bias, types.Boolean))
    if not ok:
        return None

    def codegen(context, builder, sig, args):
        from llvmlite import ir
        final, row0_, c64 = _emit_vnni_loop(context, builder, sig, args)
        i8, i32, f32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
        vi, vf = ir.VectorType(i32, 16), ir.VectorType(f32, 16)
        col0_ = context.cast(builder, args[6], sig.args[6], types.int64)
        arr_y, arr_sx, arr_zp, arr_ws, arr_wsum, arr_b = (context.make_array(sig.args[i])(context, builder, args[i])
                                                           for i in (5, 7, 8, 9, 10, 11))
        has_b = context.cast(builder, args[12], sig.args[12], types.boolean)

        def vec(arr, ty, elt):                                          # NR vectors of 16 from arr[col0 + 16 v]
            base = builder.gep(builder.bitcast(arr.data, elt.as_pointer()), [col0_])
            return [builder.load(builder.bitcast(builder.gep(base, [c64(16 * v)]), ty.as_pointer()), align=4)
                    for v in range(NR)]

        def bcast(x, ty):
            xv = builder.insert_element(ir.Constant(ty, ir.Undefined), x, ir.Constant(i32, 0))
            return builder.shuffle_vector(xv, ir.Constant(ty, ir.Undefined), ir.Constant(vi, [0] * 16))

        ws_v, wsum_v, b_v = vec(arr_ws, vf, f32), vec(arr_wsum, vi, i32), vec(arr_b, vf, f32)
        sxp = builder.bitcast(arr_sx.data, f32.as_pointer())
        zpp = builder.bitcast(arr_zp.data, i32.as_pointer())
        ldy = builder.extract_value(arr_y.strides, 0)
        ybase = builder.gep(builder.bitcast(arr_y.data, i8.as_pointer()), [builder.mul(col0_, c64(4))])
        for r in range(MR):
            n = builder.add(row0_, c64(r))
            z = bcast(builder.load(builder.gep(zpp, [n])), vi)
            s = bcast(builder.load(builder.gep(sxp, [n])), vf)
            prow = builder.gep(ybase, [builder.mul(n, ldy)])
            for v in range(NR):
                d = builder.sub(final[r][v], builder.mul(z, wsum_v[v]))  # acc - z r
                out = builder.fmul(builder.sitofp(d, vf), builder.fmul(s, ws_v[v]))
                out = builder.select(has_b, builder.fadd(out, b_v[v]), out)
                builder.store(out, builder.bitcast(builder.gep(prow, [c64(64 * v)]), vf.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(a, row0, packed, woff, kg, y, col0, sx, zp, ws, wsum, bias, has_bias), codegen


@njit(cache=True, inline="always")
def _store_row(acc, n, col0, cols, raw, out_i32, y, sx, zp, ws, wsum, bias, has_bias):
    """Row n, columns col0 .. col0 + cols of the output from the int32 sums acc (cols,):
        y = float32(acc - z r) (s_x s_w) + b      (or the raw sums, for the tests of the integer product)
    One branch per row, and loops over contiguous columns that vectorise."""
    if raw:
        for j in range(cols):
            out_i32[n, col0 + j] = acc[j]
        return
    z = zp[n]
    s = sx[n]
    if has_bias:
        for j in range(cols):
            o = col0 + j
            y[n, o] = np.float32(np.int32(acc[j] - z * wsum[o])) * (s * ws[o]) + bias[o]
    else:
        for j in range(cols):
            o = col0 + j
            y[n, o] = np.float32(np.int32(acc[j] - z * wsum[o])) * (s * ws[o])


@njit(cache=True, parallel=True)
def _gemm_vnni(a, packed, N, cout, nchunks, panel_rb, raw, out_i32, y, sx, zp, ws, wsum, bias, has_bias):
    """a (Np, Kp) uint8, Np a multiple of MR, Kp of 4; packed the VNNI weight panels. The tiles are ordered by
    panels of `panel_rb` row blocks (an activation panel that stays in L2), then column block, then row block, and
    split into `nchunks` contiguous runs, one per thread: a thread reuses one weight panel over the row blocks of
    its activation panel, and reads each activation panel once (measured at N = 4096: without the panels every
    64-column block re-read all of a from memory: 1 MiB panels gave +15-35% GOP per CPU-second on one core)."""
    Np, Kp = a.shape
    kg = Kp // KGROUP
    n_rb = Np // MR
    n_cb = (cout + TILE_COLS - 1) // TILE_COLS
    n_tiles = n_rb * n_cb
    per_panel = panel_rb * n_cb                                    # tiles in a full panel
    full = n_rb // panel_rb                                         # full panels; the last one holds the rest
    last_rb = n_rb - full * panel_rb
    for c in prange(nchunks):
        t = np.empty((MR, TILE_COLS), np.int32)
        for idx in range(c * n_tiles // nchunks, (c + 1) * n_tiles // nchunks):
            if idx < full * per_panel:
                panel = idx // per_panel
                i = idx - panel * per_panel
                cb = i // panel_rb
                rb = panel * panel_rb + i - cb * panel_rb
            else:
                i = idx - full * per_panel
                cb = i // last_rb
                rb = full * panel_rb + i - cb * last_rb
            row0 = rb * MR
            col0 = cb * TILE_COLS
            woff = cb * kg * KGROUP * TILE_COLS
            if not raw and row0 + MR <= N and col0 + TILE_COLS <= cout:   # a whole tile: dequantised in registers
                _vnni_tile_dequant(a, row0, packed, woff, kg, y, col0, sx, zp, ws, wsum, bias, has_bias)
                continue
            _vnni_tile(a, row0, packed, woff, kg, t)                    # an edge tile (or the raw sums)
            cols = min(TILE_COLS, cout - col0)
            for r in range(min(MR, N - row0)):
                _store_row(t[r], row0 + r, col0, cols, raw, out_i32, y, sx, zp, ws, wsum, bias, has_bias)


def vnni_assembly() -> str:
    """The assembly of the VNNI GEMM driver, compiled afresh (code that Numba loaded from its on-disk cache cannot
    be inspected), to check that `vpdpbusd` is in it. Needs a CPU with AVX-512 VNNI."""
    from numba import njit
    gemm = njit(parallel=True)(_gemm_vnni.py_func)
    wq = prepare_weight(np.ones((3, 8), np.int8), np.ones(3, np.float32))
    gemm(np.zeros((MR, 8), np.uint8), wq.packed, MR, 3, 1, 1, True, np.zeros((MR, 3), np.int32), _EMPTY_F32,
         np.zeros(MR, np.float32), np.zeros(MR, np.int32), wq.scale, wq.row_sum, np.zeros(3, np.float32), False)
    return "\n".join(gemm.inspect_asm(sig) for sig in gemm.signatures)


@njit(cache=True, parallel=True)
def _gemm_portable(a, q, N, raw, out_i32, y, sx, zp, ws, wsum, bias, has_bias):
    """a (N rounded up to 2 rows, >= K) uint8, q (Cout, K) int8: int32 dot products over k (LLVM vectorises them
    with the CPU's integer multiply-adds), 2 rows x 4 output channels at a time so that each loaded byte serves
    2 or 4 products (measured on one core: 50 GOP/s one output at a time, 84 this way); prange over row pairs."""
    cout, K = q.shape
    for p in prange((N + 1) // 2):
        n = 2 * p
        acc0 = np.empty(cout, np.int32)
        acc1 = np.empty(cout, np.int32)
        o = 0
        while o + 4 <= cout:
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.int32(0)
            for k in range(K):
                x0 = np.int32(a[n, k])
                x1 = np.int32(a[n + 1, k])
                w0 = np.int32(q[o, k])
                w1 = np.int32(q[o + 1, k])
                w2 = np.int32(q[o + 2, k])
                w3 = np.int32(q[o + 3, k])
                s00 = np.int32(s00 + x0 * w0)
                s01 = np.int32(s01 + x0 * w1)
                s02 = np.int32(s02 + x0 * w2)
                s03 = np.int32(s03 + x0 * w3)
                s10 = np.int32(s10 + x1 * w0)
                s11 = np.int32(s11 + x1 * w1)
                s12 = np.int32(s12 + x1 * w2)
                s13 = np.int32(s13 + x1 * w3)
            acc0[o], acc0[o + 1], acc0[o + 2], acc0[o + 3] = s00, s01, s02, s03
            acc1[o], acc1[o + 1], acc1[o + 2], acc1[o + 3] = s10, s11, s12, s13
            o += 4
        for j in range(o, cout):                                   # the last Cout % 4 channels
            s0 = s1 = np.int32(0)
            for k in range(K):
                wj = np.int32(q[j, k])
                s0 = np.int32(s0 + np.int32(a[n, k]) * wj)
                s1 = np.int32(s1 + np.int32(a[n + 1, k]) * wj)
            acc0[j] = s0
            acc1[j] = s1
        _store_row(acc0, n, 0, cout, raw, out_i32, y, sx, zp, ws, wsum, bias, has_bias)
        if n + 1 < N:
            _store_row(acc1, n + 1, 0, cout, raw, out_i32, y, sx, zp, ws, wsum, bias, has_bias)


_EMPTY_I32 = np.zeros((0, 0), np.int32)
_EMPTY_F32 = np.zeros((0, 0), np.float32)
_NO_BIAS = np.zeros(0, np.float32)


def _check_weight(w, cin):
    if not isinstance(w, Int8Weight):
        raise ValueError(f"w: expected an Int8Weight (kernels.int8.quantize_weight / prepare_weight), got "
                         f"{type(w).__name__}")
    if w.q.shape[1] != cin:
        raise ValueError(f"w: expected Cin = {cin} to match the last axis of x, got a weight of shape "
                         f"{tuple(w.q.shape)}")


def _run_gemm(qx, N, w, kernel, raw, sx=None, zp=None, bias=None):
    cout = w.q.shape[0]
    out_i32 = np.empty((N, cout), np.int32) if raw else _EMPTY_I32
    y = _EMPTY_F32 if raw else np.empty((N, cout), np.float32)
    sx = np.zeros(N, np.float32) if sx is None else sx
    zp = np.zeros(N, np.int32) if zp is None else zp
    has_bias = bias is not None
    bias = _NO_BIAS if bias is None else bias
    if N and cout:
        if kernel == "vnni":
            from numba import get_num_threads  # noqa: PLC0415
            n_tiles = (qx.shape[0] // MR) * (-(-cout // TILE_COLS))
            panel_rb = max(1, PANEL_BYTES // (MR * qx.shape[1]))
            _gemm_vnni(qx, w.packed, N, cout, max(1, min(get_num_threads(), n_tiles)), panel_rb, raw, out_i32, y,
                       sx, zp, w.scale, w.row_sum, bias, has_bias)
        else:
            _gemm_portable(qx, w.q, N, raw, out_i32, y, sx, zp, w.scale, w.row_sum, bias, has_bias)
    return out_i32 if raw else y


def int8_matmul_cpu(qx, w: Int8Weight, kernel: str | None = None):
    """acc (N, Cout) int32 = qx (N, Cin) uint8 @ w.q^T: the raw integer product (exactly int8_matmul_ref's)."""
    _checks.check_array("qx", qx, dtype=np.uint8, ndim=2)
    _check_weight(w, qx.shape[1])
    kernel = cpu_kernel(kernel)
    N, K = qx.shape
    rows, cols = (MR, KGROUP) if kernel == "vnni" else (2, 1)
    a = np.zeros((max(rows, -(-N // rows) * rows), -(-K // cols) * cols), np.uint8)   # the padded layout
    a[:N, :K] = qx
    return _run_gemm(a, N, w, kernel, raw=True)


def int8_linear_forward_cpu(x, w: Int8Weight, b=None, kernel: str | None = None):
    """y (..., Cout) float32 = the quantised x (..., Cin) times w, plus b (Cout,) or None (module docstring)."""
    _checks.check_array("x", x)
    if x.ndim < 1:
        raise ValueError(f"x: expected an array (..., Cin) with at least one axis, got shape {tuple(x.shape)}")
    cin = x.shape[-1]
    _check_weight(w, cin)
    cout = w.q.shape[0]
    if b is not None:
        _checks.check_array("b", b, ndim=1, shape=(cout,))
    kernel = cpu_kernel(kernel)
    x2 = x.reshape(-1, cin)                                            # (N, Cin)
    N = x2.shape[0]
    qx, sx, zp = _quantize_padded(x2, MR if kernel == "vnni" else 2, KGROUP if kernel == "vnni" else 1)
    y = _run_gemm(qx, N, w, kernel, raw=False, sx=sx, zp=zp, bias=b)   # (N, Cout)
    return y.reshape(tuple(x.shape)[:-1] + (cout,))


# ---------------------------------------------------------------------------------------------------------------
# Numba CPU: the int8 embedding


@njit(cache=True, parallel=True)
def _embed(ids, q, scale, out):
    # ids (P,), q (V, C) int8, scale (V,), out (P, C): out[p] = s[ids[p]] q[ids[p]]
    C = q.shape[1]
    for p in prange(ids.shape[0]):
        v = ids[p]
        s = scale[v]
        for c in range(C):
            out[p, c] = s * np.float32(q[v, c])


def _check_embedding(ids, q, scale, checked):
    _checks.check_array("q", q, dtype=np.int8, ndim=2)
    _checks.check_array("scale", scale, ndim=1, shape=(q.shape[0],))
    _checks.check_array("ids", ids, dtype=(np.int32, np.int64))
    if not checked:
        _checks.check_ids("ids", _cuda.to_host(ids), int(q.shape[0]))


def int8_embedding_cpu(ids, q, scale, checked: bool = False):
    """out (*ids.shape, C) float32 = s_e[ids] * q_e[ids]; checked=True: the caller has checked 0 <= ids < V."""
    _check_embedding(ids, q, scale, checked)
    C = q.shape[1]
    out = np.empty((*ids.shape, C), np.float32)
    _embed(ids.reshape(-1), q, scale, out.reshape(-1, C))
    return out


# ---------------------------------------------------------------------------------------------------------------
# numba.cuda


cuda = None  # numba.cuda, bound on first use: the simulator swaps this module global for its fake module


@functools.cache
def _cuda_kernels():
    global cuda
    cuda = _cuda.get_cuda()
    from numba import float32, int32  # noqa: PLC0415
    TILE = _cuda.TILE
    THREADS = _cuda.THREADS
    block_sum, block_max = _cuda.block_reductions()
    nan32 = np.float32(np.nan)

    @cuda.jit
    def quantize_rows(x, K, q, scale, zp):
        # one block per row n of x (flat N*K): block-wide min/max (shared memory), then each thread its elements
        n = cuda.blockIdx.x
        t = cuda.threadIdx.x
        buf = cuda.shared.array(THREADS, float32)
        lo = float32(0.0)
        hi = float32(0.0)
        probe = float32(0.0)
        k = t
        while k < K:
            v = x[n * K + k]
            lo = min(lo, v)
            hi = max(hi, v)
            probe += v * float32(0.0)
            k += THREADS
        hi = block_max(buf, hi)
        lo = -block_max(buf, -lo)
        probe = block_sum(buf, probe)
        s = (hi - lo) / _F255                                     # s_x = (hi - lo) / 255
        s = s if s > _FLT_MIN else _FLT_MIN
        finite = probe == float32(0.0)
        s = s if finite else nan32
        inv = float32(1.0) / s
        z = float32(0.0)
        if finite:
            z = float32(math.floor(-lo * inv + _HALF))                # round(-lo / s_x)
            z = min(max(z, _F0), _F255)
        k = t
        while k < K:
            v = _F0
            if finite:
                v = float32(math.floor(x[n * K + k] * inv + _HALF)) + z
                v = min(max(v, _F0), _F255)
            q[n * K + k] = np.uint8(v)
            k += THREADS
        if t == 0:
            scale[n] = s
            zp[n] = int32(z)

    @cuda.jit
    def gemm(a, q, N, cout, K, raw, out_i32, y, sx, zp, ws, wsum, bias, has_bias):
        # (N, Cout) = a (N, K) uint8 @ q (Cout, K)^T int8, int32 sums; one TILE x TILE output tile per block,
        # the K axis walked tile by tile through shared memory (out-of-range loads read 0, so any N, Cout, K)
        sa = cuda.shared.array((TILE, TILE), int32)
        sb = cuda.shared.array((TILE, TILE), int32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        n = cuda.blockIdx.y * TILE + ty                              # row of the output
        o = cuda.blockIdx.x * TILE + tx                              # column of the output
        ob = cuda.blockIdx.x * TILE + ty                             # the weight row this thread loads
        acc = int32(0)
        for k0 in range(0, K, TILE):
            ka = k0 + tx
            sa[ty, tx] = int32(a[n, ka]) if n < N and ka < K else int32(0)
            sb[tx, ty] = int32(q[ob, ka]) if ob < cout and ka < K else int32(0)   # sb[k, c] = q[col c, k]
            cuda.syncthreads()
            for kk in range(TILE):
                acc = int32(acc + sa[ty, kk] * sb[kk, tx])
            cuda.syncthreads()
        if n < N and o < cout:
            if raw:
                out_i32[n, o] = acc
            else:
                v = float32(int32(acc - zp[n] * wsum[o])) * (sx[n] * ws[o])
                y[n, o] = v + bias[o] if has_bias else v

    @cuda.jit
    def embed(ids, q, scale, out, C):
        # one block per position p, threads over the C columns
        p = cuda.blockIdx.x
        v = ids[p]
        s = scale[v]
        c = cuda.threadIdx.x
        while c < C:
            out[p * C + c] = s * float32(q[v, c])
            c += THREADS

    return quantize_rows, gemm, embed


def quantize_rows_cuda(x):
    """x (N, K) float32 device array -> (q uint8, s_x float32, z int32) device arrays, as quantize_rows_ref."""
    _checks.check_array("x", x, ndim=2)
    quantize_rows, _, _ = _cuda_kernels()
    N, K = x.shape
    q = _cuda.device_empty((N, K), np.uint8)
    s = _cuda.device_empty((N,), np.float32)
    z = _cuda.device_empty((N,), np.int32)
    if N:
        quantize_rows[N, _cuda.THREADS](x.reshape(-1), K, q.reshape(-1), s, z)
    return q, s, z


def weight_to_device(w: Int8Weight) -> Int8Weight:
    """The Int8Weight's arrays on the GPU (the packed CPU layout stays behind: None)."""
    return Int8Weight(*(_cuda.to_device(a) for a in (w.q, w.scale, w.row_sum)), None)


@functools.cache
def _zero_1(dtype):
    """A (1,) device array holding 0 (filled by a kernel: no host copy), kept for the process."""
    return _cuda.device_zeros((1,), dtype)


def _gemm_cuda(qx, w, raw, sx=None, zp=None, bias=None):
    _, gemm, _ = _cuda_kernels()
    N, K = qx.shape
    cout = w.q.shape[0]
    out_i32 = _cuda.device_empty((N, cout) if raw else (1, 1), np.int32)
    y = _cuda.device_empty((1, 1) if raw else (N, cout), np.float32)
    # unused arguments of the raw product / a layer without bias: one-element zero arrays made once on the device
    # (not three host uploads per call)
    sx = _zero_1(np.float32) if sx is None else sx
    zp = _zero_1(np.int32) if zp is None else zp
    has_bias = bias is not None
    bias = _zero_1(np.float32) if bias is None else bias
    T = _cuda.TILE
    if N and cout:
        grid = ((cout + T - 1) // T, (N + T - 1) // T)
        gemm[grid, (T, T)](qx, w.q, N, cout, K, raw, out_i32, y, sx, zp, w.scale, w.row_sum, bias, has_bias)
    return out_i32 if raw else y


def int8_matmul_cuda(qx, w: Int8Weight):
    """The raw int32 product on the GPU (device arrays in, a device array out)."""
    _checks.check_array("qx", qx, dtype=np.uint8, ndim=2)
    _check_weight(w, qx.shape[1])
    return _gemm_cuda(qx, w, raw=True)


def int8_linear_forward_cuda(x, w: Int8Weight, b=None):
    _checks.check_array("x", x)
    cin = tuple(x.shape)[-1]
    _check_weight(w, cin)
    cout = w.q.shape[0]
    if b is not None:
        _checks.check_array("b", b, ndim=1, shape=(cout,))
    x2 = x.reshape(x.size // cin if cin else 0, cin)                   # (N, Cin)
    qx, sx, zp = quantize_rows_cuda(x2)
    y = _gemm_cuda(qx, w, raw=False, sx=sx, zp=zp, bias=b)
    return y.reshape(tuple(x.shape)[:-1] + (cout,))


def int8_embedding_cuda(ids, q, scale, checked: bool = False):
    _check_embedding(ids, q, scale, checked)
    _, _, embed = _cuda_kernels()
    C = q.shape[1]
    P = int(np.prod(tuple(ids.shape), dtype=np.int64))
    out = _cuda.device_empty((P, C))
    if P:
        embed[P, _cuda.THREADS](ids.reshape(P), q, scale, out.reshape(P * C), C)
    return out.reshape(tuple(ids.shape) + (C,))


# ---------------------------------------------------------------------------------------------------------------
# public entry points: device arrays go to CUDA, numpy arrays to the CPU version


def int8_linear_forward(x, w: Int8Weight, b=None, kernel: str | None = None):
    """y (..., Cout) = quantised x (..., Cin) times the int8 weight w, + b. Inference only (no cache, no backward)."""
    if _cuda.is_device_array(x):
        return int8_linear_forward_cuda(x, w, b)
    return int8_linear_forward_cpu(x, w, b, kernel)


def int8_embedding_forward(ids, q, scale, checked: bool = False):
    """out (*ids.shape, C) = s_e[ids] q_e[ids]; the CUDA version when q is a device array."""
    if _cuda.is_device_array(q):
        return int8_embedding_cuda(_cuda.to_device(ids), q, scale, checked)
    return int8_embedding_cpu(ids, q, scale, checked)


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = _checks.lab_options("int8", argv)
    rep = _checks.Report("int8")
    r = _checks.rng(0)
    kernels = ["portable"] + (["vnni"] if vnni_available() else [])
    if "vnni" not in kernels:
        rep.skip("vnni", "Numba's target CPU has no AVX-512 VNNI")

    def data(n, cin, cout):
        x = r.standard_normal((n, cin)).astype(np.float32)
        w = (r.standard_normal((cout, cin)) * 0.02).astype(np.float32)   # BERT's init scale
        b = (r.standard_normal(cout) * 0.02).astype(np.float32)
        return x, w, b

    # validation: the integer product exactly, the linear layer within its derived bound, at awkward and at
    # DistilBERT sizes
    shapes = [(7, 13, 5), (37, 130, 70)] + ([(1024, 768, 3072), (1024, 3072, 768)] if args.size == "base" else [])
    for n, cin, cout in shapes:
        x, w, b = data(n, cin, cout)
        wq = quantize_weight(w)
        qx = quantize_rows_ref(x)[0]
        exact = int8_matmul_ref(qx, wq.q)
        y64 = x.astype(np.float64) @ w.T.astype(np.float64) + b
        bound = linear_error_bound(x, wq.q, wq.scale, b)
        rep.check(f"cpu rows {n}x{cin}", "q_x", quantize_rows_cpu(x)[0], qx, atol=0)
        for k in kernels:
            rep.check(f"{k} {cin}->{cout}", "acc", int8_matmul_cpu(qx, wq, k), exact, atol=0)
            y = int8_linear_forward_cpu(x, wq, b, k)
            excess = np.maximum(np.abs(y - y64) - bound, 0.0)
            rep.check(f"{k} {cin}->{cout}", "> bound", excess, np.zeros_like(excess), atol=0)
            print(f"  {'':9}{k} {cin}->{cout}: max |y - x W^T - b| / bound = {(np.abs(y - y64) / bound).max():.3f}")
    if _cuda.available():
        x, w, b = data(*((9, 21, 11) if _cuda.SIMULATOR or args.size == "tiny" else (1024, 768, 3072)))
        wq = quantize_weight(w)
        qx, _, _ = quantize_rows_ref(x)
        wd = weight_to_device(wq)
        rep.check("cuda", "acc", _cuda.to_host(int8_matmul_cuda(_cuda.to_device(qx), wd)),
                  int8_matmul_ref(qx, wq.q), atol=0)
        y = _cuda.to_host(int8_linear_forward_cuda(_cuda.to_device(x), wd, _cuda.to_device(b)))
        err = np.abs(y - (x.astype(np.float64) @ w.T.astype(np.float64) + b))
        excess = np.maximum(err - linear_error_bound(x, wq.q, wq.scale, b), 0.0)
        rep.check("cuda", "> bound", excess, np.zeros_like(excess), atol=0)
    else:
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set")

    if args.no_bench:
        return rep.finish()
    # benchmark at DistilBERT-base sizes (N = B*T = 1024): int8 beside the float32 linear (numpy's sgemm)
    from . import linear as _linear  # noqa: PLC0415
    for n, cin, cout in [(1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768)]:
        x, w, b = data(n, cin, cout)
        wq = quantize_weight(w)
        ops = 2.0 * n * cin * cout
        rep.bench(f"f32 {cin}->{cout}", lambda x=x, w=w, b=b: _linear.linear_forward_cpu(x, w, b), flops=ops)
        rep.bench(f"quantize {n}x{cin}", lambda x=x: quantize_rows_cpu(x), nbytes=5.0 * n * cin)
        qx = quantize_rows_cpu(x)[0]
        for k in kernels:
            rep.bench(f"{k} int8 GEMM", lambda qx=qx, wq=wq, k=k: int8_matmul_cpu(qx, wq, k), flops=ops)
            rep.bench(f"{k} linear", lambda x=x, wq=wq, b=b, k=k: int8_linear_forward_cpu(x, wq, b, k), flops=ops)
    ids = r.integers(0, 30522, (8, 128))
    qe = quantize_weight((r.standard_normal((30522, 768)) * 0.02).astype(np.float32))
    rep.bench("embedding", lambda: int8_embedding_cpu(ids, qe.q, qe.scale), nbytes=8 * 128 * 768 * 5.0)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
