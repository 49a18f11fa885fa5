"""Exercise: the backward pass of layer normalisation.   Grade it:  minidistil grade layernorm_backward FILE

The forward, per row of width C (x (..., C) viewed as (N, C) rows):

    mean = sum(x) / C;   var = sum((x - mean)^2) / C;   rstd = 1 / sqrt(var + eps)
    xhat = (x - mean) * rstd
    y    = xhat * w + b

Given dy = dL/dy (same shape as x) and the forward's mean and rstd, return (dx, dw, db).
- dw and db: y = xhat * w + b is applied to every row, so sum the per-row contributions over the N rows.
- dx: mean and rstd depend on x too. Derive it (with dxhat = dy * w) and you will find two row MEANS subtracted
  from dxhat; both matter. Then multiply by rstd.

Shapes: dy, x (..., C); w (C,); mean, rstd (N,), N = x.size // C. Return dx (..., C), dw (C,), db (C,).
Dtype rule: float32 in, float32 out (the grader also sends float64 for a finite-difference check: follow x.dtype).
Do not modify the inputs.
Reference, to read once you are done: layernorm_backward_ref
in the module minidistil.kernels.layernorm; open its file with
    python -c "import minidistil.kernels.layernorm as m; print(m.__file__)"
"""
import numpy as np


def layernorm_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, mean: np.ndarray, rstd: np.ndarray):
    """dy (..., C), x (..., C), w (C,), mean (N,), rstd (N,) -> dx (..., C), dw (C,), db (C,)."""
    raise NotImplementedError
