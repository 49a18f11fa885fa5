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
# Three levers, each measured here on this machine (numbers vary with the hardware and with whatever else runs
# on it, so the chapter **prints** timings and **asserts** only that the fast versions compute the same thing):
#
# 1. **BLAS for the matrix products.** `linear` is ~90% of a transformer's FLOPs. A hand-written loop nest, even
#    JIT-compiled, cannot match an optimised GEMM (cache blocking, packing, SIMD micro-kernels), so
#    `kernels/linear.py` calls `x @ w.T` (OpenBLAS / MKL sgemm) on the CPU.
# 2. **Fusion for the memory-bound ops.** GELU, layer norm, softmax, the losses do a few flops per byte: their
#    speed is memory traffic. Fusing two ops (bias + GELU, residual + layer norm) saves a full write and read of
#    a temporary.
# 3. **Threads.** Numba's `prange` spreads rows over cores; BLAS has its own pool. They must not fight.
#
# Time is a median after warm-up (`_common.bench`); the first call of a Numba kernel compiles it.
#
# On a machine shared with other jobs the parallel kernels wait for free cores, and their times jump in steps of
# the scheduler's time slice (often ~10 ms): run the chapter on an idle machine to see the real ratios.

# %%
# Setup shared by every chapter (in Colab: `!pip install -e /path/to/minidistil` first, then restart).
import os
import sys
import tempfile
from pathlib import Path

if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numba
import numpy as np
from numba import njit, prange

OUT = Path(os.environ.get("MINIDISTIL_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="minidistil_tutorial_"))
OUT.mkdir(parents=True, exist_ok=True)

from minidistil.kernels import _common
from minidistil.kernels import gelu as G
from minidistil.kernels import layernorm as LN
from minidistil.kernels import linear as LIN

print(f"numba {numba.__version__}, {numba.config.NUMBA_NUM_THREADS} Numba threads, {os.cpu_count()} CPUs")
timings = {}
assert numba.get_num_threads() >= 1

# %% [markdown]
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
tol = _common.f32_tol(Cin, scale=np.abs(x).max() * np.abs(w).max() * np.sqrt(Cin))
_common.assert_close(y_blas, y64, atol=tol, name="BLAS")
_common.assert_close(y_loop, y64, atol=tol, name="loops")
flops = 2 * N * Cin * Cout
timings["matmul: Numba loops"] = _common.bench(lambda: matmul_loops(x, wt), warmup=1, repeat=5)
timings["matmul: BLAS (linear kernel)"] = _common.bench(lambda: LIN.linear_forward(x, w, None), warmup=1, repeat=5)
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
_common.assert_close(fused, numpy_ref, atol=_common.f32_tol(1, scale=8), rtol=_common.f32_tol(1, scale=8))
timings["bias+GELU: NumPy"] = _common.bench(lambda: G.gelu_forward_ref(h + b), warmup=1, repeat=5)
timings["bias+GELU: Numba unfused"] = _common.bench(lambda: G.gelu_forward(h + b), warmup=1, repeat=5)
timings["bias+GELU: Numba fused"] = _common.bench(lambda: G.bias_gelu_forward(h, b), warmup=1, repeat=5)

xr = rng.standard_normal((N2, C2)).astype(np.float32)
rr = rng.standard_normal((N2, C2)).astype(np.float32)
lw, lb = np.ones(C2, np.float32), np.zeros(C2, np.float32)
y_f, _ = LN.residual_layernorm_forward(xr, rr, lw, lb, 1e-12)
y_u, _ = LN.layernorm_forward(xr + rr, lw, lb, 1e-12)
assert np.allclose(y_f, y_u, rtol=0, atol=1e-5)
timings["residual+LN: NumPy"] = _common.bench(lambda: LN.layernorm_forward_ref(xr + rr, lw, lb, 1e-12), warmup=1,
                                              repeat=5)
timings["residual+LN: Numba unfused"] = _common.bench(lambda: LN.layernorm_forward(xr + rr, lw, lb, 1e-12),
                                                      warmup=1, repeat=5)
timings["residual+LN: Numba fused"] = _common.bench(lambda: LN.residual_layernorm_forward(xr, rr, lw, lb, 1e-12),
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
    results[n] = _common.bench(lambda: G.bias_gelu_forward(h, b), warmup=1, repeat=5)
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
layer_ms = {name: _common.bench(fn, warmup=1, repeat=5) for name, fn in layer.items()}
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
