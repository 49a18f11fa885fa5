"""Benchmark every op at DistilBERT-base sizes: Numba CPU beside the NumPy reference and torch, in one run.

    python -m minidistil.kernels.bench            # all ops
    python -m minidistil.kernels.bench gelu attention --repeat 20 --json out.json
    python -m minidistil.kernels.bench --device cuda [--peak-gbps 4800] [--size tiny]   # GPU bandwidth (below)

Sizes: B=8, T=128, C=768, F=3072, H=12, V=30522 (N = B*T = 1024 rows). Each line is the median wall time after
warm-up (JIT compilation happens in the warm-up), forward and backward separately, and the ratios of the Numba
version to the reference and to torch (below 1.0 means minidistil is faster). torch is optional: without it its
column is empty. The torch backward is timed with torch.autograd.grad on a graph built once (retain_graph=True).

On the CPU it first prints which OpenBLAS kernels numpy runs and their sgemm GFLOP/s on a (1024x768)@(768x3072)
product, and warns on stderr when OPENBLAS_CORETYPE forces slower kernels than the CPU supports (kernels/_blas.py).

--device cuda: the memory-bound CUDA kernels (residual+layernorm, bias+GELU, softmax and attention, forward and
backward) on device arrays, and the bandwidth each reaches: its minimum bytes (every input read once, every output
written once, counted per kernel in `cuda_cases`) over its time, as GB/s and as a fraction of the device's peak
(--peak-gbps, 4800 GB/s for an H200) and of a practical peak, a device-to-device copy of a large array measured
in the same run. Two times per kernel:
    wall    `repeat` launches back to back from Python, then one synchronize: what a model's step sees, numba's
            launch overhead and the output allocations included;
    device  the same launches queued behind a spin kernel that keeps the GPU busy while Python enqueues them,
            timed with CUDA events from the first to the last: the GPU's own time per kernel. If the spin ended
            before the last launch was queued, the GPU waited for Python and the row says "host-bound" (the
            device time is then an upper bound). Output frees are deferred (cuda.defer_cleanup) while it runs.
The fractions use the device time (the wall time on the simulator, where events do not time anything; there the
figures only show that the code runs: --size tiny).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import sys

import numpy as np

from . import _blas, _checks, _cuda

B, T, C, F, H, V = 8, 128, 768, 3072, 12, 30522
N = B * T


def _try_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_pair(torch, fn, inputs, grad_out):
    """(forward callable, backward callable) for a torch function of float32 tensors."""
    ts = [torch.tensor(a, requires_grad=a.dtype == np.float32) if isinstance(a, np.ndarray) else a
          for a in inputs]
    leaves = [t for t in ts if isinstance(t, torch.Tensor) and t.requires_grad]
    out = fn(*ts)
    g = torch.tensor(grad_out) if isinstance(grad_out, np.ndarray) else torch.tensor(grad_out, dtype=out.dtype)

    def fwd_nograd():
        with torch.no_grad():
            return fn(*ts)

    bwd = lambda: torch.autograd.grad(out, leaves, g, retain_graph=True)  # noqa: E731
    return fwd_nograd, bwd


def cases(names=None):
    """Yield (name, dict of callables) per op; built lazily so one op's memory is freed before the next."""
    r = np.random.default_rng(0)
    f32 = lambda *s: r.standard_normal(s).astype(np.float32)  # noqa: E731
    torch = _try_torch()
    tF = torch.nn.functional if torch else None

    def want(n):
        return names is None or n in names

    if want("linear"):
        from . import linear as K
        x, w, b, dy = f32(N, C), f32(F, C) * 0.02, f32(F), f32(N, F)
        y, c = K.linear_forward(x, w, b)
        d = dict(ref_fwd=lambda: K.linear_forward_ref(x, w, b), cpu_fwd=lambda: K.linear_forward(x, w, b),
                 ref_bwd=lambda: K.linear_backward_ref(dy, c), cpu_bwd=lambda: K.linear_backward(dy, c),
                 flops_fwd=2 * N * C * F, flops_bwd=4 * N * C * F)
        if torch:
            d["torch_fwd"], d["torch_bwd"] = _torch_pair(torch, tF.linear, [x, w, b], dy)
        yield "linear (1024x768 -> 3072)", d

    if want("gelu"):
        from . import gelu as K
        x, b, dy = f32(N, F), f32(F), f32(N, F)
        y, c = K.bias_gelu_forward(x, b)
        d = dict(ref_fwd=lambda: K.bias_gelu_forward_ref(x, b), cpu_fwd=lambda: K.bias_gelu_forward(x, b),
                 ref_bwd=lambda: K.bias_gelu_backward_ref(dy, c), cpu_bwd=lambda: K.bias_gelu_backward(dy, c),
                 bytes_fwd=2 * x.nbytes, bytes_bwd=3 * x.nbytes)
        if torch:
            d["torch_fwd"], d["torch_bwd"] = _torch_pair(torch, lambda x, b: tF.gelu(x + b), [x, b], dy)
        yield "bias+gelu (1024x3072)", d

    if want("layernorm"):
        from . import layernorm as K
        x, res, w, b, dy = f32(N, C), f32(N, C), f32(C), f32(C), f32(N, C)
        y, c = K.residual_layernorm_forward(x, res, w, b, 1e-12)
        d = dict(ref_fwd=lambda: K.residual_layernorm_forward_ref(x, res, w, b, 1e-12),
                 cpu_fwd=lambda: K.residual_layernorm_forward(x, res, w, b, 1e-12),
                 ref_bwd=lambda: K.residual_layernorm_backward_ref(dy, c),
                 cpu_bwd=lambda: K.residual_layernorm_backward(dy, c),
                 bytes_fwd=3 * x.nbytes, bytes_bwd=3 * x.nbytes)
        if torch:
            d["torch_fwd"], d["torch_bwd"] = _torch_pair(
                torch, lambda x, r, w, b: tF.layer_norm(x + r, (C,), w, b, 1e-12), [x, res, w, b], dy)
        yield "residual+layernorm (1024x768)", d

    if want("attention"):
        from . import attention as K
        q, k, v, dy = f32(B, T, C), f32(B, T, C), f32(B, T, C), f32(B, T, C)
        mask = np.ones((B, T), np.int64)
        mask[1, 100:] = 0
        y, c = K.attention_forward(q, k, v, mask, H)
        fl = 4 * B * H * T * T * (C // H)
        d = dict(ref_fwd=lambda: K.attention_forward_ref(q, k, v, mask, H),
                 cpu_fwd=lambda: K.attention_forward(q, k, v, mask, H),
                 ref_bwd=lambda: K.attention_backward_ref(dy, c), cpu_bwd=lambda: K.attention_backward(dy, c),
                 flops_fwd=fl, flops_bwd=2 * fl)
        if torch:
            def tattn(q, k, v):
                D = C // H
                sh = lambda t: t.view(B, T, H, D).transpose(1, 2)  # noqa: E731
                s = sh(q) @ sh(k).transpose(-1, -2) / math.sqrt(D)
                s = s.masked_fill(torch.tensor(mask == 0)[:, None, None, :], torch.finfo(s.dtype).min)
                return (s.softmax(-1) @ sh(v)).transpose(1, 2).reshape(B, T, C)
            d["torch_fwd"], d["torch_bwd"] = _torch_pair(torch, tattn, [q, k, v], dy)
        yield "attention (B8 T128 H12 D64)", d

    if want("softmax"):
        from . import softmax as K
        x, dy = f32(B * H * T, T), f32(B * H * T, T)
        y, c = K.softmax_forward(x)
        d = dict(ref_fwd=lambda: K.softmax_forward_ref(x), cpu_fwd=lambda: K.softmax_forward(x),
                 ref_bwd=lambda: K.softmax_backward_ref(dy, c), cpu_bwd=lambda: K.softmax_backward(dy, c),
                 bytes_fwd=2 * x.nbytes, bytes_bwd=3 * x.nbytes)
        if torch:
            d["torch_fwd"], d["torch_bwd"] = _torch_pair(torch, lambda x: x.softmax(-1), [x], dy)
        yield "softmax (12288x128)", d

    if want("embedding"):
        from . import embedding as K
        ids = r.integers(0, V, size=(B, T)).astype(np.int64)
        table, dy = f32(V, C), f32(B, T, C)
        y, c = K.embedding_forward(ids, table)
        d = dict(ref_fwd=lambda: K.embedding_forward_ref(ids, table), cpu_fwd=lambda: K.embedding_forward(ids, table),
                 ref_bwd=lambda: K.embedding_backward_ref(dy, c), cpu_bwd=lambda: K.embedding_backward(dy, c),
                 bytes_fwd=2 * y.nbytes, bytes_bwd=y.nbytes + table.nbytes)
        if torch:
            d["torch_fwd"], d["torch_bwd"] = _torch_pair(torch, lambda t: tF.embedding(torch.tensor(ids), t),
                                                         [table], dy)
        yield "embedding (8x128 of 30522x768)", d

    if want("cross_entropy"):
        from . import cross_entropy as K
        logits = f32(N, V)
        tgt = r.integers(0, V, size=N).astype(np.int64)
        tgt[::3] = -100
        loss, c = K.cross_entropy_forward(logits, tgt)
        d = dict(ref_fwd=lambda: K.cross_entropy_forward_ref(logits, tgt),
                 cpu_fwd=lambda: K.cross_entropy_forward(logits, tgt),
                 ref_bwd=lambda: K.cross_entropy_backward_ref(1.0, c),
                 cpu_bwd=lambda: K.cross_entropy_backward(1.0, c),
                 bytes_fwd=logits.nbytes, bytes_bwd=2 * logits.nbytes)
        if torch:
            d["torch_fwd"], d["torch_bwd"] = _torch_pair(
                torch, lambda x: tF.cross_entropy(x, torch.tensor(tgt), ignore_index=-100), [logits], 1.0)
        yield "cross-entropy (1024x30522)", d

    if want("distill_kl"):
        from . import distill_kl as K
        s, t = f32(N, V), f32(N, V)
        loss, c = K.distill_kl_forward(s, t, 2.0, None)
        d = dict(ref_fwd=lambda: K.distill_kl_forward_ref(s, t, 2.0, None),
                 cpu_fwd=lambda: K.distill_kl_forward(s, t, 2.0, None),
                 ref_bwd=lambda: K.distill_kl_backward_ref(1.0, c), cpu_bwd=lambda: K.distill_kl_backward(1.0, c),
                 bytes_fwd=2 * s.nbytes, bytes_bwd=3 * s.nbytes)
        if torch:
            d["torch_fwd"], d["torch_bwd"] = _torch_pair(
                torch, lambda s: tF.kl_div(tF.log_softmax(s / 2, -1), tF.softmax(torch.tensor(t) / 2, -1),
                                           reduction="batchmean") * 4, [s], 1.0)
        yield "distill KL T=2 (1024x30522)", d


    if want("cosine"):
        from . import cosine as K
        a, b = f32(N, C), f32(N, C)
        loss, c = K.cosine_loss_forward(a, b)
        d = dict(ref_fwd=lambda: K.cosine_loss_forward_ref(a, b), cpu_fwd=lambda: K.cosine_loss_forward(a, b),
                 ref_bwd=lambda: K.cosine_loss_backward_ref(1.0, c), cpu_bwd=lambda: K.cosine_loss_backward(1.0, c),
                 bytes_fwd=2 * a.nbytes, bytes_bwd=4 * a.nbytes)
        if torch:
            d["torch_fwd"], d["torch_bwd"] = _torch_pair(
                torch, lambda a, b: tF.cosine_embedding_loss(a, b, torch.ones(N)), [a, b], 1.0)
        yield "cosine loss (1024x768)", d

    if want("mse"):
        from . import cosine as K
        a, b = f32(N, C), f32(N, C)
        loss, c = K.mse_forward(a, b)
        d = dict(ref_fwd=lambda: K.mse_forward_ref(a, b), cpu_fwd=lambda: K.mse_forward(a, b),
                 ref_bwd=lambda: K.mse_backward_ref(1.0, c), cpu_bwd=lambda: K.mse_backward(1.0, c),
                 bytes_fwd=2 * a.nbytes, bytes_bwd=4 * a.nbytes)
        if torch:
            d["torch_fwd"], d["torch_bwd"] = _torch_pair(torch, tF.mse_loss, [a, b], 1.0)
        yield "mse (1024x768)", d

    if want("bce"):
        from . import bce as K
        x, y = f32(N, 16), (r.random((N, 16)) < 0.3).astype(np.float32)
        loss, c = K.bce_with_logits_forward(x, y)
        d = dict(ref_fwd=lambda: K.bce_with_logits_forward_ref(x, y), cpu_fwd=lambda: K.bce_with_logits_forward(x, y),
                 ref_bwd=lambda: K.bce_with_logits_backward_ref(1.0, c),
                 cpu_bwd=lambda: K.bce_with_logits_backward(1.0, c), bytes_fwd=2 * x.nbytes, bytes_bwd=3 * x.nbytes)
        if torch:
            d["torch_fwd"], d["torch_bwd"] = _torch_pair(
                torch, lambda x: tF.binary_cross_entropy_with_logits(x, torch.tensor(y)), [x], 1.0)
        yield "bce with logits (1024x16)", d

    if want("tanh"):
        from . import activations as K
        x, dy = f32(B, C), f32(B, C)
        y, c = K.tanh_forward(x)
        d = dict(ref_fwd=lambda: K.tanh_forward_ref(x), cpu_fwd=lambda: K.tanh_forward(x),
                 ref_bwd=lambda: K.tanh_backward_ref(dy, c), cpu_bwd=lambda: K.tanh_backward(dy, c),
                 bytes_fwd=2 * x.nbytes, bytes_bwd=3 * x.nbytes)
        if torch:
            d["torch_fwd"], d["torch_bwd"] = _torch_pair(torch, torch.tanh, [x], dy)
        yield "tanh, the pooler (8x768)", d

    if want("relu"):
        from . import activations as K
        x, dy = f32(N, C), f32(N, C)
        y, c = K.relu_forward(x)
        d = dict(ref_fwd=lambda: K.relu_forward_ref(x), cpu_fwd=lambda: K.relu_forward(x),
                 ref_bwd=lambda: K.relu_backward_ref(dy, c), cpu_bwd=lambda: K.relu_backward(dy, c),
                 bytes_fwd=2 * x.nbytes, bytes_bwd=3 * x.nbytes)
        if torch:
            d["torch_fwd"], d["torch_bwd"] = _torch_pair(torch, torch.relu, [x], dy)
        yield "relu (1024x768)", d

    if want("dropout"):
        from . import dropout as K
        x, dy = f32(N, F), f32(N, F)
        y, c = K.dropout_forward(x, 0.1, 1234)
        d = dict(ref_fwd=lambda: K.dropout_forward_ref(x, 0.1, 1234), cpu_fwd=lambda: K.dropout_forward(x, 0.1, 1234),
                 ref_bwd=lambda: K.dropout_backward_ref(dy, c), cpu_bwd=lambda: K.dropout_backward(dy, c),
                 bytes_fwd=2 * x.nbytes, bytes_bwd=2 * x.nbytes)
        if torch:  # torch draws and stores a mask; ours is regenerated from (seed, index)
            d["torch_fwd"], d["torch_bwd"] = _torch_pair(torch, lambda x: tF.dropout(x, 0.1, training=True), [x], dy)
        yield "dropout p=0.1 (1024x3072)", d

    if want("adamw"):
        from . import adamw as K
        n = 66_000_000  # DistilBERT-base's parameters in one array
        p, g = f32(n) * 0.02, f32(n) * 1e-3
        m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
        hp = dict(lr=1e-4, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.01, step=1)
        d = dict(ref_fwd=lambda: K.adamw_step_ref(p, g, m, v, **hp), cpu_fwd=lambda: K.adamw_step(p, g, m, v, **hp),
                 bytes_fwd=7 * p.nbytes)  # read p, g, m, v; write p, m, v
        if torch:
            tp = torch.nn.Parameter(torch.tensor(p))
            tp.grad = torch.tensor(g)
            opt = torch.optim.AdamW([tp], lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
            d["torch_fwd"] = opt.step
        yield "adamw step (66M params)", d


def run(names=None, repeat=10, warmup=2):
    rows = []
    print(f"{'op':<32} {'pass':<4} {'ref ms':>9} {'numba ms':>9} {'torch ms':>9} {'numba/ref':>9} "
          f"{'numba/torch':>11} {'numba rate':>16}")
    for name, d in cases(names):
        for p in ("fwd", "bwd"):
            if f"cpu_{p}" not in d:
                continue
            ref = _checks.bench(d[f"ref_{p}"], warmup=warmup, repeat=repeat)
            cpu = _checks.bench(d[f"cpu_{p}"], warmup=warmup, repeat=repeat)
            tor = _checks.bench(d[f"torch_{p}"], warmup=warmup, repeat=repeat) if f"torch_{p}" in d else None
            rate = ""
            if d.get(f"flops_{p}"):
                rate = f"{d[f'flops_{p}'] / cpu / 1e6:8.1f} GFLOP/s"
            elif d.get(f"bytes_{p}"):
                rate = f"{d[f'bytes_{p}'] / cpu / 1e6:8.2f} GB/s"
            tstr = f"{tor:9.2f}" if tor is not None else f"{'-':>9}"
            rt = f"{cpu / tor:11.2f}" if tor is not None else f"{'-':>11}"
            print(f"{name:<32} {p:<4} {ref:9.2f} {cpu:9.2f} {tstr} {cpu / ref:9.2f} {rt} {rate:>16}", flush=True)
            rows.append(dict(op=name, pass_=p, ref_ms=ref, numba_ms=cpu, torch_ms=tor))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# --device cuda: the bandwidth of the memory-bound CUDA kernels

CUDA_SIZES = {"base": dict(B=B, T=T, C=C, F=F, H=H),   # DistilBERT-base, T = 128
              "tiny": dict(B=2, T=4, C=8, F=16, H=2)}   # the simulator (every GPU thread a Python thread)
CUDA_OPS = ("layernorm", "gelu", "softmax", "attention")
F32 = 4  # bytes


def cuda_cases(size="base", names=None):
    """Yield (name, pass, launch, bytes, flops): launch() runs the CUDA kernel(s) of one op on device arrays; bytes
    is the least the op must move (inputs read once, outputs written once, caches included: they are outputs)."""
    from . import attention as KA
    from . import gelu as KG
    from . import layernorm as KL
    from . import softmax as KS
    d = CUDA_SIZES[size]
    b_, t_, c_, f_, h_ = d["B"], d["T"], d["C"], d["F"], d["H"]
    n = b_ * t_  # rows
    r = np.random.default_rng(0)
    dev = lambda *s: _cuda.to_device(r.standard_normal(s).astype(np.float32))  # noqa: E731

    if names is None or "layernorm" in names:
        x, res, w, bb, dy = dev(n, c_), dev(n, c_), dev(c_), dev(c_), dev(n, c_)
        _, cache = KL.residual_layernorm_forward_cuda(x, res, w, bb, 1e-12)
        # fwd reads x, r (N, C) and w, b (C); writes y and the cache's h = x + r (N, C), mean and rstd (N)
        yield (f"residual+layernorm ({n}x{c_})", "fwd",
               lambda: KL.residual_layernorm_forward_cuda(x, res, w, bb, 1e-12),
               F32 * (4 * n * c_ + 2 * c_ + 2 * n), 0)
        # bwd reads dy, h (N, C), w (C), mean, rstd (N); writes dh (N, C), dw, db (C)
        yield (f"residual+layernorm ({n}x{c_})", "bwd", lambda: KL.residual_layernorm_backward_cuda(dy, cache),
               F32 * (3 * n * c_ + 3 * c_ + 2 * n), 0)

    if names is None or "gelu" in names:
        x, bb, dy = dev(n, f_), dev(f_), dev(n, f_)
        _, cache = KG.bias_gelu_forward_cuda(x, bb)
        # fwd reads x (N, F), b (F); writes y (N, F)
        yield f"bias+gelu ({n}x{f_})", "fwd", lambda: KG.bias_gelu_forward_cuda(x, bb), F32 * (2 * n * f_ + f_), 0
        # bwd reads dy, x (N, F), b (F); writes dx (N, F), db (F)
        yield (f"bias+gelu ({n}x{f_})", "bwd", lambda: KG.bias_gelu_backward_cuda(dy, cache),
               F32 * (3 * n * f_ + 2 * f_), 0)

    if names is None or "softmax" in names:
        rows = b_ * h_ * t_  # the attention's rows of scores: (B*H*T, T)
        x, dy = dev(rows, t_), dev(rows, t_)
        _, cache = KS.softmax_forward_cuda(x)
        # fwd reads x, writes y; bwd reads dy, y and writes dx (all (B*H*T, T))
        yield f"softmax ({rows}x{t_})", "fwd", lambda: KS.softmax_forward_cuda(x), F32 * 2 * rows * t_, 0
        yield (f"softmax ({rows}x{t_})", "bwd", lambda: KS.softmax_backward_cuda(dy, cache),
               F32 * 3 * rows * t_, 0)

    if names is None or "attention" in names:
        q, k, v, dy = dev(b_, t_, c_), dev(b_, t_, c_), dev(b_, t_, c_), dev(b_, t_, c_)
        host_mask = np.ones((b_, t_), np.int32)
        host_mask[-1, t_ - t_ // 4:] = 0
        mask = _cuda.to_device(host_mask)
        _, cache = KA.attention_forward_cuda(q, k, v, mask, h_)
        act, probs, mb = b_ * t_ * c_, b_ * h_ * t_ * t_, host_mask.nbytes
        fl = 4 * b_ * h_ * t_ * t_ * (c_ // h_)  # Q K^T and P V, 2 flops per multiply-add
        name = f"attention (B{b_} T{t_} H{h_} D{c_ // h_})"
        # fwd reads q, k, v (B, T, C) and the mask; writes out (B, T, C) and probs (B, H, T, T) for backward
        yield name, "fwd", lambda: KA.attention_forward_cuda(q, k, v, mask, h_), F32 * (4 * act + probs) + mb, fl
        # bwd reads dout, q, k, v (B, T, C), probs (B, H, T, T) and the mask; writes dq, dk, dv (B, T, C)
        yield name, "bwd", lambda: KA.attention_backward_cuda(dy, cache), F32 * (7 * act + probs) + mb, 2 * fl


@functools.cache
def _spin_kernel():
    global cuda
    cuda = _cuda.get_cuda()

    @cuda.jit
    def spin(out, n):
        # one thread counting n steps of a dependent chain: keeps the GPU busy while Python queues launches
        acc = out[0]
        for _ in range(n):
            acc = acc * np.float32(0.999999) + np.float32(1.0)
        out[0] = acc

    return spin


cuda = None  # numba.cuda, bound by _spin_kernel() (the simulator swaps this module global)


def time_cuda(fn, repeat=50, warmup=3):
    """(wall ms, device ms or None, host_bound) per call of fn, as the module docstring defines them."""
    import time
    cu = _cuda.require_cuda()
    if _cuda.SIMULATOR:
        warmup = min(warmup, 1)  # compiles nothing there; each call is seconds
    for _ in range(warmup):
        fn()
    cu.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    cu.synchronize()
    wall = (time.perf_counter() - t0) * 1e3 / repeat
    if _cuda.SIMULATOR:  # the simulator's events do not time anything
        return wall, None, False
    spin, buf = _spin_kernel(), cu.device_array(1, np.float32)
    spin[1, 1](buf, 1000)  # compile
    cu.synchronize()
    start, end = cu.event(), cu.event()
    start.record()
    spin[1, 1](buf, 1_000_000)
    end.record()
    end.synchronize()
    ns_per_step = max(start.elapsed_time(end), 1e-3) * 1e6 / 1_000_000
    steps = int(min(2e9, 2.0 * repeat * wall * 1e6 / ns_per_step))  # spin for twice the launches' wall time
    spun, first, last = cu.event(), cu.event(), cu.event()
    with cu.defer_cleanup():
        spin[1, 1](buf, steps)
        spun.record()
        first.record()
        for _ in range(repeat):
            fn()
        last.record()
        host_bound = spun.query()  # the spin is over before the last launch was queued: the GPU waited
        last.synchronize()
    return wall, first.elapsed_time(last) / repeat, bool(host_bound)


def copy_peak_gbps(nbytes: int, repeat=20):
    """The practical peak: a device-to-device copy of nbytes (read once, written once: 2 nbytes moved)."""
    src = _cuda.device_zeros((nbytes // F32,))
    dst = _cuda.device_empty((nbytes // F32,))
    _, dev_ms, _ = time_cuda(lambda: dst.copy_to_device(src), repeat=repeat)
    wall_ms, _, _ = time_cuda(lambda: dst.copy_to_device(src), repeat=repeat)
    ms = dev_ms if dev_ms is not None else wall_ms
    return 2 * nbytes / ms / 1e6


def run_cuda(size="base", names=None, repeat=50, peak_gbps=4800.0, copy_mb=None, log=print):
    log(_cuda.describe())
    copy_bytes = int((copy_mb if copy_mb is not None else (1024 if size == "base" else 1)) * 2**20)
    practical = copy_peak_gbps(copy_bytes, repeat=max(3, repeat // 5))
    log(f"peak bandwidth: {peak_gbps:.0f} GB/s (--peak-gbps); practical peak, a device-to-device copy of "
        f"{copy_bytes / 2**20:.0f} MB: {practical:.0f} GB/s ({practical / peak_gbps:.0%} of the peak)")
    log(f"{'kernel':<34} {'pass':<4} {'MB':>8} {'wall ms':>9} {'device ms':>9} {'GB/s':>8} {'of peak':>8} "
        f"{'of copy':>8} {'GFLOP/s':>8}")
    rows = []
    for name, p, fn, nbytes, fl in cuda_cases(size, names):
        wall, dev, host_bound = time_cuda(fn, repeat=repeat)
        ms = dev if dev is not None else wall
        gbps = nbytes / ms / 1e6
        row = dict(op=name, pass_=p, bytes=nbytes, wall_ms=wall, device_ms=dev, host_bound=host_bound, gbps=gbps,
                   of_peak=gbps / peak_gbps, of_copy=gbps / practical, gflops=(fl / ms / 1e6 if fl else None))
        rows.append(row)
        dstr = f"{dev:9.4f}" if dev is not None else f"{'-':>9}"
        fstr = f"{row['gflops']:8.0f}" if fl else f"{'-':>8}"
        log(f"{name:<34} {p:<4} {nbytes / 1e6:8.2f} {wall:9.4f} {dstr} {gbps:8.1f} {row['of_peak']:8.1%} "
            f"{row['of_copy']:8.1%} {fstr}" + ("  host-bound: the device time is an upper bound" if host_bound
                                              else ""))
    return dict(device=_cuda.describe(), peak_gbps=peak_gbps, copy_gbps=practical, copy_bytes=copy_bytes,
                rows=rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ops", nargs="*", help="any of: linear gelu layernorm attention softmax embedding cross_entropy "
                    "distill_kl cosine mse bce tanh relu dropout adamw (default: all); with --device cuda: any of "
                    + " ".join(CUDA_OPS))
    ap.add_argument("--repeat", type=int, default=None, help="timed calls per op (default: 10 on the CPU, 50 on "
                    "the GPU)")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cpu (default): every op, Numba beside NumPy and torch; cuda: the bandwidth of the "
                    "memory-bound CUDA kernels")
    ap.add_argument("--peak-gbps", type=float, default=4800.0,
                    help="the device's peak memory bandwidth in GB/s (default: 4800, an H200)")
    ap.add_argument("--size", choices=list(CUDA_SIZES), default="base",
                    help="--device cuda sizes: base (DistilBERT-base, T=128; the default) or tiny (the simulator)")
    ap.add_argument("--copy-mb", type=float, default=None,
                    help="size of the device-to-device copy that measures the practical peak (default: 1024 MB; "
                    "1 MB with --size tiny)")
    args = ap.parse_args(argv)
    if args.device == "cuda":
        bad = [o for o in args.ops if o not in CUDA_OPS]
        if bad:
            ap.error(f"--device cuda times {', '.join(CUDA_OPS)}; got {bad}")
        if args.peak_gbps <= 0:
            ap.error("--peak-gbps must be > 0")
        try:
            _cuda.require_cuda()
        except RuntimeError as e:
            print(f"minidistil.kernels.bench: error: {e}", file=sys.stderr)
            return 2
        out = run_cuda(args.size, args.ops or None, repeat=args.repeat or 50, peak_gbps=args.peak_gbps,
                       copy_mb=args.copy_mb)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
        return 0
    args.repeat = args.repeat or 10
    blas = _blas.kernel_report(command="python -m minidistil.kernels.bench")
    print(_blas.kernel_line(blas))
    if blas["warning"]:
        print(blas["warning"], file=sys.stderr, flush=True)
    torch = _try_torch()
    if torch:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    else:
        print("torch not installed: its column is empty")
    rows = run(args.ops or None, repeat=args.repeat)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
