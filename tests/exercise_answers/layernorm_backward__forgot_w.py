"""Deliberately buggy answer (tests only): layernorm_backward where uses dy where dxhat = dy * w belongs."""
import numpy as np


def layernorm_backward(dy, x, w, mean, rstd):
    C = x.shape[-1]
    x2, dy2 = x.reshape(-1, C), dy.reshape(-1, C)
    xhat = (x2 - mean[:, None]) * rstd[:, None]
    dxhat = dy2
    dx = rstd[:, None] * (dxhat - dxhat.mean(axis=1, keepdims=True)
                          - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
    return dx.reshape(x.shape), (dy2 * xhat).sum(axis=0), dy2.sum(axis=0)
