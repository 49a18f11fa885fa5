"""Exercise: the backward pass of masked multi-head attention.   Grade it:  minidistil grade attention_backward FILE

Layout: q, k, v (B, T, C) with C = H * D; head h owns the columns [h*D, (h+1)*D) (reshape to (B, T, H, D) and
transpose to (B, H, T, D)). mask (B, T): 1 = real token, 0 = padding; it masks KEYS. The forward, per (b, h):

    S = Q K^T / sqrt(D)                             (T, T) scores
    S[:, j] = finfo.min   where mask[b, j] == 0     masked keys filled with a constant
    P = softmax(S) over the last axis               (T, T) probs (given to you: probs (B, H, T, T))
    O = P V                                         (T, D), merged back into out (B, T, C)

Given dout = dL/dout (B, T, C), return (dq, dk, dv), each (B, T, C). Go line by line backwards:
    O = P V            ->  dP and dV (which one needs a transpose?)
    P = softmax(S)     ->  dS, the softmax backward of each row
    the fill           ->  a filled score is a constant: no gradient flows through it (zero dS there)
    S = Q K^T / sqrt(D) -> dQ and dK (keep the 1/sqrt(D))

Shapes: dout, q, k, v (B, T, C); mask (B, T) int; probs (B, H, T, T); n_heads = H (an int).
Dtype rule: float32 in, float32 out (and float64 in, float64 out for the finite-difference check).
Reference, to read once you are done: attention_backward_ref
in the module minidistil.kernels.attention; open its file with
    python -c "import minidistil.kernels.attention as m; print(m.__file__)"
"""
import numpy as np  # noqa: F401 (for your answer)


def attention_backward(dout, q, k, v, mask, probs, n_heads):
    """dout, q, k, v (B, T, C), mask (B, T), probs (B, H, T, T), n_heads H -> dq, dk, dv (B, T, C)."""
    raise NotImplementedError
