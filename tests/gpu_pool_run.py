"""tests/gpu_run.sh's `pool` step: a few distillation steps on the GPU with the device memory pool
(kernels/_cuda_pool.py), printing after each step the pool's statistics and the cuMemAlloc / cuMemFree calls numba
made in it (numba's driver functions wrapped by counters before its context exists).

    python tests/gpu_pool_run.py [--steps 4] [--tiny]      # the pool on (the default)
    MINIDISTIL_CUDA_POOL=0 python tests/gpu_pool_run.py     # numba's own allocator, to compare

The model: a 2-layer BERT teacher (C 256, 4 heads, F 1024, V 8192) and a 1-layer DistilBERT student made from it,
B 16, T 128; --tiny shrinks it to what the simulator runs in seconds (there the pool is not installed, and the
counts are not taken: the simulator has no driver). With the pool on, no step may call cuMemFree (the pool frees
only when the device runs out of memory); steps after the first should allocate little or nothing on the device
(they reuse the first step's blocks; what Python's garbage collector has not yet freed may need new ones).
Exit status: 1 when the pool is on and a step called cuMemFree, else 0.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time

import numpy as np


def _counted(fn, name, calls):
    def counted(*args):
        calls[name] += 1
        return fn(*args)
    return counted


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tiny", action="store_true", help="a model the simulator runs in seconds")
    args = ap.parse_args(argv)

    from minidistil.kernels import _cuda
    cuda = _cuda.require_cuda()              # installs the pool (unless switched off) before numba's context
    calls = collections.Counter()
    if not _cuda.SIMULATOR:                  # count numba's driver calls (looked up at each call, so wrapping works)
        drv = cuda.cudadrv.driver.driver
        for name in ("cuMemAlloc", "cuMemFree"):
            setattr(drv, name, _counted(getattr(drv, name), name, calls))

    from minidistil.core import functional as F
    from minidistil.core.autograd import no_grad
    from minidistil.core.config import BertConfig
    from minidistil.core.optim import AdamW, clip_grad_norm
    from minidistil.models.bert import BertForMaskedLM
    from minidistil.train.distill import LossWeights, distillation_loss, forward_outputs, make_student

    V, C, H, FF, L, B, T = (24, 8, 2, 16, 2, 2, 4) if args.tiny else (8192, 256, 4, 1024, 2, 16, 128)
    cfg = BertConfig(vocab_size=V, hidden_size=C, num_hidden_layers=L, num_attention_heads=H, intermediate_size=FF,
                     max_position_embeddings=T, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    teacher = BertForMaskedLM.from_config(cfg, seed=1).eval()
    student = make_student(teacher, layers=[0])
    teacher.to("cuda")
    student.to("cuda")
    student.train()
    opt = AdamW(student.named_parameters(), lr=1e-4)
    w = LossWeights(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0)
    r = np.random.default_rng(0)
    print(_cuda.describe())
    print("pool:", _cuda.pool_stats()["status"])
    frees_after_first = 0
    for s in range(args.steps):
        before = collections.Counter(calls)
        t0 = time.perf_counter()
        ids = r.integers(0, V, (B, T))
        mask = np.ones((B, T), np.int64)
        labels = np.where(r.random((B, T)) < 0.15, ids, -100)
        F.manual_seed(s)
        with no_grad():
            t_logits, t_hidden = forward_outputs(teacher, ids, mask)
        s_logits, s_hidden = forward_outputs(student, ids, mask)
        loss, _ = distillation_loss(s_logits, t_logits, s_hidden, t_hidden, labels, mask, w)
        loss.backward()
        clip_grad_norm(opt.parameters(), max_norm=1.0)
        opt.step()
        opt.zero_grad()
        del t_logits, t_hidden, s_logits, s_hidden, loss
        cuda.synchronize()
        step_calls = {k: calls[k] - before[k] for k in ("cuMemAlloc", "cuMemFree")}
        if s:
            frees_after_first += step_calls["cuMemFree"]
        print(f"step {s}: {time.perf_counter() - t0:.3f} s; driver calls {json.dumps(step_calls)}; pool "
              f"{json.dumps({k: v for k, v in _cuda.pool_stats().items() if k != 'status'})}")
    print(f"cuMemAlloc calls: {calls['cuMemAlloc']}, cuMemFree calls: {calls['cuMemFree']} (all steps); "
          f"cuMemFree after the first step: {frees_after_first}")
    if _cuda.pool_stats()["status"] == "installed" and calls["cuMemFree"]:
        print("FAILED: the pool is on, yet numba called cuMemFree")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
