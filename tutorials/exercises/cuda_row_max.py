"""Exercise: the maximum of each row on the GPU.     Grade it:  minidistil grade cuda_row_max FILE

Softmax and the losses need each row's maximum (exp(x - max) never overflows). One block of THREADS threads per
row, as chapter 10 (tutorials/10_gpu_kernels.py, section 2) does for row sums:

    1. thread t walks its strided share of the row, j = t, t + THREADS, t + 2 THREADS, ... < n, keeping a running
       maximum that starts at -inf (a row of negatives has a negative maximum);
    2. it writes that partial maximum to shared memory buf[t];  cuda.syncthreads();
    3. a tree: for s = THREADS // 2, THREADS // 4, ..., 1: threads t < s set buf[t] = max(buf[t], buf[t + s]);
       cuda.syncthreads() after each step;
    4. thread 0 writes buf[0] to out[row].

Fill in the body of `row_max_kernel`; `row_max` launches it and is done. No GPU? The grader then runs your kernel
on the CUDA simulator by itself (every GPU thread a Python thread, slow, so THREADS is small); to run this file
yourself without a GPU, set the simulator before Python starts:  NUMBA_ENABLE_CUDASIM=1 python FILE
x: (N, K) float32. row_max returns (N,) float32 equal to x.max(axis=1) exactly (a maximum does not round).
"""
import math  # noqa: F401 (for your answer: math.inf)

import numpy as np
from numba import cuda, float32

THREADS = 8  # threads per block (a power of two); the shared array's size must be a compile-time constant


@cuda.jit
def row_max_kernel(x, out):
    row = cuda.blockIdx.x          # one block per row  # noqa: F841
    t = cuda.threadIdx.x           # this thread         # noqa: F841
    buf = cuda.shared.array(THREADS, float32)  # noqa: F841
    raise NotImplementedError


def row_max(x):
    """x (N, K) float32 -> (N,) float32, each row's maximum, computed by row_max_kernel."""
    out = cuda.device_array(x.shape[0], dtype=np.float32)
    row_max_kernel[x.shape[0], THREADS](cuda.to_device(x), out)
    return out.copy_to_host()
