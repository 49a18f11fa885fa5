"""Exercise: cross-entropy with ignore_index, the loss and its gradient.  Grade it: minidistil grade cross_entropy FILE

For logits x (N, V) and integer targets t (N,), rows whose target equals ignore_index (-100: the positions a masked
language model does not predict) do not count:

    lse_i  = m_i + log(sum_v exp(x[i, v] - m_i)),   m_i = max_v x[i, v]      (subtract the max: no overflow)
    loss_i = lse_i - x[i, t_i]                                               (= -log softmax(x_i)[t_i])
    loss   = (1 / n) * sum over counted rows of loss_i,    n = number of rows with t_i != ignore_index
    loss   = 0.0 when no row counts (n = 0)

cross_entropy_loss returns the loss as a Python float.
cross_entropy_grad returns d loss / d x, shape (N, V): derive it from loss_i (the softmax appears again); ignored
rows get zeros; do not forget the 1/n of the mean; all zeros when n = 0.

Shapes: x (N, V), t (N,) int64. Dtype rule: the gradient is float32 for float32 logits (float64 for float64).
Careful: x[i, -100] is a valid NumPy index when V >= 100 (it counts from the end): skip ignored rows explicitly.
Chapter 14 (tutorials/14_training_maths.py, section 1) derives the gradient p - onehot(t).
Reference, to read once you are done: cross_entropy_forward_ref / cross_entropy_backward_ref
in the module minidistil.kernels.cross_entropy; open its file with
    python -c "import minidistil.kernels.cross_entropy as m; print(m.__file__)"
"""
import numpy as np


def cross_entropy_loss(logits: np.ndarray, targets: np.ndarray, ignore_index: int = -100) -> float:
    """logits (N, V), targets (N,) -> the mean loss over the counted rows (a float)."""
    raise NotImplementedError


def cross_entropy_grad(logits: np.ndarray, targets: np.ndarray, ignore_index: int = -100) -> np.ndarray:
    """logits (N, V), targets (N,) -> d loss / d logits (N, V)."""
    raise NotImplementedError
