"""CPU against GPU at DistilBERT-base size: `python -m minidistil.gpu_check` on a machine with an NVIDIA GPU.

    python -m minidistil.gpu_check                 # B=8, T=128, random weights, tolerance 1e-4
    python -m minidistil.gpu_check --batch 2 --tokens 64

Builds DistilBertForMaskedLM with the config of distilbert-base-uncased (C 768, 6 layers, 12 heads, F 3072,
V 30522) and random weights, then runs the same work on the CPU and on the GPU and compares:
    forward    the logits (B, T, V) of an eval-mode forward
    training   one step in training mode (dropout on, the same seeds on both devices): the MLM loss, every
               parameter's gradient, and the parameters after one AdamW update
Each comparison is max |gpu - cpu| / scale, with scale the largest |cpu| of that array (for a bias gradient, also
that of its weight's gradient: the key bias's gradient is 0 up to rounding, see tests/test_gpu.py), and must be
<= --tol (1e-4 by default). AdamW runs with eps = 1e-3 instead of 1e-6: its first update is
lr * g / (|g| + eps), which for eps << |g| is lr * sign(g), decided by rounding where g is near 0.

Both devices compute in float32 and differ only in the order of their sums, so 1e-4 of the scale is what a few
hundred chained float32 reductions (this model's depth) leave, with room. On the numba.cuda simulator this size
would take days: it refuses to run there (tests/test_gpu.py compares a tiny model on the simulator instead).
Exit status: 0 all within tolerance, 1 some not, 2 no real GPU.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def _scale(name: str, arrays: dict) -> float:
    s = float(np.abs(arrays[name]).max(initial=0.0))
    sibling = name[: -len("bias")] + "weight"
    if name.endswith(".bias") and sibling in arrays:
        s = max(s, float(np.abs(arrays[sibling]).max(initial=0.0)))
    return s


def _run(device: str, batch: int, tokens: int, seed: int):
    from minidistil.core import functional as F
    from minidistil.core.autograd import no_grad
    from minidistil.apps.bench import FULL, Scenario, make_inputs
    from minidistil.core.config import DistilBertConfig
    from minidistil.models.distilbert import DistilBertForMaskedLM
    from minidistil.kernels import _cuda
    from minidistil.core.optim import AdamW
    ids, mask, labels = make_inputs(FULL, Scenario("check", "train", batch, tokens), seed)
    model = DistilBertForMaskedLM.from_config(DistilBertConfig(), seed=seed).to(device)
    model.eval()
    with no_grad():
        logits = model(ids, mask).logits.numpy()                                # (B, T, V)
    model.train()
    F.manual_seed(seed)  # the dropout seeds: the same masks on both devices
    out = model(ids, mask, labels=labels)
    out.loss.backward()
    grads = {n: _cuda.to_host(p.grad) for n, p in model.named_parameters() if p.grad is not None}
    AdamW(model.named_parameters(), lr=1e-4, eps=1e-3).step()
    params = {n: np.array(a) for n, a in model.state_dict().items()}
    return {"logits": logits, "loss": np.float32(out.loss.item())}, grads, params


def check(batch: int = 8, tokens: int = 128, tol: float = 1e-4, seed: int = 0, log=print) -> int:
    from minidistil.core.device import describe
    from minidistil.kernels import _cuda
    try:
        _cuda.require_cuda()
    except RuntimeError as e:
        log(f"gpu_check: {e}")
        return 2
    if _cuda.SIMULATOR:
        log("gpu_check: NUMBA_ENABLE_CUDASIM=1 is set: DistilBERT-base on the simulator would take days; run it "
            "on a machine with a GPU (tests/test_gpu.py checks a tiny model on the simulator)")
        return 2
    log(describe("cuda"))
    log(f"DistilBERT-base MLM, random weights, B={batch}, T={tokens}; tolerance {tol:g} of each array's scale")
    cpu = _run("cpu", batch, tokens, seed)
    gpu = _run("cuda", batch, tokens, seed)
    worst, failed = {}, []
    for part, label in zip(range(3), ("output", "gradient", "parameter")):
        want, got = cpu[part], gpu[part]
        if set(want) != set(got):
            log(f"{label}s differ in names: {sorted(set(want) ^ set(got))}")
            return 1
        for name in want:
            scale = max(_scale(name, want), np.finfo(np.float32).tiny)
            err = float(np.abs(np.asarray(got[name], np.float64) - np.asarray(want[name], np.float64)).max(
                initial=0.0)) / scale
            if err > worst.get(label, (0.0, ""))[0] or label not in worst:
                worst[label] = (err, name)
            if not err <= tol:
                failed.append((label, name, err))
    for label, (err, name) in worst.items():
        log(f"{label + 's':<11} largest relative difference {err:.2e} ({name})")
    for label, name, err in failed:
        log(f"FAIL {label} {name}: {err:.2e} > {tol:g}")
    log("OK: CPU and GPU agree within the tolerance" if not failed else f"{len(failed)} arrays out of tolerance")
    return 0 if not failed else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minidistil.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8, help="B (default 8)")
    p.add_argument("--tokens", type=int, default=128, help="T (default 128)")
    p.add_argument("--tol", type=float, default=1e-4, help="largest allowed relative difference (default 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.batch < 1 or not 1 <= a.tokens <= 512:
        p.error("--batch must be >= 1 and --tokens in [1, 512]")
    return check(a.batch, a.tokens, a.tol, a.seed)


if __name__ == "__main__":
    sys.exit(main())
