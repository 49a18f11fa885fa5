"""Exercise: the backward pass of the linear layer.     Grade it:  minidistil grade linear_backward FILE

Every projection of the transformer (q, k, v, the attention output, the two FFN layers) is a linear layer, in
Hugging Face's layout: the weight is (out, in).

    y = x W^T + b          x (..., Cin), W (Cout, Cin), b (Cout,)  ->  y (..., Cout)

Given dy = dL/dy (..., Cout), return (dx, dw, db): dx = dL/dx (..., Cin), dw = dL/dW (Cout, Cin) and db = dL/db
(Cout,). Write y_nj = sum_i x_ni W_ji + b_j for one row n and differentiate; the leading axes (B, T) are just more
rows: flatten them to N = B * T rows (x.reshape(-1, Cin)) for dw and db, which SUM over every row.
Chapter 13 (tutorials/13_transformer_block.py) derives it.

Dtype rule: float32 in, float32 out; the grader also calls it with float64 inputs for a finite-difference check:
follow x's dtype. Do not modify dy, x or w.
Reference, to read once you are done: linear_backward_ref in the module minidistil.kernels.linear; open its file with
    python -c "import minidistil.kernels.linear as m; print(m.__file__)"
"""
import numpy as np  # noqa: F401 (for your answer)


def linear_backward(dy, x, w):
    """dy (..., Cout), x (..., Cin), w (Cout, Cin) -> (dx (..., Cin), dw (Cout, Cin), db (Cout,))."""
    raise NotImplementedError
