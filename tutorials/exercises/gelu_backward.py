"""Exercise: the backward pass of GELU.
Grade it:  minidistil grade gelu_backward tutorials/exercises/gelu_backward.py

BERT's feed-forward block uses the exact GELU (not the tanh approximation):

    y = gelu(x) = x * Phi(x),    Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))        the normal CDF

Given dy = dL/dy, return dx = dL/dx. Work out d/dx [x * Phi(x)] with the product rule; you will need the normal
density phi(x) = exp(-x^2 / 2) / sqrt(2 pi), the derivative of Phi.

Shapes: x and dy have the same, arbitrary shape (for example (B, T, F)); dx has that shape too.
Dtype rule: float32 in, float32 out (NumPy promotes to float64 if you mix in a float64 array or np.float64 scalar:
wrap constants in np.float32(...)). The grader also calls it with float64 inputs for a finite-difference check:
return the dtype of x.
Do not modify x or dy.  NumPy has no erf: use `from scipy.special import erf`.
The reference to compare your maths with afterwards: minidistil/kernels/gelu.py (gelu_backward_ref).
"""
import numpy as np
from scipy.special import erf  # noqa: F401


def gelu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dy (...), x (...) -> dx (...), the gradient of the loss with respect to the input of gelu."""
    raise NotImplementedError
