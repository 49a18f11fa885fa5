"""Exercise: DistilBERT's distillation loss, a temperature-scaled KL.   Grade it:  minidistil grade distill_kl FILE

Student logits s (N, V), teacher logits z (N, V), temperature T > 0. Soften both distributions with T:

    log p_s = log_softmax(s / T),   log p_t = log_softmax(z / T)           (per row, over the V classes)
    loss    = T^2 * (1 / N) * sum_i sum_v p_t[i, v] * (log p_t[i, v] - log p_s[i, v])

That is KL(teacher || student), averaged over the N rows ("batchmean"), times T^2 (Hinton et al. 2015: it keeps
the gradient's size independent of T). Compute log_softmax as y - logsumexp(y) with the row max subtracted, never
as log(softmax(y)) (log 0 = -inf for large logits).

distill_kl_loss returns the loss as a Python float.
distill_kl_grad returns d loss / d s, shape (N, V); the teacher gets no gradient. Remember the chain rule through
s / T.

Dtype rule: the gradient is float32 for float32 logits (float64 for float64).
Chapter 14 (tutorials/14_training_maths.py, section 2) derives the gradient and why the loss carries T^2.
Reference, to read once you are done: distill_kl_forward_ref / distill_kl_backward_ref
in the module minidistil.kernels.distill_kl; open its file with
    python -c "import minidistil.kernels.distill_kl as m; print(m.__file__)"
"""
import numpy as np


def distill_kl_loss(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """student, teacher (N, V), temperature T -> the loss (a float)."""
    raise NotImplementedError


def distill_kl_grad(student: np.ndarray, teacher: np.ndarray, temperature: float) -> np.ndarray:
    """student, teacher (N, V), temperature T -> d loss / d student (N, V)."""
    raise NotImplementedError
