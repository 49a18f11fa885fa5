"""Exercise: bias + GELU, fused into one Numba loop.     Grade it:  minidistil grade fused_bias_gelu FILE

The first FFN layer's bias is followed by GELU. Unfused, gelu(x + b) writes the sum x + b to a temporary array and
reads it back; fused, each element's bias is added in a register inside the GELU loop, one pass over x:

    y[i, j] = gelu(x[i, j] + b[j]),     gelu(v) = 0.5 v (1 + erf(v / sqrt(2)))      (the exact form, not tanh)

Write it as an @njit function with two loops (rows i, columns j). Inside @njit, use math.erf and math.sqrt
(`import math`); keep float32: wrap constants in np.float32(...), allocate y with np.empty_like(x).
Chapter 09 (tutorials/09_cpu_performance.py, section 2) measures what the fusion saves; chapter 01 derives GELU.

x: (N, F) float32, b: (F,) float32. Return y (N, F) float32. Do not modify x or b.
The first call compiles the function (a second or two).
Reference, to read once you are done: bias_gelu_forward_ref in the module minidistil.kernels.gelu; open its file with
    python -c "import minidistil.kernels.gelu as m; print(m.__file__)"
"""
import math  # noqa: F401 (for your answer: math.erf, math.sqrt)

import numpy as np  # noqa: F401
from numba import njit


@njit
def bias_gelu(x, b):
    """x (N, F), b (F,) float32 -> y = gelu(x + b) (N, F) float32, in one pass."""
    raise NotImplementedError
