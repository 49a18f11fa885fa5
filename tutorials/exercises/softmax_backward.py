"""Exercise: the backward pass of softmax.   Grade it:  minidistil grade softmax_backward FILE

The forward, over the last axis (every leading axis is a row):

    y_i = exp(x_i - m) / sum_j exp(x_j - m),     m = max_j x_j

Given y (the forward's output) and dy = dL/dy, return dx = dL/dx. The Jacobian is dy_i/dx_j = y_i ([i == j] - y_j);
multiply it out with dy and you get one elementwise product and one sum per row. Do not build the (N, N) Jacobian.

Shapes: dy and y (..., N); dx (..., N). Rows may contain exact zeros (masked entries) or be uniform (a fully padded
row): your formula needs no special case for them.
Dtype rule: float32 in, float32 out (and float64 in, float64 out for the finite-difference check).
Reference, to read once you are done: softmax_backward_ref in the module minidistil.kernels.softmax; open its file with
    python -c "import minidistil.kernels.softmax as m; print(m.__file__)"
"""
import numpy as np


def softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dy (..., N), y = softmax(x) (..., N) -> dx (..., N)."""
    raise NotImplementedError
