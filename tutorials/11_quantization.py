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
# # 11 · Int8 inference: scales, zero points, the int8 dot product, and a 4x smaller MiniLM
#
# After distillation, the next step towards a model that runs on a small CPU is **quantisation**: store the
# weights as 8-bit integers and compute the matrix products in integer arithmetic. The file shrinks about 4x, and
# on a CPU with 8-bit dot-product instructions the products run several times faster than in float32.
#
# This chapter builds it from the bottom:
#
# 1. **Scales and zero points**: mapping a float range onto 256 integers, and the rounding error it costs.
# 2. **Per-channel scales**: one scale per output row of a weight matrix instead of one for the whole matrix.
# 3. **The int8 dot product**: uint8 x int8 products summed in int32, exactly, and the zero point folded in.
# 4. **Why VNNI is fast**: one `vpdpbusd` does 64 multiply-adds; minidistil's kernel reaches it from Numba.
# 5. **The whole model**: `minidistil.quantize` on the real all-MiniLM-L6-v2, accuracy before and after, size.
#
# The kernels are in `kernels/int8.py` (maths and error bound in its docstring); the model-level code is
# `minidistil/io/quantization.py`. Timings printed here depend on the machine and its load: the chapter asserts the
# numbers it computes, never a speed.

# %%
# Set-up shared by every chapter: CUDA simulator when there is no GPU, figures to files outside Jupyter, OUT.
from minidistil.apps.tutorial import setup

OUT = setup()

import matplotlib.pyplot as plt
import numpy as np

from minidistil.kernels import int8 as K

rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Scales and zero points
#
# An 8-bit integer has 256 values. To store a float `x` in it we pick a **scale** `s` (the float step between two
# neighbouring integers) and round: `q = round(x / s)`, read back as `x^ = s q`. The rounding error is at most half
# a step, `|x - x^| <= s / 2`, so the scale should be as small as the range allows.
#
# * **Symmetric** (int8, used for the weights): `s = max|x| / 127`, `q` in [-127, 127]. Zero is exact.
# * **Asymmetric** (uint8, used for the activations): the range `[lo, hi]` (always holding 0) maps onto [0, 255]:
#   `s = (hi - lo) / 255` and a **zero point** `z = round(-lo / s)`, the integer that stands for 0.0. Then
#   `q = round(x / s) + z` and `x^ = s (q - z)`.
#
# Why both? GELU's outputs lie in [-0.17, max]: a symmetric range [-max, max] would spend half its levels on
# values that never occur, doubling the step. The asymmetric range spends all 256 levels on what is there. And
# AVX-512 VNNI multiplies **unsigned** bytes by **signed** bytes, so uint8 activations x int8 weights is exactly
# the instruction's input.

# %%
from minidistil.kernels import gelu as G

x = rng.standard_normal(2000).astype(np.float32)
gelu_like = G.gelu_forward(x)[0]                                          # GELU's outputs: in [-0.17, max]

s_sym = np.abs(gelu_like).max() / 127                                     # symmetric int8
q_sym = np.clip(np.rint(gelu_like / s_sym), -127, 127)
err_sym = np.abs(gelu_like - s_sym * q_sym)

q_asym, s_asym, z = K.quantize_rows_ref(gelu_like[None, :])              # asymmetric uint8, one row
x_hat = s_asym[0] * (q_asym[0].astype(np.float64) - z[0])
err_asym = np.abs(gelu_like - x_hat)

print(f"symmetric:  step {s_sym:.5f}, max error {err_sym.max():.5f} (bound s/2 = {s_sym / 2:.5f})")
print(f"asymmetric: step {s_asym[0]:.5f}, zero point {z[0]}, max error {err_asym.max():.5f}")
assert err_sym.max() <= s_sym / 2 * (1 + 1e-5)
assert err_asym.max() <= s_asym[0] * (0.5 + K.SLACK)                      # the bound kernels/int8.py derives
assert s_asym[0] < 0.6 * s_sym                                            # a one-sided range: a finer step
q0, s0, z0 = K.quantize_rows_ref(np.array([[0.0, 0.7, -0.2]], np.float32))
assert s0[0] * (int(q0[0, 0]) - z0[0]) == 0.0                             # 0.0 is stored exactly (q = z)

# %% [markdown]
# ## 2. Per-channel scales
#
# A weight matrix `W (Cout, Cin)` can share one scale (per tensor) or have one scale per output row (per channel,
# what minidistil and ONNX Runtime's `per_channel=True` do). Rows of a trained matrix have different sizes; with one
# scale, the small rows get only a few of the 255 levels. Here is the query projection of MiniLM's first layer.

# %%
from minidistil.io import hub
from minidistil.io.loading import from_pretrained

folder = hub.fetch("all-MiniLM-L6-v2")
model = from_pretrained(folder)
W = model.encoder.layer[0].attention.self.query.weight.numpy()            # (384, 384) float32

q_t = np.clip(np.rint(W / (np.abs(W).max() / 127)), -127, 127)            # per tensor: one scale
W_t = q_t * (np.abs(W).max() / 127)
q_c, s_c = K.quantize_weight_ref(W)                                       # per channel: one scale per row
W_c = K.dequantize(q_c, s_c)

row_max = np.abs(W).max(axis=1)
err_t = np.linalg.norm(W - W_t) / np.linalg.norm(W)
err_c = np.linalg.norm(W - W_c) / np.linalg.norm(W)
print(f"row maxima from {row_max.min():.3f} to {row_max.max():.3f}")
print(f"relative error, per tensor {err_t:.2e}, per channel {err_c:.2e}")
assert err_c < err_t
assert np.abs(q_c).max(axis=1).min() == 127                               # every row uses its whole range

# %% [markdown]
# ## 3. The int8 dot product, exactly
#
# With `x^ = s_x (q_x - z)` and `W^ = s_w q_w`, one output of a linear layer is
#
# `x^ . W^[o] = s_x s_w sum_k (q_x[k] - z) q_w[o, k] = s_x s_w (acc - z r[o])`,
#
# with `acc = sum_k q_x[k] q_w[o, k]` (uint8 x int8 products summed in **int32**) and `r[o] = sum_k q_w[o, k]`,
# computed once per weight. So the zero point costs one multiply-subtract per output, outside the inner loop.
# The sums are exact: each product is at most 255 x 127, so int32 holds a sum of up to 66,311 of them
# (`K.MAX_CIN`); BERT's longest is 3072. Below, the kernel's int32 result against int64 NumPy, and the float
# output against `x W^T + b` within the error bound derived in `kernels/int8.py`:
#
# `|y - (x W^T + b)| <= s_x (1/2 + 2^-13) sum_k |W^| + s_w (1/2 + 2^-13) sum_k |x| + 5 u (sum_k |x^| |W^| + |b|)`.

# %%
x = rng.standard_normal((64, 384)).astype(np.float32)
b = model.encoder.layer[0].attention.self.query.bias.numpy()
wq = K.quantize_weight(W)
qx, sx, zx = K.quantize_rows_cpu(x)
acc = K.int8_matmul_cpu(qx, wq)                                           # (64, 384) int32
assert np.array_equal(acc, K.int8_matmul_ref(qx, wq.q))                   # exact integers
y = K.int8_linear_forward(x, wq, b)                                       # the whole int8 layer
y_exact = x.astype(np.float64) @ W.T.astype(np.float64) + b
bound = K.linear_error_bound(x, wq.q, wq.scale, b)
ratio = np.abs(y - y_exact) / bound
print(f"integer product exact; float error / bound: max {ratio.max():.2f}, mean {ratio.mean():.3f}")
assert (ratio <= 1).all()

# %% [markdown]
# ## 4. Why VNNI is fast
#
# A float32 fused multiply-add on AVX-512 does 16 multiply-adds per instruction. AVX-512 VNNI's `vpdpbusd` takes
# 64 unsigned bytes and 64 signed bytes, multiplies them pairwise, adds each group of 4 products into one of 16
# int32 lanes: **64 multiply-adds per instruction**, on registers of the same width, and a quarter of the bytes
# to load. minidistil's kernel keeps a 6-row x 64-column tile of int32 sums in 24 registers; for every 4 steps of
# k it loads 4 vectors of weights (16 output channels x 4 bytes each, laid out that way once by `pack_weight`),
# broadcasts 4 activation bytes per row, and issues 24 `vpdpbusd`. When the tile is done, the 24 registers become
# float32 outputs where they are (minus `z r`, times the two scales, plus the bias) and are stored: the int32 sums
# never go to memory. Numba has no vector types, so the tile is written as an LLVM intrinsic
# (`K._vnni_tile_dequant`) that calls `llvm.x86.avx512.vpdpbusd.512` directly; on a CPU
# without VNNI the portable kernel (a plain int32 dot product that LLVM vectorises as it can) gives the same
# integers.
#
# **Without VNNI, int8 is slower than float32.** The portable kernel has no instruction that multiplies bytes four
# at a time into int32, while BLAS's float32 sgemm is hand-tuned assembly: on a CPU without VNNI the int8 path still
# stores a quarter of the bytes, but it costs time instead of saving it. The cell below times both on this machine
# and prints the ratio; `minidistil bench` does the same for the whole model.

# %%
import time

from minidistil.kernels import linear as LIN

print("this CPU has AVX-512 VNNI:", K.vnni_available(), "-> int8 kernel:", K.cpu_kernel())
N, cin, cout = 1024, 384, 1536                                            # one MiniLM FFN layer, 8 x 128 tokens
x = rng.standard_normal((N, cin)).astype(np.float32)
w = (rng.standard_normal((cout, cin)) * 0.05).astype(np.float32)
wq = K.quantize_weight(w)
ops = 2.0 * N * cin * cout


def best_ms(f, n=7):
    f()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


timings = {"float32 (BLAS sgemm)": best_ms(lambda: LIN.linear_forward(x, w)[0])}
for kernel in ["portable"] + (["vnni"] if K.vnni_available() else []):
    timings[f"int8 {kernel}"] = best_ms(lambda k=kernel: K.int8_linear_forward(x, wq, None, k))
for name, ms in timings.items():
    print(f"{name:<22} {ms:7.2f} ms  {ops / ms / 1e6:6.0f} G(FL)OP/s")
print(f"int8 portable / float32 sgemm: {timings['int8 portable'] / timings['float32 (BLAS sgemm)']:.1f} x the time")
if K.vnni_available():
    lines = [ln.strip() for ln in K.vnni_assembly().splitlines() if "vpdpbusd" in ln]
    print(f"{len(lines)} vpdpbusd in the compiled kernel, e.g. `{lines[0]}`")
    assert len(lines) >= K.MR * K.NR
y_int8 = K.int8_linear_forward(x, wq)
err = np.abs(y_int8 - x.astype(np.float64) @ w.T.astype(np.float64))
assert (err <= K.linear_error_bound(x, wq.q, wq.scale)).all()

# %% [markdown]
# ## 5. The whole model: all-MiniLM-L6-v2 in int8
#
# `minidistil.quantize(model)` returns a copy whose Linear layers are int8 (activations quantised per row when the
# layer runs) and whose word-embedding table is int8 rows with per-row scales; layer norm, softmax, GELU and the
# attention products stay float32. We compare sentence embeddings on the project's sentence-pair set
# (`minidistil/resources/sts_pairs.tsv`, 178 pairs with human-style similarity scores): the Spearman correlation
# of each model's cosine similarities with the scores, and the cosine between the float32 and int8 embeddings of
# the same sentences.

# %%
import minidistil
from minidistil.train import evaluation as E
from minidistil.io.loading import save_pretrained
from minidistil.io.quantization import file_size
from minidistil.io.tokenizer import Tokenizer

tok = Tokenizer.from_pretrained(folder)
qmodel = minidistil.quantize(model)
pairs = E.load_sts_pairs()
sts_float = E.sts_spearman(E.model_encoder(model), tok, pairs)
sts_int8 = E.sts_spearman(E.model_encoder(qmodel), tok, pairs)
texts = [p.sentence1 for p in pairs] + [p.sentence2 for p in pairs]
emb_float = E.embed(E.model_encoder(model), tok, texts)
emb_int8 = E.embed(E.model_encoder(qmodel), tok, texts)
cos = E.cosine(emb_float, emb_int8)
print(f"STS Spearman: float32 {sts_float:.4f}, int8 {sts_int8:.4f} ({100 * sts_int8 / sts_float:.2f}% kept)")
print(f"cosine(float32, int8) over {len(texts)} sentences: mean {cos.mean():.5f}, min {cos.min():.5f}")
assert sts_int8 >= 0.99 * sts_float and cos.mean() > 0.99

qdir = save_pretrained(qmodel, OUT / "minilm-int8")
print(f"model.safetensors: float32 {file_size(folder) / 1e6:.1f} MB, int8 {file_size(qdir) / 1e6:.1f} MB "
      f"({file_size(qdir) / file_size(folder):.2f}x)")
assert file_size(qdir) <= 0.3 * file_size(folder)
back = from_pretrained(qdir)                                               # loads back as the same int8 model
assert np.array_equal(E.embed(E.model_encoder(back), tok, texts[:8]), emb_int8[:8])

fig, ax = plt.subplots(1, 2, figsize=(10, 4))
sim_f = E.cosine(emb_float[:len(pairs)], emb_float[len(pairs):])
sim_q = E.cosine(emb_int8[:len(pairs)], emb_int8[len(pairs):])
ax[0].scatter(sim_f, sim_q, s=8)
ax[0].plot([-0.2, 1], [-0.2, 1], "k--", lw=0.8)
ax[0].set_xlabel("pair similarity, float32")
ax[0].set_ylabel("pair similarity, int8")
ax[0].set_title("the 178 sentence pairs")
ax[1].hist(1 - cos, bins=40)
ax[1].set_xlabel("1 - cosine(float32 embedding, int8 embedding)")
ax[1].set_title("how far each sentence moved")
fig.tight_layout()
fig.savefig(OUT / "11_quantization_minilm.png", dpi=80)
plt.show()

# %% [markdown]
# ## What to take away
#
# * An int8 weight costs a quarter of the bytes; with per-channel scales its error is half a step of its own row.
# * Activations change with every input, so they are quantised at run time, per row, with a zero point: uint8 fits
#   VNNI and one-sided ranges.
# * The integer products are exact; the only errors are the two roundings, and they have a derived bound.
# * On all-MiniLM-L6-v2 the int8 model keeps the float32 model's STS score to within the set's noise, at about a
#   quarter of the file size. `minidistil quantize SRC OUT` does the same from the command line, and every
#   pipeline takes the quantised folder as `--model`. `minidistil bench` times it beside ONNX Runtime's int8.
# * A quantised model is for inference only: train in float32, then quantise.

# %% [markdown]
# ## Exercise
#
# `minidistil grade int8_rows` (your own copy of the stubs: `minidistil exercises copy my_exercises`): quantise rows
# to uint8 with a scale and a zero point; the grader checks every element against the bound `s (1/2 + 2^-13)` and
# names floor instead of round, a range without 0 and a symmetric scale.
#
# ## Try it
#
# 1. Quantise GELU's outputs of section 1 with `floor` instead of rounding to nearest: predict the maximum error
#    in units of the step s, then measure it.
# 2. In section 3 compute the error bound of one output for a row of 384 activations: which term dominates, the
#    activations' rounding or the weights'?
# 3. On this machine, is `K.vnni_available()` true? Time `int8_linear_forward` with `kernel="portable"` against the
#    float32 `linear_forward` at the same size: is int8 faster here (section 4 says when it is not)?
