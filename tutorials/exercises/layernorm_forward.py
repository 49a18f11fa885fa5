"""Exercise: the forward pass of layer normalisation.   Grade it:  minidistil grade layernorm_forward FILE

Every row x of width C (the last axis; x (..., C) is viewed as (N, C) rows) is normalised on its own:

    mean = sum(x) / C
    var  = sum((x - mean)^2) / C          the BIASED variance (divide by C), as BERT and torch use
    rstd = 1 / sqrt(var + eps)            eps inside the square root
    xhat = (x - mean) * rstd
    y    = xhat * w + b                   w, b (C,) scale and shift, shared by every row

Return (y, mean, rstd): y with the shape of x; mean and rstd of shape (N,), one value per row, N = x.size // C
(the backward pass needs them, so the forward hands them over).

Shapes: x (..., C), w (C,), b (C,), eps a Python float.
Dtype rule: float32 in, float32 out for all three outputs.
Watch out: compute the mean first and then the mean of the centred squares; the one-pass E[x^2] - E[x]^2
loses every digit in float32 for rows far from zero mean (the grader has one).
Reference, to read once you are done: layernorm_forward_ref
in the module minidistil.kernels.layernorm; open its file with
    python -c "import minidistil.kernels.layernorm as m; print(m.__file__)"
"""
import numpy as np


def layernorm_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float):
    """x (..., C), w (C,), b (C,) -> y (..., C), mean (N,), rstd (N,)."""
    raise NotImplementedError
