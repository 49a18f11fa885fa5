"""Deliberately buggy answer (tests only): cross_entropy where treats -100 as a class index."""
import numpy as np


def _parts(x, t, ignore_index):
    keep = np.ones(len(t), bool)
    m = x.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(x - m).sum(axis=1, keepdims=True))       # (N, 1)
    return keep, lse, int(keep.sum())


def cross_entropy_loss(logits, targets, ignore_index=-100):
    keep, lse, n = _parts(logits, targets, ignore_index)
    if n == 0:
        return 0.0
    rows = np.nonzero(keep)[0]
    return float((lse[rows, 0] - logits[rows, targets[rows]]).sum() / n)


def cross_entropy_grad(logits, targets, ignore_index=-100):
    keep, lse, n = _parts(logits, targets, ignore_index)
    g = np.exp(logits - lse)                                           # softmax
    rows = np.nonzero(keep)[0]
    g[rows, targets[rows]] -= 1
    g[~keep] = 0
    return g / logits.dtype.type(max(n, 1))
