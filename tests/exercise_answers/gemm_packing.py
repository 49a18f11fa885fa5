"""Reference answer (tests only): packing B into NR-wide panels, and the product from the panels."""
import numpy as np


def pack_panels(b, nr):
    K, N = b.shape
    P = -(-N // nr)                                          # ceil(N / nr) panels
    packed = np.zeros((P, K, nr), dtype=b.dtype)             # zeros: the padding of the last panel
    for p in range(P):
        cols = b[:, p * nr:(p + 1) * nr]                     # (K, <= nr) the panel's columns
        packed[p, :, :cols.shape[1]] = cols
    return packed


def matmul_panels(a, packed, n):
    P, K, nr = packed.shape
    c = np.zeros((a.shape[0], P * nr), dtype=a.dtype)
    for p in range(P):
        c[:, p * nr:(p + 1) * nr] = a @ packed[p]            # (M, K) @ (K, nr): columns p nr ... p nr + nr - 1
    return c[:, :n]                                          # drop the padding columns
