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
# # 01 · GELU: the exact erf form, the tanh approximation, and three implementations
#
# Every kernel chapter takes the same path: **the maths → a NumPy reference → a check against finite differences
# and PyTorch → the hand-derived backward → the Numba version and why it is faster → the numba.cuda version →
# a benchmark.** Every cell ends in an `assert`, so if the library drifts this chapter fails in CI.
#
# BERT and DistilBERT use the *exact* GELU
#
# $$\mathrm{gelu}(x) = x\,\Phi(x) = \tfrac12 x \left(1 + \operatorname{erf}(x/\sqrt2)\right),$$
#
# with $\Phi$ the standard normal CDF. GPT-2 popularised the tanh approximation
# $\tfrac12 x\,(1 + \tanh(\sqrt{2/\pi}\,(x + 0.044715\,x^3)))$. Its derivative (product rule, $\Phi' = \varphi$):
#
# $$\mathrm{gelu}'(x) = \Phi(x) + x\,\varphi(x), \qquad \varphi(x) = e^{-x^2/2}/\sqrt{2\pi}.$$
#
# The kernel lives in `kernels/gelu.py` (`python -m minidistil.kernels.gelu` validates and benchmarks it).

# %%
# Set-up shared by every chapter: CUDA simulator when there is no GPU, figures to files outside Jupyter, OUT.
from minidistil.apps.tutorial import setup

OUT = setup()

import matplotlib.pyplot as plt
import numpy as np

from minidistil.kernels import _checks, _cuda
from minidistil.kernels import gelu as K

print("CUDA kernels on", "the simulator" if _cuda.SIMULATOR else "a GPU")
assert OUT.is_dir()

# %% [markdown]
# ## 1. A NumPy reference, written from the formula
#
# We write it here in float64 (our "truth") and check it agrees with the library's reference `gelu_forward_ref`.

# %%
from scipy.special import erf


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))                     # y = x Phi(x)


def gelu_grad(x):
    return 0.5 * (1.0 + erf(x / np.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)  # Phi + x phi


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def gelu_tanh_grad(x):
    u = np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)
    du = np.sqrt(2.0 / np.pi) * (1.0 + 3 * 0.044715 * x ** 2)
    return 0.5 * (1.0 + np.tanh(u)) + 0.5 * x * (1.0 - np.tanh(u) ** 2) * du


x = np.linspace(-5, 5, 2001)
assert np.array_equal(gelu(x), K.gelu_forward_ref(x)[0])
assert np.array_equal(gelu_tanh(x), K.gelu_tanh_ref(x))
print("gelu(1) =", gelu(1.0), " gelu(-1) =", gelu(-1.0))
assert abs(gelu(1.0) - 0.8413447460685429) < 1e-15          # Phi(1) = 0.8413447...

# %% [markdown]
# ## 2. Exact vs tanh, side by side (with derivatives)
#
# The two curves are almost on top of each other; the difference is plotted on its own axis.
# BERT was trained with the exact form, so loading a BERT checkpoint and using the tanh one would shift every
# activation by up to ~5e-4: small, but enough to break an exact match with `transformers`.

# %%
fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
ax[0].plot(x, gelu(x), label="exact (erf)")
ax[0].plot(x, gelu_tanh(x), "--", label="tanh approximation")
ax[0].set_title("gelu(x)")
ax[1].plot(x, gelu_grad(x), label="exact")
ax[1].plot(x, gelu_tanh_grad(x), "--", label="tanh")
ax[1].set_title("gelu'(x)")
ax[2].plot(x, gelu_tanh(x) - gelu(x), label="forward")
ax[2].plot(x, gelu_tanh_grad(x) - gelu_grad(x), label="derivative")
ax[2].set_title("tanh - exact")
for a in ax:
    a.legend()
    a.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(OUT / "01_gelu_exact_vs_tanh.png", dpi=80)
plt.show()

gap = np.abs(gelu_tanh(x) - gelu(x)).max()
gap_grad = np.abs(gelu_tanh_grad(x) - gelu_grad(x)).max()
print(f"max |tanh - exact| = {gap:.2e} (forward), {gap_grad:.2e} (derivative)")
assert 1e-4 < gap < 1e-3 and 1e-4 < gap_grad < 1e-2

# %% [markdown]
# ## 3. The derivative, checked by central finite differences
#
# $(f(x+h) - f(x-h)) / 2h$ has truncation error $O(h^2 f''')$ and rounding error $O(\epsilon_{64}/h)$; at
# $h = 10^{-5}$ both are ~1e-10, so a correct derivative agrees to ~1e-9.

# %%
h = 1e-5
fd = (gelu(x + h) - gelu(x - h)) / (2 * h)
fd_tanh = (gelu_tanh(x + h) - gelu_tanh(x - h)) / (2 * h)
print("max |analytic - finite difference| =", np.abs(fd - gelu_grad(x)).max())
assert np.abs(fd - gelu_grad(x)).max() < 1e-8
assert np.abs(fd_tanh - gelu_tanh_grad(x)).max() < 1e-8
# the library's backward, with dy = 1, is the same derivative
assert np.allclose(K.gelu_backward_ref(np.ones_like(x), K.GeluCache(x)), gelu_grad(x), rtol=0, atol=1e-14)

# %% [markdown]
# ## 4. Against PyTorch (optional)
#
# `torch.nn.functional.gelu(x)` is the exact form (`approximate="none"`), `approximate="tanh"` the other one.

# %%
try:
    import torch
except ImportError:
    torch = None
    print("torch is not installed: the PyTorch comparison is skipped (pip install torch to run it)")

if torch is not None:
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.gelu(xt).sum().backward()
    err_y = np.abs(torch.nn.functional.gelu(xt).detach().numpy() - gelu(x)).max()
    err_g = np.abs(xt.grad.numpy() - gelu_grad(x)).max()
    err_tanh = np.abs(torch.nn.functional.gelu(xt, approximate="tanh").detach().numpy() - gelu_tanh(x)).max()
    print(f"torch vs ours (float64): forward {err_y:.1e}, gradient {err_g:.1e}, tanh form {err_tanh:.1e}")
    assert err_y < 1e-14 and err_g < 1e-14 and err_tanh < 1e-14

# %% [markdown]
# ## 5. The backward of a layer: bias + GELU
#
# In the feed-forward block the GELU follows a linear layer, so the kernel fuses the bias add:
# `y = gelu(x + b)`. Its backward is `dx = dy * gelu'(x + b)` and `db = sum over rows of dx` (the bias is
# broadcast over every row in the forward, so its gradient sums over them). We check the library's reference
# backward against finite differences of a scalar loss `L = sum(w * y)`, whose gradient with respect to `y` is `w`.

# %%
rng = np.random.default_rng(0)
xs = rng.standard_normal((3, 5)) * 2
bs = rng.standard_normal(5)
ws = rng.standard_normal((3, 5))
loss = lambda: float((ws * K.bias_gelu_forward_ref(xs, bs)[0]).sum())  # noqa: E731
dx, db = K.bias_gelu_backward_ref(ws, K.BiasGeluCache(xs, bs))
err_dx = _checks.relative_error(dx, _checks.numerical_gradient(loss, xs))
err_db = _checks.relative_error(db, _checks.numerical_gradient(loss, bs))
print(f"relative error vs finite differences: dx {err_dx:.1e}, db {err_db:.1e}")
assert err_dx < 1e-7 and err_db < 1e-7

# %% [markdown]
# ## 6. The Numba CPU kernel and why it is faster
#
# The NumPy reference makes several full passes over memory, each allocating a temporary: `x / sqrt(2)`, `erf(.)`,
# `1 + .`, `x * .`, `0.5 * .` and, with the bias, `x + b` before all that. At the FFN size of DistilBERT
# (B·T = 1024 rows × F = 3072) each temporary is 12 MB, far bigger than the caches. The Numba kernel
# `_gelu_fwd` does **one** pass: read `x` (and `b`), compute in registers, write `y`, with `prange` splitting the
# elements over the cores. Everything stays float32 (`np.float32(0.5)` constants: a bare `0.5` would promote to
# float64).
#
# **How the kernel computes erf.** Numba compiles `math.erf` into a call to libm's scalar `erff`, one element at a
# time, which stops the loop from vectorising. The kernel calls `erf_f32` from `kernels/_f32math.py` instead: the
# float32 argument is widened to float64, erf is one rational function of x² (a fitted polynomial divided by
# another) for |x| < 3.925 and ±1 beyond, evaluated with +, * and one division only, then rounded to float32 once.
# So it is the correctly rounded float32 erf except within ~1e-14 of a rounding tie (then one ulp off), and LLVM
# turns the loop into 16-lane AVX-512 instructions. The cell checks it against `math.erf` on a grid.
#
# Float32 results are compared with the float64 reference using a tolerance *derived* from float32's epsilon
# (`_checks.f32_tol`): an elementwise op has no reduction, so a few roundings per element of a value up to ~8.

# %%
N, F = 1024, 3072
x32 = (rng.standard_normal((N, F)) * 3).astype(np.float32)
b32 = rng.standard_normal(F).astype(np.float32)
dy32 = rng.standard_normal((N, F)).astype(np.float32)
y_cpu, cache = K.bias_gelu_forward(x32, b32)                 # numpy arrays -> the Numba CPU kernel
dx_cpu, db_cpu = K.bias_gelu_backward(dy32, cache)
x64, b64 = x32.astype(np.float64), b32.astype(np.float64)
y_ref = gelu(x64 + b64)
dx_ref = dy32 * gelu_grad(x64 + b64)
tol = _checks.f32_tol(1, scale=8)
_checks.assert_close(y_cpu, y_ref, atol=tol, rtol=tol, name="y")
_checks.assert_close(dx_cpu, dx_ref, atol=tol, rtol=tol, name="dx")
_checks.assert_close(db_cpu, dx_ref.sum(0), atol=_checks.f32_tol(N, scale=4), rtol=tol, name="db")
assert y_cpu.dtype == dx_cpu.dtype == db_cpu.dtype == np.float32
print(f"Numba float32 vs float64 reference: max |err| y {np.abs(y_cpu - y_ref).max():.1e}, "
      f"dx {np.abs(dx_cpu - dx_ref).max():.1e} (tolerance {tol:.1e})")

import math

from minidistil.kernels._f32math import erf_f32

grid = np.linspace(-5, 5, 2001).astype(np.float32)
ulps = [abs(int(np.float32(erf_f32(v)).view(np.int32)) - int(np.float32(math.erf(float(v))).view(np.int32)))
        for v in grid]
print(f"erf_f32 vs float32(math.erf) on {grid.size} points in [-5, 5]: {sum(u > 0 for u in ulps)} differ, "
      f"by at most {max(ulps)} ulp")
assert max(ulps) <= 1

# %% [markdown]
# ## 7. The numba.cuda kernel
#
# One GPU thread per element: thread `i = cuda.grid(1)` computes `y[i]`. The public functions dispatch on the
# array type: give them `numba.cuda` device arrays and they launch the CUDA kernels. Without a GPU this runs on
# the numba.cuda **simulator** (every thread a Python thread, so we keep the shape tiny).

# %%
xs32, dys32 = x32[:4, :40].copy(), dy32[:4, :40].copy()
bs32 = b32[:40].copy()
xd, bd, dyd = (_cuda.to_device(a) for a in (xs32, bs32, dys32))
yd, cd = K.bias_gelu_forward(xd, bd)
dxd, dbd = K.bias_gelu_backward(dyd, cd)
y_gpu, dx_gpu, db_gpu = (_cuda.to_host(a) for a in (yd, dxd, dbd))
ref_dx = dys32 * gelu_grad(xs32.astype(np.float64) + bs32)
_checks.assert_close(y_gpu, gelu(xs32.astype(np.float64) + bs32), atol=tol, rtol=tol, name="cuda y")
_checks.assert_close(dx_gpu, ref_dx, atol=tol, rtol=tol, name="cuda dx")
_checks.assert_close(db_gpu, ref_dx.sum(0), atol=_checks.f32_tol(4, scale=4), rtol=tol, name="cuda db")
print("CUDA kernels agree with the reference", "(simulator)" if _cuda.SIMULATOR else "(GPU)")

# %% [markdown]
# ## 8. Benchmark
#
# Median of 5 runs after warm-up (the first call compiles). GELU is memory-bound: the figure that matters is
# GB/s (bytes read + written per ms), compared with the machine's memory bandwidth. Timings vary with the load
# on the machine, so we print them rather than assert a speed-up: on a machine shared with other jobs the
# parallel kernel waits for free cores and can even come out slower (chapter 09 measures this further).

# %%
nbytes = 2 * x32.nbytes + b32.nbytes
t_ref = _checks.bench(lambda: K.bias_gelu_forward_ref(x32, b32), warmup=1, repeat=5)
t_cpu = _checks.bench(lambda: K.bias_gelu_forward(x32, b32), warmup=1, repeat=5)
print(f"bias+GELU forward (1024 x 3072): NumPy {t_ref:.2f} ms ({nbytes / t_ref / 1e6:.1f} GB/s), "
      f"Numba {t_cpu:.2f} ms ({nbytes / t_cpu / 1e6:.1f} GB/s): {t_ref / t_cpu:.1f}x")
assert t_ref > 0 and t_cpu > 0

# %% [markdown]
# ## Exercise
#
# `minidistil grade gelu_backward`: write GELU's backward yourself (your own copy of the stubs: `minidistil
# exercises copy my_exercises`); the grader compares it with `kernels/gelu.py`'s reference and with finite
# differences, and names the missing product-rule term.
#
# ## Try it
#
# 1. Predict where the exact GELU and its tanh approximation differ most, then find it in section 2's arrays
#    (`np.argmax` of the difference) and compare with the figure.
# 2. In section 3 change the step `h` to 1e-2 and to 1e-10. Which one makes the finite-difference error worse,
#    and which of the two error terms (truncation, rounding) explains each?
# 3. Set `MINIDISTIL_FAST_MATH=1` before the chapter starts and rerun section 6: how large is the error of
#    `erf_fast` against the float64 reference, and does it stay below `_f32math.ERF_FAST_MAX_ABS_ERR`?
# 4. Why must the backward of `bias_gelu` return `db = dx.sum(0)` and not `dx.mean(0)`? (Check with the finite
#    differences of section 5.)
