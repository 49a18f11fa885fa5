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
# # 12 · A matrix product of our own: the roofline, packing, blocking, the micro-kernel
#
# The linear layers' matrix products are ~90% of a DistilBERT forward. Until now minidistil borrowed them from
# numpy's OpenBLAS, which packs both operands at every call. A linear layer's weight does not change between calls
# (in inference at all, in training once per optimizer step), so it can be packed ONCE. This chapter builds that
# GEMM step by step, and measures each step on this machine, from the naive triple loop to `kernels/gemm.py`:
#
# 1. **The roofline**: how many flops the CPU can do, how many bytes memory can bring, and which one bounds a GEMM.
# 2. **The naive loop, and the loop order** that lets the compiler use vectors.
# 3. **Packing**: B copied into NR-wide panels read contiguously (the graded exercise `gemm_packing`).
# 4. **Blocking and the register tile**: an MR x NR block of C kept in registers for the whole k loop.
# 5. **The micro-kernel**: the tile as AVX-512 FMAs written in LLVM IR, and the assembly that proves it.
# 6. **Threads and OpenBLAS**: two threads taking chunks of work; the comparison, and the rule minidistil uses.
#
# Timings printed here depend on the machine and its load: the chapter asserts the numbers it computes (every
# product against the float64 reference, within the derived bound of `kernels/gemm.py`), never a speed.

# %%
# Set-up shared by every chapter: CUDA simulator when there is no GPU, figures to files outside Jupyter, OUT.
from minidistil.apps.tutorial import setup

OUT = setup()

import os
import time

import matplotlib.pyplot as plt
import numpy as np
from numba import njit

from minidistil.kernels import _blas, _cpuinfo
from minidistil.kernels import gemm as G

rng = np.random.default_rng(0)


def best_time(fn, repeat=5):
    """The fastest of `repeat` calls after one warm-up (the least disturbed by other jobs), in seconds."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def cpu_model():
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "unknown CPU")


print(f"CPU: {cpu_model()}, {_blas.n_cores()} cores, AVX-512: {G.avx512_available()}, "
      f"load average {os.getloadavg()[0]:.2f}")

# %% [markdown]
# ## 1. The roofline
#
# A float32 GEMM C = A B with A (M, K), B (K, N) does 2 M N K flops (a multiply and an add per term) and must at
# least read A and B and write C: 4 (M K + K N + M N) bytes. Their ratio, the **arithmetic intensity**, says how
# many flops each byte from memory pays for. A kernel is bound by the lower of two roofs:
#
#     rate <= min(peak flops,  intensity x memory bandwidth)
#
# The peak: an AVX-512 FMA does 16 float32 multiply-adds (32 flops). A Zen 4 core runs one such instruction per
# cycle (its two 256-bit FMA units each take half); a Xeon with two 512-bit units runs two. We measure the memory
# roof with a large copy, and read off where the model's products sit.

# %%
big = np.ones(64 * 2**20 // 4, np.float32)                     # 64 MiB: far beyond the caches
dst = np.empty_like(big)
t_copy = best_time(lambda: np.copyto(dst, big), repeat=3)
bandwidth = 2 * big.nbytes / t_copy / 1e9                       # read + write, GB/s
ghz = 3.0                                                        # a round clock: the roofline's scale only
lanes = 16 if _cpuinfo.cpu_level() == 2 else 8
peak = _blas.n_cores() * ghz * 2 * lanes                         # one vector FMA per cycle per core
print(f"memory: ~{bandwidth:.1f} GB/s (a 64 MiB copy);  peak ~{peak:.0f} GFLOP/s at {ghz} GHz, one FMA a cycle")


def intensity(M, K, N):
    return 2 * M * N * K / (4 * (M * K + K * N + M * N))


shapes = {"GEMV (1 x 768 x 768)": (1, 768, 768), "T=32 product (256 x 768 x 3072)": (256, 768, 3072),
          "T=128 product (1024 x 768 x 3072)": (1024, 768, 3072)}
for name, s in shapes.items():
    ai = intensity(*s)
    print(f"{name:34s} intensity {ai:7.1f} flop/byte -> memory roof {ai * bandwidth:8.0f} GFLOP/s")
assert intensity(1, 768, 768) < 0.6                       # a vector times a matrix: memory bound
assert intensity(256, 768, 3072) * bandwidth > peak       # the model's products: compute bound, if the data is reused

# %% [markdown]
# The model's products are **compute bound**: each byte of A and B is used hundreds of times. But only if the
# kernel really reuses it from the caches and registers: a loop that fetches A[i, k] and B[k, j] from memory for
# every multiply-add has intensity 2 flops / 8 bytes = 0.25 and sits far under the memory roof. The rest of the
# chapter is about reuse.
#
# ## 2. The naive loop, and the loop order
#
# The textbook triple loop (i, j, k) walks B down a column: consecutive k are N floats apart, so every B load is a
# new cache line and the loop cannot use vectors. Swapping the two inner loops (i, k, j) makes the innermost loop
# run along a row of B and of C, contiguous: LLVM then vectorises it (16 floats at a time here).

# %%
@njit(cache=True)
def matmul_ijk(a, b, c):
    M, K = a.shape
    N = b.shape[1]
    for i in range(M):
        for j in range(N):
            s = np.float32(0.0)
            for k in range(K):
                s += a[i, k] * b[k, j]
            c[i, j] = s


@njit(cache=True)
def matmul_ikj(a, b, c):
    M, K = a.shape
    N = b.shape[1]
    for i in range(M):
        for j in range(N):
            c[i, j] = np.float32(0.0)
        for k in range(K):
            x = a[i, k]
            for j in range(N):
                c[i, j] += x * b[k, j]


M, K, N = 64, 768, 768
a = rng.standard_normal((M, K), dtype=np.float32)
b = rng.standard_normal((K, N), dtype=np.float32)
exact, bound = G.gemm_ref(a, b), G.error_bound(a, b)
flops = 2.0 * M * K * N
rates = {}
for name, fn in (("naive i,j,k", matmul_ijk), ("loop order i,k,j", matmul_ikj)):
    c = np.empty((M, N), np.float32)
    fn(a, b, c)
    assert np.all(np.abs(c - exact) <= bound)              # the derived bound: K eps-sized roundings per output
    rates[name] = flops / best_time(lambda fn=fn, c=c: fn(a, b, c), repeat=3) / 1e9
    print(f"{name:18s} {rates[name]:7.2f} GFLOP/s  (one core, {M} x {K} x {N})")

# %% [markdown]
# ## 3. Packing
#
# The vectorised loop still streams a whole row of B (N floats) and of C for every single A[i, k]: C is read and
# written K times. The Goto/BLIS algorithm turns this around: it computes a small MR x NR **tile** of C at a time,
# keeps it in registers for the whole k loop, and for that it needs, at each k, MR values of A and NR values of B
# side by side. So B is copied once into **panels** of NR columns stored k-major: the NR values one k step needs
# are one contiguous run (three 64-byte vectors for NR = 48). A needs no pack: the micro-kernel broadcasts A's MR
# values of a k step one at a time, so it reads them in place from MR rows of x (packing A at every call, as the
# first version did, cost more than it saved).
# For a linear layer the weight is B: minidistil packs it once and keeps it until the weight changes
# (`kernels/gemm.py`, `PACKS`).
#
# **Exercise** (graded): write this packing yourself, and the product computed from the panels:
# `minidistil exercises copy my_exercises`, then, in that folder, `minidistil grade gemm_packing`.

# %%
small = np.arange(3 * 10, dtype=np.float32).reshape(3, 10)      # B (K=3, N=10)
nr = 4
P = -(-small.shape[1] // nr)
packed = np.zeros((P, 3, nr), np.float32)
for p in range(P):
    cols = small[:, p * nr:(p + 1) * nr]
    packed[p, :, :cols.shape[1]] = cols
print("B =\n", small)
print("panel 2 (k-major, zero padded) =\n", packed[2])
assert np.array_equal(packed[2, :, :2], small[:, 8:10]) and not packed[2, :, 2:].any()
# the library's pack_b is the same layout with NR = 48, flattened and 64-byte aligned
lib = G.pack_b(b).reshape(-1, K, G.NR)
assert lib.ctypes.data % 64 == 0 and np.array_equal(lib[1], b[:, G.NR:2 * G.NR])

# %% [markdown]
# ## 4. Blocking and the register tile
#
# With both operands packed, the five loops of Goto's algorithm (`kernels/gemm.py` writes them out) walk C in
# blocks sized for the caches: a KC x NR panel of B (144 KiB for KC = 768) is reused by every MR-row panel of an
# MC x KC block of A that stays in L2, and inside, the **micro-kernel** computes one MR x NR tile over KC steps:
#
#     for k in range(KC):                     # per step: NR/16 vector loads of B, MR broadcasts of A
#         for r in range(MR):                 #           MR x NR/16 vector FMAs into registers
#             tile[r, :] += A_panel[k, r] * B_panel[k, :]
#
# Per k step the 8 x 48 tile does 384 multiply-adds for 8 + 48 loaded floats: 7 flops per loaded byte from L1,
# against 0.25 for the naive loop. First as plain Numba (the `portable` micro-kernel, for CPUs without AVX-512:
# LLVM vectorises its loop over the NR columns, but keeps the tile in memory, a load and a store per multiply-add:
# on the project's machine it ran slower than the i,k,j loop above, whose row of C stays in L1 just as well), then
# as the AVX-512 one, whose tile lives in registers: that is the step that pays.

# %%
M = 256
a = rng.standard_normal((M, K), dtype=np.float32)
w = (rng.standard_normal((N, K)) * 0.02).astype(np.float32)     # a linear layer's weight (out, in)
exact, bound = G.gemm_ref(a, w.T), G.error_bound(a, w.T)
bp = G.pack_b(w.T)                                               # packed once
flops = 2.0 * M * K * N
for kernel in ["portable"] + (["avx512"] if G.avx512_available() else []):
    c = G.gemm_packed(a, bp, N, kernel=kernel, threads=1)
    assert c.dtype == np.float32 and np.all(np.abs(c - exact) <= bound)
    rates[f"packed, {kernel}, 1 thread"] = flops / best_time(
        lambda kernel=kernel: G.gemm_packed(a, bp, N, kernel=kernel, threads=1)) / 1e9
    print(f"packed + blocked, {kernel:8s} micro-kernel, 1 thread: {rates[f'packed, {kernel}, 1 thread']:7.1f} GFLOP/s "
          f"({M} x {K} x {N})")

# %% [markdown]
# ## 5. The micro-kernel, in LLVM IR
#
# The AVX-512 micro-kernel is not left to the auto-vectoriser: `_tile_avx512` emits the loop as LLVM IR, with the
# 8 x 3 accumulators as `<16 x float>` SSA values (24 of the 32 zmm registers) and `llvm.fma.v16f32` for every
# multiply-add, the way `kernels/int8.py` reaches `vpdpbusd`. LLVM turns each into one `vfmadd231ps` on zmm
# registers; the broadcast of A folds into the FMA's memory operand. The proof is in the generated assembly.

# %%
if G.avx512_available():
    asm = G.avx512_assembly()
    fmas = [ln.strip() for ln in asm.splitlines() if "vfmadd231ps" in ln and "zmm" in ln]
    print(f"{len(fmas)} zmm FMAs in the compiled driver, for example:")
    print("\n".join(fmas[:4]))
    assert len(fmas) >= G.MR * G.NV                          # the whole register tile
else:
    print("this CPU has no AVX-512F: the portable micro-kernel runs instead (LLVM vectorises it for what it has)")

# %% [markdown]
# ## 6. Threads, and OpenBLAS beside it
#
# Two threads split the NR panels of B: each takes the next chunk of panels from an atomic counter until none is
# left, so a thread the OS sets aside for another job holds up one chunk, not half the product. Then the same
# product by numpy's OpenBLAS (`np.matmul(x, w.T)`, what the linear layers ran before), interleaved with ours.

# %%
rows = G.compare_openblas([(M, K, N)], rounds=5)
rates["packed, 2 threads"] = rows[0]["own"]
rates["OpenBLAS (numpy)"] = rows[0]["openblas"]
c = G.gemm_packed(a, bp, N)
assert np.all(np.abs(c - exact) <= bound)

fig, ax = plt.subplots(figsize=(8, 3.2))
names = list(rates)
ax.barh(names, [rates[n] for n in names], color=["#bbb"] * 2 + ["#6a9"] * (len(names) - 3) + ["#c66"])
ax.set_xlabel("GFLOP/s (higher is better)")
ax.set_title(f"float32 GEMM, step by step ({cpu_model()}, load {os.getloadavg()[0]:.1f})", fontsize=9)
ax.invert_yaxis()
fig.tight_layout()
fig.savefig(OUT / "12_gemm_steps.png", dpi=80)
for n in names:
    print(f"{n:32s} {rates[n]:8.2f} GFLOP/s")

# %% [markdown]
# What each step gained, on the project's machine (2 cores of an AMD EPYC Zen 4, idle, this chapter run as users
# run it: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tutorials/12_gemm.py`, 2026-12-07):
#
# | step | GFLOP/s | what it changed |
# | --- | --- | --- |
# | naive i, j, k (64 x 768 x 768, one core) | 2.1 | B walked down its columns: a new cache line per multiply-add |
# | loop order i, k, j | 43.9 | the inner loop runs along rows of B and C: LLVM vectorises it (20x) |
# | packed + blocked, portable micro-kernel (256 x 768 x 768, one core) | 21.9 | the tile in memory: slower |
# | packed + blocked, AVX-512 micro-kernel, one core | 115.8 | the tile in 24 zmm registers: ~peak (5.3x) |
# | the same, 2 threads | 213.2 | two cores (1.84x) |
#
# In the same run (2026-12-07, the project's AMD EPYC Zen 4 CPU, `python tutorials/12_gemm.py` as above), the
# round 3.0 GHz of section 1 turned out to be only the roofline's scale: one core's 115.8 GFLOP/s at 32 flops a
# cycle says the core ran at about 3.6 GHz. OpenBLAS in section 6 ran at 93 GFLOP/s in that run, lower than it
# can: after each of our calls Numba's workers spin a few milliseconds (`import minidistil` sets `GOMP_SPINCOUNT`
# where the model's products run on this GEMM), and OpenBLAS timed right after shares the cores with them. With
# the workers sleeping at once (`OMP_WAIT_POLICY=PASSIVE`), kernels/README.md measured this product at 185 GFLOP/s
# for OpenBLAS and 212 for ours (1.15x), and 1.07-1.22x over the model's forward products. Two changes after the
# first version paid at 256 rows: reading A in place instead of packing it at every call (4-12%), and a k block
# (KC) of 768 instead of 384, so that the C tile is reloaded less often (3-5%).
#
# The linear layers use it without being asked: `linear_forward_cpu` sends y = x W^T + b there when the rule says
# so, the bias added in the tile's store. `MINIDISTIL_GEMM=openblas` turns it off.

# %%
from minidistil.kernels import linear as L

x = rng.standard_normal((2, 128, K), dtype=np.float32)          # (B, T, C)
bias = rng.standard_normal(N).astype(np.float32)
y, _ = L.linear_forward(x, w, bias)                              # (B, T, Cout), by the rule
print(f"rule for a (256 x {K}) @ ({K} x {N}) product: own GEMM = {G.use_own_gemm(256, K, N)}")
ref = G.gemm_ref(x.reshape(-1, K), w.T, bias)
assert y.shape == (2, 128, N) and np.all(np.abs(y.reshape(-1, N) - ref) <= G.error_bound(x.reshape(-1, K), w.T, bias))

# %% [markdown]
# ## Exercise
#
# `minidistil grade gemm_packing`: write `pack_panels(b, nr)` and `matmul_panels(a, packed, n)` yourself (section 3
# shows what they must do; get your copy with `minidistil exercises copy my_exercises`). The grader compares them
# with `kernels/gemm.py` on awkward shapes (N not a multiple of NR, K = 1) and names the usual mistakes.
#
# ## Try it
#
# 1. Predict the arithmetic intensity (flops per byte moved) of the naive loop of section 1 for M = K = N = 768,
#    then of the packed kernel; put both on the roofline of section 0. Which one can reach the peak?
# 2. Change `MR` or `NR` of the portable kernel by hand in your head: how many zmm registers does an 8 x 48 tile
#    of float32 accumulators need, and what happens when a tile needs more than the CPU's 32?
# 3. Run section 6 with `numba.set_num_threads(1)`: how far is one thread from two, and from OpenBLAS on one
#    thread? What does that say about how busy the machine is (`os.getloadavg()`)?
# 4. Set `MINIDISTIL_GEMM=openblas` before importing minidistil and rerun the last cell: the rule no longer sends
#    the product to gemm.py. Is `y` the same to the last bit? Why not, and within which bound must it agree?
# 5. The backward products (dx = dy W, dW = dy^T x) read W, x and dy in place instead of packing W once. Why does
#    a kept pack of W not help training?
