"""Exercise cuda_row_max: the maximum of each row with a numba.cuda kernel (one block per row, a strided share per
thread, a tree reduction in shared memory), run on a GPU or on the CUDA simulator, checked against NumPy.

The maximum is exact in any order, so the result must equal np.max bit for bit.

Where it runs: the answer's child process (child.py) sets NUMBA_ENABLE_CUDASIM before the answer imports numba,
unless the user set it: 1 (the CUDA simulator) on a machine without an NVIDIA GPU (no /dev/nvidiactl, as
tests/conftest.py decides), 0 on one with a GPU. So `minidistil grade cuda_row_max FILE` grades on a laptop without
any setting; NUMBA_ENABLE_CUDASIM=0 on a machine without a GPU is the one combination that cannot run, and the
first check says so.
"""
import os

import numpy as np

from minidistil.grading.child import cuda_simulator_setting
from minidistil.grading.engine import CaseOver, Exercise, Session

SIM_HINT = ("no CUDA device: NUMBA_ENABLE_CUDASIM=0 is set and this machine has no NVIDIA GPU; unset it (the grader "
            "then runs your kernel on the CUDA simulator) or grade on a machine with a GPU and numba-cuda")


def _partials(x, threads):
    """(N, threads) each thread's strided share of the row: max of x[row, t::threads] (-inf when empty)."""
    N, K = x.shape
    out = np.full((N, threads), -np.inf)
    for t in range(min(threads, K)):
        out[:, t] = x[:, t::threads].max(axis=1)
    return out


def run(s: Session):
    # the answer's process runs the simulator, or has a GPU (what child.py decides, asked here without numba); a
    # check only when it cannot run: a device is no merit of the answer, so it earns no points
    if cuda_simulator_setting() != "1" and not os.path.exists("/dev/nvidiactl"):
        with s.case("a CUDA device or the simulator"):
            s.check.fail("NUMBA_ENABLE_CUDASIM is not 1 and there is no GPU: numba.cuda has no device for your "
                         "kernel", SIM_HINT)
        return
    threads = int(getattr(s.module, "THREADS", 8) or 8)     # the stub's block size (for the hints' variants only)
    r = np.random.default_rng(10)
    cases = [
        ("random (3, 20): more columns than threads", r.standard_normal((3, 20)).astype(np.float32)),
        ("all-negative rows (2, 5)", (-np.abs(r.standard_normal((2, 5))) - 1).astype(np.float32)),
        ("the maximum in the last column (2, 19)",
         np.hstack([r.standard_normal((2, 18)), np.full((2, 1), 9.0)]).astype(np.float32)),
        ("fewer columns than threads (2, 3)", r.standard_normal((2, 3)).astype(np.float32)),
        ("one row, one column (1, 1)", np.array([[-2.5]], np.float32)),
    ]
    for label, x in cases:
        expect = x.astype(np.float64).max(axis=1)
        part = _partials(x.astype(np.float64), max(threads, 1))
        with s.case(label):
            before = x.copy()
            got = s.call("row_max", x)
            s.expect_unchanged("x", before, x)
            if got is None:
                s.check.fail("row_max returned None", "copy the device result back: return out.copy_to_host()",
                             where="return value")
                raise CaseOver
            s.expect_array("out", np.asarray(got), expect, 0.0, variants={
                "start each thread's running maximum at -inf (or at its first element), not at 0: a row of "
                "negative numbers has a negative maximum": lambda: np.maximum(expect, 0.0),
                "each thread must walk its whole strided share, j = t, t + THREADS, t + 2 THREADS, ... < n: yours "
                "looks only at the first THREADS columns": lambda: x[:, :threads].max(axis=1),
                "only thread 0's share reached the output: reduce ALL the threads' partial maxima in shared memory "
                "(the tree: buf[t] = max(buf[t], buf[t + s]) for s = THREADS/2, ..., 1, with cuda.syncthreads() "
                "after each step) before thread 0 writes buf[0]": lambda: part[:, 0],
                "the tree stopped one step early (s must go down to 1): only buf[0] and buf[1] were never "
                "combined": lambda: part[:, 0::2].max(axis=1),
            })


EXERCISE = Exercise("cuda_row_max", "the maximum of each row, a numba.cuda shared-memory reduction", ("row_max",),
                    run, exception_hints=(("CudaSupportError", "numba.cuda found no usable device: grade on the "
                                           "simulator (NUMBA_ENABLE_CUDASIM=1) or check the GPU's driver"),
                                          ("TypingError", "numba.cuda could not compile your kernel: inside it use "
                                           "float32(...), math.* functions and array indexing only")))
