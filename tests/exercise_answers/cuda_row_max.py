"""Reference answer (tests only): row maximum, a shared-memory reduction in numba.cuda."""
import math

import numpy as np
from numba import cuda, float32

THREADS = 8


@cuda.jit
def row_max_kernel(x, out):
    row = cuda.blockIdx.x
    t = cuda.threadIdx.x
    n = x.shape[1]
    buf = cuda.shared.array(THREADS, float32)
    acc = float32(-math.inf)
    j = t
    while j < n:
        acc = max(acc, x[row, j])
        j += THREADS
    buf[t] = acc
    cuda.syncthreads()
    s = THREADS // 2
    while s > 0:
        if t < s:
            buf[t] = max(buf[t], buf[t + s])
        cuda.syncthreads()
        s //= 2
    if t == 0:
        out[row] = buf[0]


def row_max(x):
    out = cuda.device_array(x.shape[0], dtype=np.float32)
    row_max_kernel[x.shape[0], THREADS](cuda.to_device(x), out)
    return out.copy_to_host()
