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
# # 10 · GPU kernels with numba.cuda
#
# Every op in `minidistil.kernels` has a numba.cuda version beside its Numba CPU one. This chapter writes two
# kernels from scratch, the two patterns all the others use, then runs the library's kernels on device arrays.
#
# * **elementwise**: one thread per element; `i = cuda.grid(1)` is the thread's global index
#   (`blockIdx.x * blockDim.x + threadIdx.x`), and threads past the end do nothing;
# * **row reduction**: one *block* per row; each thread sums a strided share of the row, then the block combines
#   the partial sums through **shared memory**, halving the number of active threads at each step, with
#   `cuda.syncthreads()` between steps (no warp shuffles: the simulator lacks them).
#
# **No GPU?** Setting `NUMBA_ENABLE_CUDASIM=1` *before numba is imported* runs the same kernels on the CUDA
# simulator: each GPU thread becomes a Python thread. It is slow, so shapes stay tiny, but it checks the indexing,
# the synchronisation and the results. In Colab, choose a GPU runtime to run them for real.

# %%
# Set-up shared by every chapter: CUDA simulator when there is no GPU, figures to files outside Jupyter, OUT.
from minidistil.apps.tutorial import setup

OUT = setup()

import math
import os

import matplotlib.pyplot as plt
import numpy as np
from numba import cuda, float32

from minidistil.kernels import _checks, _cuda

HAVE_GPU = os.path.exists("/dev/nvidiactl")
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"              # setup() set it when HAVE_GPU is False
print("running on", "the CUDA simulator" if SIM else "a GPU:", "" if SIM else cuda.get_current_device().name)
assert cuda.is_available()
THREADS = _cuda.THREADS                                          # 32 on the simulator, 256 on a GPU

# %% [markdown]
# ## 1. Elementwise: GELU, one thread per element
#
# Constants are float32 (`np.float32(0.5)`): a bare `0.5` is a float64 and would turn the arithmetic into float64,
# which on most GPUs runs 2 to 64 times slower.

# %%
HALF = np.float32(0.5)
ONE = np.float32(1.0)
INV_SQRT2 = np.float32(1 / math.sqrt(2))


@cuda.jit
def gelu_kernel(x, y):
    i = cuda.grid(1)                                             # this thread's element
    if i < x.size:                                               # the last block may stick out past the end
        y[i] = HALF * x[i] * (ONE + math.erf(x[i] * INV_SQRT2))


x = np.linspace(-4, 4, 100).astype(np.float32)
x_dev = cuda.to_device(x)                                        # host -> device copy
y_dev = cuda.device_array_like(x_dev)                            # uninitialised device memory
blocks = (x.size + THREADS - 1) // THREADS                       # enough blocks to cover every element
gelu_kernel[blocks, THREADS](x_dev, y_dev)                       # launch: [blocks, threads per block]
y = y_dev.copy_to_host()                                         # device -> host copy

from scipy.special import erf

ref = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / np.sqrt(2)))
tol = _checks.f32_tol(1, scale=4)
_checks.assert_close(y, ref, atol=tol, rtol=tol, name="gelu")
print(f"{blocks} blocks x {THREADS} threads for {x.size} elements; max |err| {np.abs(y - ref).max():.1e}")

# %% [markdown]
# ## 2. A row reduction in shared memory: the row sums of a matrix
#
# With `THREADS = 8` and a row of 20: thread `t` sums elements `t, t+8, t+16`; the 8 partial sums go to shared
# memory; then 4 threads add pairs `buf[t] += buf[t+4]`, then 2, then 1, with a barrier between steps so no
# thread reads a value before it is written. Thread 0 writes `buf[0]`. The shared array's size must be a
# compile-time constant (`THREADS`, a module global captured when the kernel compiles).

# %%
@cuda.jit
def row_sum_kernel(a, out):
    row = cuda.blockIdx.x                                        # one block per row
    t = cuda.threadIdx.x
    n = a.shape[1]
    buf = cuda.shared.array(THREADS, float32)
    acc = float32(0.0)
    j = t
    while j < n:                                                 # strided share of the row
        acc += a[row, j]
        j += THREADS
    buf[t] = acc
    cuda.syncthreads()
    s = THREADS // 2
    while s > 0:                                                 # tree reduction: log2(THREADS) steps
        if t < s:
            buf[t] += buf[t + s]
        cuda.syncthreads()
        s //= 2
    if t == 0:
        out[row] = buf[0]


A = np.random.default_rng(0).standard_normal((5, 77)).astype(np.float32)   # 77: not a multiple of THREADS
sums_dev = cuda.device_array(5, dtype=np.float32)
row_sum_kernel[5, THREADS](cuda.to_device(A), sums_dev)
sums = sums_dev.copy_to_host()
ref = A.astype(np.float64).sum(1)
_checks.assert_close(sums, ref, atol=_checks.f32_tol(77, scale=np.abs(A).max()), name="row sums")
print("row sums:", np.round(sums, 4), "max |err|", f"{np.abs(sums - ref).max():.1e}")

# %% [markdown]
# ## 3. The library's kernels on device arrays
#
# Every public kernel function dispatches on its input: NumPy arrays go to the Numba CPU version, numba.cuda
# device arrays to the CUDA one. A small encoder sub-layer, `LN(x + W2 gelu(W1 x + b1) + b2)`, run both ways:
# the data stays on the device between kernels, only the result is copied back.

# %%
from minidistil.kernels import gelu as G
from minidistil.kernels import layernorm as LN
from minidistil.kernels import linear as LIN

rng = np.random.default_rng(1)
B, T, C, Fh = 2, 3, 16, 32
xs = rng.standard_normal((B, T, C)).astype(np.float32)
W1 = (rng.standard_normal((Fh, C)) / 4).astype(np.float32)
b1 = (rng.standard_normal(Fh) / 10).astype(np.float32)
W2 = (rng.standard_normal((C, Fh)) / 6).astype(np.float32)
b2 = (rng.standard_normal(C) / 10).astype(np.float32)
g, beta = np.ones(C, np.float32), np.zeros(C, np.float32)


def ffn_block(x, W1, b1, W2, b2, g, beta):
    h, _ = LIN.linear_forward(x, W1, None)                       # (B, T, F)
    a, _ = G.bias_gelu_forward(h, b1)                            # (B, T, F)
    f, _ = LIN.linear_forward(a, W2, b2)                         # (B, T, C)
    y, _ = LN.residual_layernorm_forward(f, x, g, beta, 1e-12)   # (B, T, C)
    return y


y_cpu = ffn_block(xs, W1, b1, W2, b2, g, beta)
dev = [_cuda.to_device(a) for a in (xs, W1, b1, W2, b2, g, beta)]
y_gpu_dev = ffn_block(*dev)
assert _cuda.is_device_array(y_gpu_dev)                          # it never left the device
y_gpu = _cuda.to_host(y_gpu_dev)
err = np.abs(y_gpu - y_cpu).max()
print(f"FFN block: max |GPU - CPU| = {err:.1e}")
# two float32 implementations, sums of up to F = 32 terms in different orders, then a normalisation by rstd ~ 1
assert err <= 2 * _checks.f32_tol(Fh, scale=8)

# %% [markdown]
# ## 4. Gradients on the device too
#
# The backward kernels take the caches the forward ones returned (device arrays inside) and return device
# arrays. We check the layer norm's backward against the CPU one.

# %%
dy = rng.standard_normal((B, T, C)).astype(np.float32)
_, c_cpu = LN.layernorm_forward(xs, g, beta, 1e-12)
_, c_gpu = LN.layernorm_forward(dev[0], dev[5], dev[6], 1e-12)
grads_cpu = LN.layernorm_backward(dy, c_cpu)
grads_gpu = [_cuda.to_host(a) for a in LN.layernorm_backward(_cuda.to_device(dy), c_gpu)]
t_y, t_dx, t_dw, t_db = LN.tolerances(*(a.astype(np.float64) for a in (xs, g, beta, dy)), 1e-12)
for name, a, b_, t in zip(("dx", "dw", "db"), grads_gpu, grads_cpu, (t_dx, t_dw, t_db)):
    _checks.assert_close(a, b_, atol=2 * t, name=name)           # each within t of the exact value
    print(f"layer norm {name}: max |GPU - CPU| = {np.abs(a - b_).max():.1e}")

# %% [markdown]
# ## 5. Benchmark (a real GPU only)
#
# Timing the simulator says nothing about a GPU, so on the simulator we stop here. On a GPU, kernel launches are
# asynchronous: the timer must wait for the device (`cuda.synchronize()`) before reading the clock.

# %%
if SIM:
    print("simulator: no benchmark (run this chapter on a GPU, e.g. a Colab GPU runtime)")
    assert not HAVE_GPU
else:
    n = 1 << 24
    xb = cuda.to_device(np.random.default_rng(0).standard_normal(n).astype(np.float32))
    yb = cuda.device_array_like(xb)
    ms = _checks.bench(lambda: gelu_kernel[(n + THREADS - 1) // THREADS, THREADS](xb, yb), warmup=2, repeat=10,
                       sync=cuda.synchronize)
    xh = xb.copy_to_host()
    ms_cpu = _checks.bench(lambda: G.gelu_forward(xh), warmup=1, repeat=5)
    print(f"GELU on 16 M floats: GPU {ms:.3f} ms ({2 * 4 * n / ms / 1e6:.0f} GB/s), Numba CPU {ms_cpu:.2f} ms")
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(["GPU", "CPU"], [ms, ms_cpu])
    ax.set_ylabel("ms")
    fig.tight_layout()
    fig.savefig(OUT / "10_gpu_vs_cpu.png", dpi=80)
    plt.show()
    assert ms > 0

# %% [markdown]
# ## Exercise
#
# `minidistil grade cuda_row_max` (your own copy of the stubs: `minidistil exercises copy my_exercises`): write a
# row-maximum kernel in the shape of section 2's row sum; on a machine without a GPU run it on the simulator,
# `NUMBA_ENABLE_CUDASIM=1 minidistil grade cuda_row_max my_exercises/cuda_row_max.py`.
#
# ## Try it
#
# 1. Remove the `cuda.syncthreads()` inside section 2's tree loop. On the simulator, does the result change? Why
#    is the code wrong all the same on a GPU?
# 2. Change `THREADS` to 16 and the row length to 5 (fewer columns than threads): which threads sum nothing, and
#    is the result still right?
# 3. Turn the row sum into a row *maximum*: what must the running value start at? (That is the exercise.)
