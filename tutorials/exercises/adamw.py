"""Exercise: one step of AdamW, in place.   Grade it:  minidistil grade adamw FILE

PyTorch's torch.optim.AdamW, for one parameter array (elementwise; step t = 1 for the first update):

    param = param * (1 - lr * weight_decay)              decoupled weight decay (NOT added to the gradient)
    m     = beta1 * m + (1 - beta1) * grad               first moment
    v     = beta2 * v + (1 - beta2) * grad^2             second moment
    m_hat = m / (1 - beta1^t);   v_hat = v / (1 - beta2^t)       bias corrections (m and v themselves keep the raw
                                                                  moments: the corrected ones are temporaries)
    param = param - lr * m_hat / (sqrt(v_hat) + eps)

Update param, m and v IN PLACE (param -= ..., m[...] = ...); `param = ...` only rebinds a local name and the
caller never sees it. Do not modify grad. Return nothing.

Shapes: param, grad, m, v all the same shape. Dtype rule: they stay float32 (in-place updates keep the dtype).
Chapter 14 (tutorials/14_training_maths.py, section 3) derives the update and why the decay is decoupled.
Reference, to read once you are done: adamw_step_ref in the module minidistil.kernels.adamw; open its file with
    python -c "import minidistil.kernels.adamw as m; print(m.__file__)"
"""
import numpy as np  # noqa: F401 (for your answer)


def adamw_step(param, grad, m, v, *, lr, beta1, beta2, eps, weight_decay, step):
    """Update param, m, v (same shape, float32) in place."""
    raise NotImplementedError
