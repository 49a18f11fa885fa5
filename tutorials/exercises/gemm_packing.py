"""Exercise: pack B into panels, and multiply by the packed panels.     Grade it:  minidistil grade gemm_packing FILE

A fast GEMM C = A B (A (M, K), B (K, N)) does not read B as it is stored: it first copies it into NR-wide column
PANELS, each stored k-major, so that the inner loop reads one short contiguous row of NR floats per step of k
(chapter 12 measures why). The last panel is padded with zero columns up to NR:

    P = ceil(N / NR)                                  the number of panels
    packed[p, k, j] = B[k, p NR + j]   if p NR + j < N
                    = 0                otherwise       (p < P, k < K, j < NR)

Write
    pack_panels(b, nr) -> packed (P, K, nr)           the layout above
    matmul_panels(a, packed, n) -> c (M, n)           C = A B computed from the panels: panel p gives the
                                                      columns p NR ... p NR + NR - 1 of C (an (M, K) @ (K, NR)
                                                      product each); drop the padding columns at the end

Shapes: a (M, K), b (K, N), nr >= 1, n = N (the panels do not remember it). M, K or N may be 1, and N need not be a
multiple of nr. Dtype rule: float32 in, float32 out (np.zeros(..., dtype=b.dtype)). Do not modify a or b.
Reference, to read once you are done: gemm_ref in the module minidistil.kernels.gemm (its pack_b is this layout,
flattened, with NR = 48); open its file with
    python -c "import minidistil.kernels.gemm as m; print(m.__file__)"
"""
import numpy as np


def pack_panels(b: np.ndarray, nr: int) -> np.ndarray:
    """b (K, N) -> packed (ceil(N / nr), K, nr): column panels, zero padded."""
    raise NotImplementedError


def matmul_panels(a: np.ndarray, packed: np.ndarray, n: int) -> np.ndarray:
    """a (M, K), packed (P, K, nr) from pack_panels, n the columns of B -> c (M, n) = a @ B."""
    raise NotImplementedError
