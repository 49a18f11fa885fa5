"""GEMM of our own: C = A B (+ bias), float32, the Goto/BLIS algorithm written out, with the weight packed once.

The product (A (M, K) activations, B (K, N) the weight seen as a matrix, C (M, N)):
    C[i, j] = sum_k A[i, k] B[k, j]  (+ bias[j])
A linear layer y = x W^T + b (W (Cout, Cin)) is B = W^T, K = Cin, N = Cout, with W^T packed once and kept. Its
backward dx = dy W is B = W, K = Cout, N = Cin, and dW = dy^T x is A = dy^T, B = x, M = Cout, K = the T rows:
their operands change at every training step, so `gemm` reads them in place rather than packing them (below).
Which of the three the linear layers run here: the rule below. `gemm_cpu` computes any product.

The algorithm (Goto & van de Geijn 2008; BLIS's five loops around a micro-kernel):
    B, packed ONCE (`pack_b`): NR-wide column panels, each stored k-major: panel p holds B[k, p NR + j] at
        p K NR + k NR + j (j < NR), zeros beyond N. One k step of a panel is one contiguous NR-float row, so the
        micro-kernel reads B as NR/16 64-byte vectors (aligned ones in a pack). A linear layer's packed weight is
        kept (`PackCache`) until the weight changes: the cache is keyed on the array object, its data pointer,
        shape and strides, and a version counter that every in-place writer of weights bumps
        (`weights_changed()`: the optimizer does after each step). A hit is therefore exactly "the same memory,
        not written since it was packed".
    A, read in place: the micro-kernel broadcasts the MR values of A's k step one at a time, so they need not
        be side by side. A row-major A (M, K) (the forward's x, dx = dy W's dy) has them one row apart, at
        A + (row0 + r) K + k: MR streams along MR rows, each read in k order, a 64-byte line per 16 k steps, as
        many lines as a packed panel needs. Packing A at every call (`pack_a`: MR-row panels, k-major, panel i
        holding A[i MR + r, k] at i K MR + k MR + r) would write and read back a copy for no gain: on the
        model's shapes the in-place read ran faster than the pack (kernels/README.md), so only other layouts
        (a strided view) are packed.
    Operands read in place (`gemm`, the backward's products too): the micro-kernel takes each operand's strides
        (lda, ars for A's k step and row; ldb for B's k step; MR, 1 and NR for the packs). A row-major B (K, N)
        (W in dx = dy W, x in dW = dy^T x) has its k step of a panel as NR consecutive floats at B + k N + col0,
        as in a pack; A given as the transpose of a row-major array (dy^T, dy (K, M)) has its k step as MR
        consecutive floats at dy + k M + row0. So no product of a linear layer packs anything but the forward's
        weight, once. Only an operand's last partial panel is packed, for its zero padding (an in-place read
        would run past the row or the array).
    Loops (per thread, over its chunk: a run of B's panels, or a range of A's rows):
        for jc in blocks of NC columns          B's kc x nc block (a chunk's columns) stays in L2/L3 while ...
          for pc in blocks of KC of K          ... all of A's row panels stream past it
            for ic in blocks of MC rows        A's mc x kc block (L2) is reused by every NR panel of jc
              for jr in NR panels of jc        B's kc x NR micro-panel (L2) is reused by every MR panel of ic
                for ir in MR panels of ic      the micro-kernel: an MR x NR tile of C in registers
    The micro-kernel ("avx512"): MR x NR/16 accumulators of <16 x float> (zmm registers) as LLVM SSA values; per
    k step NR/16 vector loads of B, MR broadcasts of A, MR NR/16 `llvm.fma.v16f32` (vfmadd231ps zmm). Emitted as
    LLVM IR (`_tile_avx512`), as kernels/int8.py emits vpdpbusd, so that the register tile is what we wrote, not
    what the auto-vectoriser decides. The first KC block stores the tile, later ones add C; the last one adds the
    bias: the bias is fused into the store (one pass over C fewer than numpy's y += b).
    Edge tiles (M not a multiple of MR, N not of NR) run the same kernel into an MR x NR scratch tile (the padded
    rows and columns of the packs are zeros) and copy the valid part.
    Threads: the work is cut into about CHUNKS_PER_THREAD chunks per Numba thread, runs of whole NR panels of B
    (each chunk reads all of A and its own part of B, writes its own columns of C), or row ranges of A as well
    when B has too few panels; each thread takes the next chunk from an atomic counter until none is left, so a
    thread the OS sets aside holds up one chunk, not a fixed half of the product. The result does not depend on
    the thread count (each tile is computed by one thread, in the same order). OpenBLAS is not called meanwhile
    (its workers sleep: minidistil/core/_runtime.py sets OPENBLAS_THREAD_TIMEOUT), so the two pools do not
    oversubscribe the cores.

Versions:
    gemm_ref                  NumPy float64 product, written for reading (the reference)
    gemm_cpu(kernel="avx512") the packed GEMM with the LLVM-IR AVX-512 micro-kernel (needs avx512f in Numba's
                              target CPU: NUMBA_CPU_FEATURES or llvmlite's host features)
    gemm_cpu(kernel="portable") the same packing, blocking and threads; the micro-kernel is a Numba loop, one tile
                              row at a time into an NR-float accumulator array (LLVM vectorises it with whatever
                              the CPU has; the tile lives in memory, not registers, so it is several times slower)
`cpu_kernel()` picks "avx512" where available; MINIDISTIL_GEMM_KERNEL=portable|avx512 overrides it.

Error bound (the tests and the lab assert it): every C[i, j] is a K-term float32 dot product summed in some order
(within a KC block in k order, then block by block), so |C - A B| <= gamma_K sum_k |A[i, k]| |B[k, j]| with
gamma_K = K u / (1 - K u), u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms, 3.1); the bias add
is one more rounding: + u |C + bias|. `error_bound` computes it per element, in float64.

When the linear layers use it (`use_own_gemm(M, K, N, product)`), the rule (measured: figures, command and CPU in
kernels/README.md; MINIDISTIL_GEMM=openblas sends all three products to OpenBLAS, =own all three here):
    all three products of a linear layer on the "avx512" kernel, MINIDISTIL_GEMM unset or "auto", when the product
    is large enough that the padding of the 8 x 48 tile and waking the threads are small beside it: the forward
    y = x W^T and dx = dy W with M >= MIN_M = 8 rows and K, N >= MIN_KN = 384; dW = dy^T x with the layer's widths
    M, N >= MIN_KN and at least MIN_M rows K. There each ran at least about OpenBLAS's rate, most of them above it
    (the forward by its kept pack, all of them by reading A in place); below, at M = 1 or widths <= 256, slower.
    Everything else (small products, a classifier head of a few outputs, the "portable" kernel) goes to OpenBLAS.
    Keeping the model's products on one thread pool is itself part of the rule: Numba's workers can then spin a
    few milliseconds between kernels instead of sleeping (minidistil/core/_runtime.py), which OpenBLAS's own
    threads, running products of the same step, would have to share the cores with.
    Attention's head products (`heads_gemm`, below) follow the forward's switch: kernels/attention.py `own_heads`.

Batched head products (`heads_gemm(a, b, out)`, a (X, Y, M, K) @ b (X, Y, K, N) for attention's (B, H) pairs):
    one (batch, head) pair per prange step, its operands packed (T x D and D x T: small beside the 2 T^2 D flops),
    each tile computed into a scratch tile and its valid part copied out, the pack and copy loops walking each
    operand along its contiguous axis. Where computing out^T = b^T a^T pads the tile less (P V with a head width
    of 64 = 1.33 NR: 96 columns computed for 64, against 64 rows exactly the other way), it is turned round.
"""
from __future__ import annotations

import functools
import os
import time
import weakref

import numpy as np
from numba import get_num_threads, njit, prange, types
from numba.extending import intrinsic

from . import _checks

MR = 8                      # rows of the register tile (broadcasts of A per k step)
NV = 3                      # zmm vectors of 16 columns per tile row
NR = 16 * NV                # columns of the register tile: 48
KC = 768                    # k per block: B's micro-panel (KC x NR x 4 B = 144 KiB) and A's block stay in L2;
                            # each block after the first reloads the C tile, so fewer, longer blocks measured
                            # faster than 384 (kernels/README.md)
MC = 96                     # rows per block: A's MC x KC block (288 KiB) stays in L2
NC = 1536                   # columns per block (a multiple of NR): B's KC x NC block (4.5 MiB) from L3
CHUNKS_PER_THREAD = 4       # pieces of work per thread, taken dynamically
PACK_KB = 16                # rows of a row-major operand packed together (_pack_rows)
MIN_M = 8                   # the dispatch rule (module docstring): one full MR-row panel at least ...
MIN_KN = 384                # ... and both widths at least MiniLM's 384
A_PACKED, A_TRANSPOSED, A_ROWS = 0, 1, 2   # how the driver reads A (_gemm_packed)
PRODUCTS = ("forward", "dx", "dw")   # the three products of a linear layer (use_own_gemm, compare_openblas)
U32 = 2.0**-24              # float32 unit roundoff
ZERO = np.float32(0.0)


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference and error bound


def gemm_ref(a, b, bias=None):
    """C = A B (+ bias), in float64: a (M, K), b (K, N), bias (N,) or None."""
    c = np.asarray(a, dtype=np.float64) @ np.asarray(b, dtype=np.float64)
    return c if bias is None else c + np.asarray(bias, dtype=np.float64)


def error_bound(a, b, bias=None):
    """The bound (module docstring) on |gemm_cpu(a, b, bias) - gemm_ref(a, b, bias)| per element, float64."""
    K = a.shape[1]
    gamma = K * U32 / (1 - K * U32)
    bound = gamma * (np.abs(np.asarray(a, dtype=np.float64)) @ np.abs(np.asarray(b, dtype=np.float64)))
    if bias is not None:
        bound = bound + U32 * np.abs(gemm_ref(a, b, bias)) + U32 * bound
    return bound


# ---------------------------------------------------------------------------------------------------------------
# packing


def _aligned_empty(n: int, align: int = 64):
    """An uninitialised 1-d float32 array of n elements whose data starts on an `align`-byte boundary."""
    buf = np.empty(n * 4 + align, dtype=np.uint8)
    off = (-buf.ctypes.data) % align
    return buf[off:off + n * 4].view(np.float32)


@njit(cache=True, parallel=True)
def _pack_b(b, out):
    # b (K, N) any layout -> out: panel p, step k, lane j = b[k, p NR + j] (0 beyond N)
    K, N = b.shape
    n_pan = (N + NR - 1) // NR
    for p in prange(n_pan):
        base = p * K * NR
        cols = min(NR, N - p * NR)
        for k in range(K):
            row = base + k * NR
            for j in range(cols):
                out[row + j] = b[k, p * NR + j]
            for j in range(cols, NR):
                out[row + j] = ZERO


def pack_b(b):
    """B (K, N) float32 (any strides: a weight's transpose W.T is read in place) -> the packed panels, 1-d,
    64-byte aligned, length ceil(N / NR) K NR."""
    K, N = b.shape
    out = _aligned_empty(-(-N // NR) * K * NR)
    if out.size:
        if b.flags.c_contiguous:
            _pack_rows(b, out, NR)
        else:
            _pack_b(b, out)
    return out


@njit(cache=True, parallel=True)
def _pack_a(a, out):
    # a (M, K) C-contiguous -> out: panel i, step k, lane r = a[i MR + r, k] (0 beyond M)
    M, K = a.shape
    n_pan = (M + MR - 1) // MR
    for i in prange(n_pan):
        base = i * K * MR
        rows = min(MR, M - i * MR)
        for r in range(rows):
            for k in range(K):
                out[base + k * MR + r] = a[i * MR + r, k]
        for r in range(rows, MR):
            for k in range(K):
                out[base + k * MR + r] = ZERO


@njit(cache=True, parallel=True)
def _pack_rows(src, out, width):
    # The pack of a row-major source whose rows are the k steps: src (K, L) C-contiguous -> out: panel p, step k,
    # lane j = src[k, p width + j] (0 beyond L), panels `width` lanes wide (pack_b: B itself, width NR; pack_a: A
    # given as its transpose, the backward's dy^T read in place, width MR). Walked in blocks of PACK_KB rows, each
    # block across all panels: the reads stream along PACK_KB rows, the writes fill PACK_KB width contiguous floats
    # per panel (a panel-by-panel walk would touch a new page of src at every k)
    K, L = src.shape
    n_pan = (L + width - 1) // width
    n_blk = (K + PACK_KB - 1) // PACK_KB
    for kb in prange(n_blk):
        k0 = kb * PACK_KB
        k1 = min(k0 + PACK_KB, K)
        for p in range(n_pan):
            base = p * K * width
            cols = min(width, L - p * width)
            c0 = p * width
            for k in range(k0, k1):
                row = base + k * width
                out[row:row + cols] = src[k, c0:c0 + cols]
                out[row + cols:row + width] = ZERO


def pack_a(a):
    """A (M, K) float32, C-contiguous or the transpose of a C-contiguous array (dy.T, read in place) -> the packed
    MR-row panels, 1-d, 64-byte aligned, length ceil(M / MR) MR K. Other layouts are copied first."""
    M, K = a.shape
    out = _aligned_empty(-(-M // MR) * MR * K)
    if out.size:
        if a.flags.c_contiguous:
            _pack_a(a, out)
        elif a.T.flags.c_contiguous:
            _pack_rows(a.T, out, MR)
        else:
            _pack_a(np.ascontiguousarray(a), out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the packed weight of a linear layer, kept until the weight changes


_VERSION = 0


def weights_changed():
    """Say that some weights were written in place (the optimizer calls this after each step): every packed copy
    made before is stale from now on."""
    global _VERSION
    _VERSION += 1


def weights_version() -> int:
    return _VERSION


class PackCache:
    """Packed copies of weight arrays: `get(w, transpose)` returns pack_b(w.T) (transpose=True, the forward's
    B = W^T) or pack_b(w) (the backward's B = W), packed at the first call and reused while the entry is valid.

    An entry is valid when the array is the same object (a weak reference: a freed array's id can be reused), its
    data pointer, shape and strides are unchanged, and `weights_version()` has not moved since it was packed.
    Entries die with their array."""

    def __init__(self):
        self._d: dict[tuple[int, bool], tuple] = {}

    def get(self, w, transpose: bool):
        key = (id(w), transpose)
        ent = self._d.get(key)
        sig = (w.ctypes.data, w.shape, w.strides, _VERSION)
        if ent is not None and ent[0]() is w and ent[1] == sig:
            return ent[2]
        packed = pack_b(w.T if transpose else w)
        self._d[key] = (weakref.ref(w, lambda _r, key=key: self._d.pop(key, None)), sig, packed)
        return packed

    def clear(self):
        self._d.clear()

    def __len__(self):
        return len(self._d)


PACKS = PackCache()


# ---------------------------------------------------------------------------------------------------------------
# the micro-kernel, as LLVM IR


def _arr(t, dtype, ndim):
    return isinstance(t, types.Array) and t.dtype == dtype and t.ndim == ndim and t.layout == "C"


@intrinsic
def _tile_avx512(typingctx, ap, aoff, lda, ars, bp, boff, ldb, kc, c, row0, col0, accumulate, bias):
    """C[row0:row0+MR, col0:col0+NR] (=|+=) sum over kc steps k of  ap[aoff + k lda + r ars] * bp[boff + k ldb + j]
    + bias[col0 + j]. ap, bp: 1-d float32, the packed panels (lda = MR, ars = 1, ldb = NR) or an operand read in
    place: B's NR values of a k step are consecutive (ldb: B's row length); A's MR values are consecutive (ars = 1)
    when A is given as its transpose (lda: that array's row length), or one row apart (lda = 1, ars: A's row
    length) when A is row-major; c: a
    C-contiguous 2-d float32 array holding the whole tile; bias: at least col0 + NR floats (zeros where no bias
    is added); the caller guarantees all of it (no bounds checks). The loop over k keeps the MR x NV
    accumulators as <16 x float> SSA values (zmm registers):
        b_v    = load <16 x float> bp + boff + k ldb + 16 v                        v < NV
        a_r    = broadcast of ap[aoff + k lda + r ars]                              r < MR
        acc_rv = llvm.fma(a_r, b_v, acc_rv)                                         vfmadd231ps
    then acc (+ C when accumulate) + bias is stored."""
    ok = (_arr(ap, types.float32, 1) and _arr(bp, types.float32, 1) and _arr(c, types.float32, 2)
          and _arr(bias, types.float32, 1) and isinstance(accumulate, types.Boolean)
          and all(isinstance(v, types.Integer) for v in (aoff, lda, ars, boff, ldb, kc, row0, col0)))
    if not ok:
        return None

    def codegen(context, builder, sig, args):
        from llvmlite import ir
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        vf = ir.VectorType(f32, 16)
        c64 = lambda n: ir.Constant(i64, n)  # noqa: E731
        ap_, aoff_, lda_, ars_, bp_, boff_, ldb_, kc_, c_, row0_, col0_, acc_flag, bias_ = args
        aoff_, lda_, ars_, boff_, ldb_, kc_, row0_, col0_ = (
            context.cast(builder, v, sig.args[i], types.int64)
            for v, i in ((aoff_, 1), (lda_, 2), (ars_, 3), (boff_, 5), (ldb_, 6), (kc_, 7), (row0_, 9),
                         (col0_, 10)))
        acc_flag = context.cast(builder, acc_flag, sig.args[11], types.boolean)
        fma = builder.module.declare_intrinsic("llvm.fma.v16f32", fnty=ir.FunctionType(vf, [vf] * 3))
        arr_a = context.make_array(sig.args[0])(context, builder, ap_)
        arr_b = context.make_array(sig.args[4])(context, builder, bp_)
        arr_c = context.make_array(sig.args[8])(context, builder, c_)
        arr_bias = context.make_array(sig.args[12])(context, builder, bias_)
        abase = builder.gep(builder.bitcast(arr_a.data, f32.as_pointer()), [aoff_])
        roff = [builder.mul(c64(r), ars_) for r in range(MR)]         # A's row r, outside the loop
        bbase = builder.gep(builder.bitcast(arr_b.data, f32.as_pointer()), [boff_])
        zero = ir.Constant(vf, None)
        undef = ir.Constant(vf, ir.Undefined)
        splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
        entry = builder.block
        loop = builder.append_basic_block("tile.loop")
        done = builder.append_basic_block("tile.done")
        builder.cbranch(builder.icmp_signed(">", kc_, c64(0)), loop, done)

        builder.position_at_end(loop)
        k = builder.phi(i64)
        acc = [[builder.phi(vf) for _ in range(NV)] for _ in range(MR)]
        k.add_incoming(c64(0), entry)
        for row in acc:
            for p in row:
                p.add_incoming(zero, entry)
        prow = builder.gep(bbase, [builder.mul(k, ldb_)])
        bv = [builder.load(builder.bitcast(builder.gep(prow, [c64(16 * v)]), vf.as_pointer()), align=4)
              for v in range(NV)]
        arow = builder.gep(abase, [builder.mul(k, lda_)])
        new = []
        for r in range(MR):
            x = builder.load(builder.gep(arow, [roff[r]]), align=4)
            xv = builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(i32, 0)), undef, splat)
            new.append([builder.call(fma, [xv, bv[v], acc[r][v]]) for v in range(NV)])
        k_next = builder.add(k, c64(1))
        k.add_incoming(k_next, loop)
        for r in range(MR):
            for v in range(NV):
                acc[r][v].add_incoming(new[r][v], loop)
        builder.cbranch(builder.icmp_signed("<", k_next, kc_), loop, done)

        builder.position_at_end(done)
        final = [[None] * NV for _ in range(MR)]
        for r in range(MR):                                            # LLVM wants the phis first in a block
            for v in range(NV):
                p = builder.phi(vf)
                p.add_incoming(zero, entry)
                p.add_incoming(new[r][v], loop)
                final[r][v] = p
        ldc = builder.extract_value(arr_c.strides, 0)                  # bytes per row of c
        cbase = builder.gep(builder.bitcast(arr_c.data, ir.IntType(8).as_pointer()),
                            [builder.add(builder.mul(row0_, ldc), builder.mul(col0_, c64(4)))])
        bb = builder.gep(builder.bitcast(arr_bias.data, f32.as_pointer()), [col0_])
        bvec = [builder.load(builder.bitcast(builder.gep(bb, [c64(16 * v)]), vf.as_pointer()), align=4)
                for v in range(NV)]
        for r in range(MR):
            crow = builder.gep(cbase, [builder.mul(c64(r), ldc)])
            for v in range(NV):
                pc = builder.bitcast(builder.gep(crow, [c64(64 * v)]), vf.as_pointer())
                # a select, not arithmetic: C is read (it lies inside the array) but used only when accumulating
                prev = builder.select(acc_flag, builder.load(pc, align=4), zero)
                builder.store(builder.fadd(builder.fadd(final[r][v], prev), bvec[v]), pc, align=4)
        return context.get_dummy_value()

    return types.void(ap, aoff, lda, ars, bp, boff, ldb, kc, c, row0, col0, accumulate, bias), codegen


@njit(cache=True)
def _tile_portable(ap, aoff, lda, ars, bp, boff, ldb, kc, c, row0, col0, accumulate, bias, acc):
    """_tile_avx512's tile in plain Numba, one row of the tile at a time: acc (NR,) float32 scratch; the loop over
    the NR columns is contiguous in bp and acc, so LLVM vectorises it with the CPU's vectors (a multiply and an
    add: no fastmath, so no FMA contraction)."""
    for r in range(MR):
        for j in range(NR):
            acc[j] = ZERO
        for k in range(kc):
            x = ap[aoff + k * lda + r * ars]
            brow = bp[boff + k * ldb:boff + k * ldb + NR]   # a view: indices from range(NR) are known >= 0, so
            for j in range(NR):                            # no wraparound test stops the vectoriser
                acc[j] += x * brow[j]
        for j in range(NR):
            prev = c[row0 + r, col0 + j] if accumulate else ZERO
            c[row0 + r, col0 + j] = (acc[j] + prev) + bias[col0 + j]


# ---------------------------------------------------------------------------------------------------------------
# the five loops


@intrinsic
def _fetch_add(typingctx, counter):
    """old = counter[0]; counter[0] += 1, atomically (an LLVM atomicrmw add): how the threads take chunks of work."""
    if not _arr(counter, types.int64, 1):
        return None

    def codegen(context, builder, sig, args):
        from llvmlite import ir
        arr = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", arr.data, ir.Constant(ir.IntType(64), 1), "seq_cst")

    return types.int64(counter), codegen


@njit(cache=True, parallel=True)
def _gemm_packed(ap, a_layout, aedge, bp, b_inplace, bedge, M, N, K, c, bias_pad, zeros_pad, nthreads, chunk_pan,
                 m_parts, kc_blk, mc_pan, nc_pan, portable, counter):
    """c (M, N) = A times B + bias_pad[:N]. A (a_layout): A_PACKED, packed panels (ap); A_TRANSPOSED, A's
    transpose (K, M) C-contiguous flattened (ap), read in place: A[i, k] at ap[k M + i], so A's k step of a panel
    is MR consecutive floats as in the pack; A_ROWS, A (M, K) C-contiguous flattened, read in place: A[i, k] at
    ap[i K + k], the MR values of a k step one row apart. Read in place, aedge holds A's last partial MR panel
    packed (K MR floats). B: packed
    panels (bp), or, with b_inplace, B (K, N) C-contiguous flattened, read in place: B[k, j] at bp[k N + j];
    bedge then holds B's last partial NR panel packed (K NR floats). In-place operands are read only in whole
    panels; the packed edge panels' zeros pad the edge tiles. bias_pad and zeros_pad hold ceil(N/NR) NR floats
    (bias_pad: the bias, zeros beyond; zeros_pad: zeros, for the KC blocks before the last). kc_blk: KC; mc_pan,
    nc_pan: MC and NC in MR and NR panels. portable: the Numba micro-kernel instead of the LLVM-IR one.

    The work is cut into chunks of `chunk_pan` NR panels of B times one of `m_parts` row ranges; each of the
    `nthreads` threads takes the next chunk from `counter` (an atomic add) until none is left, so a thread the OS
    delays holds up only the chunk it is on (a static split waits for its slowest part)."""
    m_pan = (M + MR - 1) // MR
    n_pan = (N + NR - 1) // NR
    n_chunks = (n_pan + chunk_pan - 1) // chunk_pan
    total = n_chunks * m_parts
    for _t in prange(nthreads):
        scratch = np.empty((MR, NR), np.float32)       # an edge tile
        acc = np.empty(NR, np.float32)                 # the portable kernel's accumulators
        while True:
            ch = _fetch_add(counter)
            if ch >= total:
                break
            mb = ch // n_chunks
            p0 = (ch - mb * n_chunks) * chunk_pan
            p1 = min(p0 + chunk_pan, n_pan)
            i0 = mb * m_pan // m_parts
            i1 = (mb + 1) * m_pan // m_parts
            for jc in range(p0, p1, nc_pan):                               # loop 5: NC columns
                jend = min(jc + nc_pan, p1)
                for pc in range(0, K, kc_blk):                             # loop 4: KC of K
                    kc = min(kc_blk, K - pc)
                    first = pc == 0
                    bias = bias_pad if pc + kc >= K else zeros_pad         # the bias goes in with the last block
                    for ic in range(i0, i1, mc_pan):                       # loop 3: MC rows
                        iend = min(ic + mc_pan, i1)
                        for jp in range(jc, jend):                         # loop 2: NR panels of B
                            col0 = jp * NR
                            bsrc, boff, ldb = bp, jp * K * NR + pc * NR, NR
                            if b_inplace:
                                if col0 + NR <= N:
                                    boff, ldb = pc * N + col0, N
                                else:
                                    bsrc, boff = bedge, pc * NR
                            for ip in range(ic, iend):                     # loop 1: MR panels of A
                                row0 = ip * MR
                                asrc, aoff, lda, ars = ap, ip * K * MR + pc * MR, MR, 1
                                if a_layout != A_PACKED:
                                    if row0 + MR > M:
                                        asrc, aoff = aedge, pc * MR
                                    elif a_layout == A_TRANSPOSED:
                                        aoff, lda = pc * M + row0, M
                                    else:
                                        aoff, lda, ars = row0 * K + pc, 1, K
                                if row0 + MR <= M and col0 + NR <= N:
                                    if portable:
                                        _tile_portable(asrc, aoff, lda, ars, bsrc, boff, ldb, kc, c, row0, col0,
                                                       not first, bias, acc)
                                    else:
                                        _tile_avx512(asrc, aoff, lda, ars, bsrc, boff, ldb, kc, c, row0, col0,
                                                     not first, bias)
                                    continue
                                # an edge tile: computed whole into scratch (the packs' padding is zeros), its
                                # valid part added with the same additions in the same order
                                if portable:
                                    _tile_portable(asrc, aoff, lda, ars, bsrc, boff, ldb, kc, scratch, 0, 0, False,
                                                   zeros_pad, acc)
                                else:
                                    _tile_avx512(asrc, aoff, lda, ars, bsrc, boff, ldb, kc, scratch, 0, 0, False,
                                                 zeros_pad)
                                for r in range(min(MR, M - row0)):
                                    for j in range(min(NR, N - col0)):
                                        prev = ZERO if first else c[row0 + r, col0 + j]
                                        c[row0 + r, col0 + j] = (scratch[r, j] + prev) + bias[col0 + j]


# ---------------------------------------------------------------------------------------------------------------
# kernel choice and the entry points


KERNELS = ("avx512", "portable")


@functools.cache
def avx512_available() -> bool:
    """True when Numba compiles for a CPU with AVX-512F (NUMBA_CPU_FEATURES when set, else llvmlite's host
    features): the micro-kernel's <16 x float> FMAs are then single zmm instructions."""
    from numba.core import config  # noqa: PLC0415
    feats = config.CPU_FEATURES
    if feats is None:
        import llvmlite.binding as ll  # noqa: PLC0415
        feats = ll.get_host_cpu_features().flatten()
    return "+avx512f" in set(feats.split(","))


def cpu_kernel(kernel: str | None = None) -> str:
    """The micro-kernel to use: `kernel` when given, else MINIDISTIL_GEMM_KERNEL, else "avx512" where available."""
    kernel = kernel or os.environ.get("MINIDISTIL_GEMM_KERNEL") or ("avx512" if avx512_available() else "portable")
    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {KERNELS} (or MINIDISTIL_GEMM_KERNEL), got {kernel!r}")
    if kernel == "avx512" and not avx512_available():
        raise ValueError("kernel: 'avx512' needs a CPU with AVX-512F, which Numba's target CPU lacks; use 'portable'")
    return kernel


def _padded_bias(bias, n_pad):
    out = np.zeros(n_pad, np.float32)
    if bias is not None:
        out[:bias.shape[0]] = bias
    return out


_NONE = np.zeros(0, np.float32)    # no edge panel


def _a_operand(a):
    """A (M, K) as the driver reads it: (source, layout, packed edge panel). A C-contiguous A (A_ROWS: the
    activations x of the forward, dy of dx = dy W) and the transpose of a C-contiguous array (A_TRANSPOSED: the
    backward's dy^T) are read in place, their last partial MR panel packed; anything else is packed."""
    M, K = a.shape
    layout = A_ROWS if a.flags.c_contiguous else A_TRANSPOSED if a.T.flags.c_contiguous else A_PACKED
    if layout == A_PACKED:
        return pack_a(a), A_PACKED, _NONE
    m0 = M - M % MR
    return (a if layout == A_ROWS else a.T).reshape(-1), layout, (pack_a(a[m0:]) if m0 < M else _NONE)


def _b_operand(b):
    """B (K, N) as the driver reads it, when it was not packed beforehand: a C-contiguous B (an activation x, or
    the weight W of dx = dy W) is read in place, its last partial NR panel packed; anything else is packed."""
    K, N = b.shape
    if b.flags.c_contiguous:
        n0 = N - N % NR
        return b.reshape(-1), True, (pack_b(b[:, n0:]) if n0 < N else _NONE)
    return pack_b(b), False, _NONE


def _run(a, bsrc, b_inplace, bedge, N, bias, out, kernel, threads):
    kernel = cpu_kernel(kernel)
    M, K = a.shape
    n_pad = -(-N // NR) * NR
    c = np.empty((M, N), np.float32) if out is None else out
    if M == 0 or N == 0:
        return c
    if K == 0:
        c[:] = _padded_bias(bias, n_pad)[:N]
        return c
    asrc, a_layout, aedge = _a_operand(a)
    m_pan, n_pan = -(-M // MR), n_pad // NR
    threads = threads or get_num_threads()
    # chunks: about CHUNKS_PER_THREAD per thread. A chunk of columns reads all of A, a chunk of rows all of B, so
    # the larger operand is the one cut (A is M x K, B is K x N): runs of whole NR panels when B is the larger, row
    # ranges when A is (dW of the vocabulary projection: 30522 rows by 768 columns); the other is cut too only
    # when the first gives too few chunks
    want = CHUNKS_PER_THREAD * threads
    if M > N:
        m_parts = min(m_pan, want)
        chunk_pan = max(1, n_pan // -(-want // m_parts))
    else:
        chunk_pan = max(1, n_pan // want)
        m_parts = max(1, min(m_pan, -(-want // -(-n_pan // chunk_pan))))
    threads = max(1, min(threads, -(-n_pan // chunk_pan) * m_parts))
    _gemm_packed(asrc, a_layout, aedge, bsrc, b_inplace, bedge, M, N, K, c, _padded_bias(bias, n_pad),
                 np.zeros(n_pad, np.float32), threads, chunk_pan, m_parts, KC, max(1, MC // MR), max(1, NC // NR),
                 kernel == "portable", np.zeros(1, np.int64))
    return c


def gemm_packed(a, bp, N, bias=None, out=None, kernel: str | None = None, threads: int | None = None):
    """C (M, N) = a (M, K) @ B + bias, for B already packed by pack_b (bp: its panels, N: its columns).
    a float32: C-contiguous (packed here), or the transpose of a C-contiguous array (read in place);
    out (M, N) float32 C-contiguous, or None for a new array."""
    M, K = a.shape
    if bp.shape[0] != -(-N // NR) * NR * K:
        raise ValueError(f"bp: expected {-(-N // NR) * NR * K} packed floats for K = {K}, N = {N}, "
                         f"got {bp.shape[0]}")
    return _run(a, bp, False, _NONE, N, bias, out, kernel, threads)


def gemm(a, b, bias=None, out=None, kernel: str | None = None, threads: int | None = None):
    """C (M, N) = a (M, K) @ b (K, N) + bias, neither operand packed beforehand (the backward's products, whose
    operands change at every call): a C-contiguous b and a transposed C-contiguous a (dy^T) are read in place,
    other layouts packed here. float32; out (M, N) float32 C-contiguous, or None for a new array."""
    if a.dtype != np.float32 or b.dtype != np.float32 or a.ndim != 2 or b.ndim != 2 or b.shape[0] != a.shape[1]:
        raise ValueError(f"a, b: expected float32 (M, K) and (K, N), got {a.dtype} {tuple(a.shape)} and "
                         f"{b.dtype} {tuple(b.shape)}")
    bsrc, b_inplace, bedge = _b_operand(b)
    return _run(a, bsrc, b_inplace, bedge, b.shape[1], bias, out, kernel, threads)


@njit(cache=True, parallel=True)
def _heads_gemm(a, b, out, portable):
    # out[x, y] = a[x, y] @ b[x, y] for each of the X Y pairs (4-d arrays, any strides): one pair per prange step; its
    # operands packed (small: rows x K and K x N), every tile computed whole into a scratch tile (the packs' zero
    # padding fills the edges) and its valid part copied out, all K in one block (K is a head's width or the rows)
    X, Y, M, K = a.shape
    N = b.shape[3]
    m_pan = (M + MR - 1) // MR
    n_pan = (N + NR - 1) // NR
    a_rows = a.strides[3] <= a.strides[2]
    b_rows = b.strides[3] <= b.strides[2]
    out_rows = out.strides[3] <= out.strides[2]
    for g in prange(X * Y):
        x, y = g // Y, g % Y
        ap = np.empty(m_pan * K * MR, np.float32)
        bp = np.empty(n_pan * K * NR, np.float32)
        ap[(m_pan - 1) * K * MR:] = ZERO                     # the last panels: their padding is zeros
        bp[(n_pan - 1) * K * NR:] = ZERO
        scratch = np.empty((MR, NR), np.float32)
        acc = np.empty(NR, np.float32)
        zeros = np.zeros(NR, np.float32)
        # the packs and the copy out walk each operand along its contiguous axis (a transposed view's other one)
        if a_rows:
            for i in range(M):                              # A's MR-row panels, k-major
                base = (i // MR) * K * MR + i % MR
                for k in range(K):
                    ap[base + k * MR] = a[x, y, i, k]
        else:
            for k in range(K):
                for i in range(M):
                    ap[(i // MR) * K * MR + i % MR + k * MR] = a[x, y, i, k]
        if b_rows:
            for k in range(K):                              # B's NR-column panels, k-major
                for j in range(N):
                    bp[(j // NR) * K * NR + k * NR + j % NR] = b[x, y, k, j]
        else:
            for j in range(N):
                base = (j // NR) * K * NR + j % NR
                for k in range(K):
                    bp[base + k * NR] = b[x, y, k, j]
        for jp in range(n_pan):
            col0 = jp * NR
            cols = min(NR, N - col0)
            for ip in range(m_pan):
                row0 = ip * MR
                if portable:
                    _tile_portable(ap, ip * K * MR, MR, 1, bp, jp * K * NR, NR, K, scratch, 0, 0, False, zeros, acc)
                else:
                    _tile_avx512(ap, ip * K * MR, MR, 1, bp, jp * K * NR, NR, K, scratch, 0, 0, False, zeros)
                rows = min(MR, M - row0)
                if out_rows:
                    for r in range(rows):
                        for j in range(cols):
                            out[x, y, row0 + r, col0 + j] = scratch[r, j]
                else:
                    for j in range(cols):
                        for r in range(rows):
                            out[x, y, row0 + r, col0 + j] = scratch[r, j]


def heads_gemm(a, b, out, kernel: str | None = None):
    """out[x, y] = a[x, y] @ b[x, y] for every (x, y): a (X, Y, M, K), b (X, Y, K, N), out (X, Y, M, N), float32,
    any strides (attention's head products on (B, H, T, D) views of q, k, v and their transposes: kernels/
    attention.py), the pairs shared by Numba's threads. Each product within `error_bound`'s bound."""
    if a.ndim != 4 or b.ndim != 4 or out.ndim != 4 or a.shape[:2] != b.shape[:2] or out.shape[:2] != a.shape[:2] \
            or a.shape[3] != b.shape[2] or out.shape[2:] != (a.shape[2], b.shape[3]):
        raise ValueError(f"a, b, out: expected (X, Y, M, K), (X, Y, K, N), (X, Y, M, N), got {a.shape}, {b.shape}, "
                         f"{out.shape}")
    if out.size == 0:
        return out
    if a.shape[3] == 0:
        out[...] = 0
        return out
    M, N = a.shape[2], b.shape[3]
    if -(-N // NR) * NR * -(-M // MR) * MR > -(-M // NR) * NR * -(-N // MR) * MR:
        # fewer padded tiles the other way round (P V with a head width of 64: 1.5 NR panels): out^T = b^T a^T
        a, b, out = b.transpose(0, 1, 3, 2), a.transpose(0, 1, 3, 2), out.transpose(0, 1, 3, 2)
    _heads_gemm(a, b, out, cpu_kernel(kernel) == "portable")
    return out


def mode() -> str:
    """MINIDISTIL_GEMM as it concerns this kernel: "auto" (unset or "auto": the linear layers use it where
    `use_own_gemm` says), "own" (all three products of every linear layer, whatever their shape: for tests and
    for measuring), "openblas" ("openblas", "blas" or "blocks": never; kernels/_blas.py runs every product)."""
    v = os.environ.get("MINIDISTIL_GEMM", "auto").strip().lower() or "auto"
    if v in ("openblas", "blas", "blocks"):
        return "openblas"
    if v not in ("auto", "own"):
        raise ValueError(f"MINIDISTIL_GEMM: expected auto, own, openblas or blocks, got {v!r}")
    return v


def use_own_gemm(M: int, K: int, N: int, product: str = "forward") -> bool:
    """The dispatch rule (module docstring): True when the product (M, K) @ (K, N) of a linear layer should run
    here; `product` is which of its three: "forward" (y = x W^T), "dx" (dy W) or "dw" (dy^T x)."""
    if product not in PRODUCTS:
        raise ValueError(f"product: expected one of {PRODUCTS}, got {product!r}")
    m = mode()
    if m != "auto":
        return m == "own"
    if cpu_kernel() != "avx512":
        return False
    if product == "dw":             # M = Cout, K = the batch's rows, N = Cin
        return K >= MIN_M and M >= MIN_KN and N >= MIN_KN
    return M >= MIN_M and K >= MIN_KN and N >= MIN_KN


def gemm_cpu(a, b, bias=None, kernel: str | None = None):
    """C = a (M, K) @ b (K, N) + bias (N,) or None, float32, checked: `gemm` (gemm_packed for a packed b)."""
    _checks.check_array("a", a, ndim=2, contiguous=False)
    _checks.check_array("b", b, ndim=2, contiguous=False)
    if b.shape[0] != a.shape[1]:
        raise ValueError(f"b: expected {a.shape[1]} rows to match a {tuple(a.shape)}, got {tuple(b.shape)}")
    if bias is not None:
        _checks.check_array("bias", bias, ndim=1, shape=(b.shape[1],))
    return gemm(a, b, bias, kernel=kernel)


def avx512_assembly() -> str:
    """The assembly of the GEMM driver, compiled afresh (code Numba loaded from its on-disk cache cannot be
    inspected), to check that the micro-kernel is zmm FMAs (vfmadd231ps ... zmm). Needs a CPU with AVX-512F."""
    drive = njit(parallel=True)(_gemm_packed.py_func)
    a = _aligned_empty(MR * 4)
    a[:] = 1.0
    bp = pack_b(np.ones((4, NR), np.float32))
    c = np.empty((MR, NR), np.float32)
    z = np.zeros(NR, np.float32)
    drive(a, A_PACKED, _NONE, bp, False, _NONE, MR, NR, 4, c, z, z, 1, 1, 1, KC, 1, 1, False, np.zeros(1, np.int64))
    return "\n".join(drive.inspect_asm(sig) for sig in drive.signatures)


# ---------------------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def product_shape(product: str, T: int, cin: int, cout: int) -> tuple[int, int, int]:
    """The GEMM's (M, K, N) for one product of a linear layer x (T, Cin) -> y (T, Cout):
    forward y = x W^T (T, Cin, Cout), dx = dy W (T, Cout, Cin), dW = dy^T x (Cout, T, Cin)."""
    return {"forward": (T, cin, cout), "dx": (T, cout, cin), "dw": (cout, T, cin)}[product]


def _product_runs(product: str, T: int, cin: int, cout: int, r, kernel):
    """The operands of one product of a linear layer and the calls that compute it: {name: fn}. "openblas" is
    numpy's matmul as kernels/linear.py calls it; "own" is this GEMM as the linear layer calls it (the forward
    with W^T packed beforehand, kept in PACKS; dx = dy W with dy packed and W read in place; dW = dy^T x with
    both read in place); the others are the alternatives the rule was chosen against (W packed at the call or
    before it, a cached pack's case; x packed at the call)."""
    x = r.standard_normal((T, cin), dtype=np.float32)
    w = (r.standard_normal((cout, cin)) * 0.02).astype(np.float32)
    dy = r.standard_normal((T, cout), dtype=np.float32)
    M, _, N = product_shape(product, T, cin, cout)
    o1, o2, o3 = (np.empty((M, N), np.float32) for _ in range(3))
    if product == "forward":
        bp = pack_b(w.T)
        return {"openblas": lambda: np.matmul(x, w.T, out=o1),
                "own": lambda: gemm_packed(x, bp, N, out=o2, kernel=kernel)}
    o4 = np.empty((M, N), np.float32)
    if product == "dx":
        bp = pack_b(w)
        return {"openblas": lambda: np.matmul(dy, w, out=o1),
                "own": lambda: gemm(dy, w, out=o2, kernel=kernel),
                "own, W packed at the call": lambda: gemm_packed(dy, pack_b(w), N, out=o3, kernel=kernel),
                "own, W packed before": lambda: gemm_packed(dy, bp, N, out=o4, kernel=kernel)}
    return {"openblas": lambda: np.matmul(dy.T, x, out=o1),
            "own": lambda: gemm(dy.T, x, out=o2, kernel=kernel),
            "own, x packed at the call": lambda: gemm_packed(dy.T, pack_b(x), N, out=o3, kernel=kernel)}


def compare_openblas(shapes, rounds: int = 7, kernel: str | None = None, log=print, product: str = "forward",
                     ) -> list[dict]:
    """One product of a linear layer (`product`: "forward" y = x W^T, "dx" = dy W or "dw" = dy^T x; shapes are
    the layer's (T, Cin, Cout), T the rows of x) by numpy's OpenBLAS (what kernels/linear.py runs without this
    GEMM) and by this GEMM as the linear layer runs it (`_product_runs`), interleaved: each round times two calls
    of each, one after the other, so that all see the same load, starting with each in turn (the one timed right
    after another can find its threads still busy); the medians over `rounds`. Numba's workers must sleep at once
    (OMP_WAIT_POLICY=PASSIVE, `main` says so): where they spin a few ms after a parallel loop (GOMP_SPINCOUNT,
    minidistil/core/_runtime.py), OpenBLAS timed right after this GEMM shares its cores with them. Returns one
    dict per
    shape: the GEMM's M, K, N, GFLOP/s of each run, and "ratio" = own / OpenBLAS."""
    r = np.random.default_rng(0)
    rows = []
    for T, cin, cout in shapes:
        runs = {k: (fn, []) for k, fn in _product_runs(product, T, cin, cout, r, kernel).items()}
        for fn, _ in runs.values():                                    # warm-up (and compilation)
            fn()
        order = list(runs.values())
        for i in range(rounds):
            for fn, times in order[i % len(order):] + order[:i % len(order)]:   # each run first in turn
                t0 = time.perf_counter()
                fn()
                fn()
                times.append((time.perf_counter() - t0) / 2)
        M, K, N = product_shape(product, T, cin, cout)
        flops = 2.0 * M * K * N
        row = {"product": product, "M": M, "K": K, "N": N}
        row.update({k: flops / float(np.median(t)) / 1e9 for k, (_, t) in runs.items()})
        row["ratio"] = row["own"] / row["openblas"]
        extra = "".join(f"  {k} {row[k]:.1f} ({row[k] / row['openblas']:.2f})" for k in runs
                        if k not in ("openblas", "own"))
        log(f"  bench    {product:7s} M={M:5d} K={K:5d} N={N:5d}  OpenBLAS {row['openblas']:7.1f}  own "
            f"{row['own']:7.1f} GFLOP/s  own/OpenBLAS {row['ratio']:.2f}{extra}")
        rows.append(row)
    return rows


# the linear layers' (T, Cin, Cout): T = B T rows at B = 8, T = 32 and 128; DistilBERT-base's attention output and
# FFN (768, 3072 wide), the MiniLM student's (384, 1536)
MODEL_SHAPES = [(T, cin, cout) for T in (256, 1024)
                for cin, cout in ((768, 768), (768, 3072), (3072, 768), (384, 384), (384, 1536), (1536, 384))]


def main(argv=None):
    args = _checks.lab_options("gemm", argv)
    rep = _checks.Report("gemm")
    r = _checks.rng(0)
    kernels = ["portable"] + (["avx512"] if avx512_available() else [])
    if "avx512" not in kernels:
        rep.skip("avx512", "Numba's target CPU has no AVX-512F")

    def check(name, c, a, b, bias=None):
        exact, bound = gemm_ref(a, b, bias), error_bound(a, b, bias)
        err = np.abs(c - exact)
        rep.check(name, "> bound", np.maximum(err - bound, 0.0), np.zeros_like(err), atol=0)
        print(f"  {'':9}{name}: max |C - A B - bias| / bound = {(err / bound).max():.4f}")

    # validation: within the derived bound, at awkward sizes (M, N not multiples of the tile, K across KC blocks)
    # and at the model's
    shapes = [(1, 13, 5), (7, 13, 13), (13, 385, 49), (37, 800, 97)]
    if args.size == "base":
        shapes += [(256, 768, 3072), (1024, 3072, 768)]
    for M, K, N in shapes:
        a = r.standard_normal((M, K)).astype(np.float32)
        b = r.standard_normal((K, N)).astype(np.float32)
        bias = r.standard_normal(N).astype(np.float32)
        for k in kernels:
            check(f"{k} {M}x{K}x{N}", gemm_cpu(a, b, bias, kernel=k), a, b, bias)
    # the three products of a linear layer x (T, Cin) -> (T, Cout), as kernels/linear.py calls them: the forward
    # with W^T packed, dx = dy W with W read in place, dW = dy^T x with dy^T and x read in place
    layers = [(7, 13, 50), (37, 97, 49)] + ([(256, 768, 3072), (1024, 3072, 768)] if args.size == "base" else [])
    for T, cin, cout in layers:
        x = r.standard_normal((T, cin)).astype(np.float32)
        w = (r.standard_normal((cout, cin)) * 0.02).astype(np.float32)
        bias = r.standard_normal(cout).astype(np.float32)
        dy = r.standard_normal((T, cout)).astype(np.float32)
        for k in kernels:
            check(f"{k} forward {T}x{cin}->{cout}", gemm_packed(x, pack_b(w.T), cout, bias, kernel=k), x, w.T, bias)
            check(f"{k} dx {T}x{cin}->{cout}", gemm(dy, w, kernel=k), dy, w)
            check(f"{k} dW {T}x{cin}->{cout}", gemm(dy.T, x, kernel=k), dy.T, x)
    if args.no_bench:
        return rep.finish()

    print(f"  CPU: {_cpu_model()}; {get_num_threads()} Numba threads; load average before "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if os.environ.get("GOMP_SPINCOUNT", "0") != "0":
        print(f"  note: Numba's workers spin after each parallel loop (GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}), "
              "so OpenBLAS timed after this GEMM shares the cores with them; for the two GEMMs alone run "
              "OMP_WAIT_POLICY=PASSIVE python -m minidistil.kernels.gemm")
    k = cpu_kernel()
    for product, what in (("forward", "y = x W^T"), ("dx", "dx = dy W"), ("dw", "dW = dy^T x")):
        print(f"  kernel {k} (the one this CPU runs): {what}, OpenBLAS and own interleaved, medians of 7 rounds")
        compare_openblas(MODEL_SHAPES, kernel=k, product=product)
    print(f"  load average after {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
