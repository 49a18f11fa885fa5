"""Deliberately buggy answer (tests only): attention_backward where the 1/sqrt(D) is dropped."""
import numpy as np


def attention_backward(dout, q, k, v, mask, probs, n_heads):
    B, T, C = q.shape
    H, D = n_heads, C // n_heads

    def split(a):
        return a.reshape(B, T, H, D).transpose(0, 2, 1, 3)           # (B, H, T, D)

    def merge(a):
        return np.ascontiguousarray(a.transpose(0, 2, 1, 3).reshape(B, T, C))

    Q, K, V, dO = split(q), split(k), split(v), split(dout)
    P = probs
    dP = dO @ V.swapaxes(-1, -2)                                       # O = P V
    dV = P.swapaxes(-1, -2) @ dO
    dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))              # P = softmax(S)
    dS = np.where((mask == 0)[:, None, None, :], 0, dS).astype(q.dtype)
    scale = q.dtype.type(1)
    dQ = dS @ K * scale                                                # S = Q K^T / sqrt(D)
    dK = dS.swapaxes(-1, -2) @ Q * scale
    return merge(dQ), merge(dK), merge(dV)
