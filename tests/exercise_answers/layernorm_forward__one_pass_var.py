"""Deliberately buggy answer (tests only): layernorm_forward where var = E[x^2] - E[x]^2 in float32."""
import numpy as np


def layernorm_forward(x, w, b, eps):
    C = x.shape[-1]
    x2 = x.reshape(-1, C)                                  # (N, C)
    mean = x2.mean(axis=1)                                 # (N,)
    var = (x2 * x2).mean(axis=1) - mean * mean         # (N,)
    rstd = (1 / np.sqrt(var + x.dtype.type(eps))).astype(x.dtype)
    y = (x2 - mean[:, None]) * rstd[:, None] * w + b
    return y.reshape(x.shape), mean, rstd
