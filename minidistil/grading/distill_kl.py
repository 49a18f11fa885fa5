"""Exercise distill_kl: the temperature-scaled KL(teacher || student) * T^2 averaged over rows, and its
gradient, checked against minidistil.kernels.distill_kl's reference in float64 and against finite differences.
"""
import numpy as np

from minidistil.grading.engine import NONFINITE_SOFTMAX_HINT, Exercise, Session, f32, f64


def run(s: Session):
    from minidistil.kernels import distill_kl as K
    r = np.random.default_rng(5)
    cases = [
        ("random (4, 9), T=2", r.standard_normal((4, 9)) * 2, r.standard_normal((4, 9)) * 2, 2.0),
        ("T=1", r.standard_normal((3, 9)), r.standard_normal((3, 9)), 1.0),
        ("T=0.5, a single row of width 13", r.standard_normal((1, 13)), r.standard_normal((1, 13)), 0.5),
        ("large logits (|x| ~ 100), T=1", r.standard_normal((3, 9)) * 100, r.standard_normal((3, 9)) * 100, 1.0),
        ("student equals teacher: loss 0", *(2 * [r.standard_normal((2, 9))]), 3.0),
    ]
    for label, st, te, T in cases:
        s32, t32 = f32(st, te)
        s64, t64 = f64(s32, t32)
        loss64, c64 = K.distill_kl_forward_ref(s64, t64, T)
        g64 = K.distill_kl_backward_ref(1.0, c64)
        N, V = st.shape
        tol_l, tol_g = K.tolerances(s32, t32, T, 1.0, N)        # derived in distill_kl.tolerances
        lps, _ = K._log_softmax_ref(s64 / T)
        lpt, _ = K._log_softmax_ref(t64 / T)
        ps, pt = np.exp(lps), np.exp(lpt)
        kl = (pt * (lpt - lps)).sum()                           # summed over rows, no T factor
        with s.case(label):
            loss = s.call("distill_kl_loss", s32, t32, T)
            s.expect_scalar("loss", loss, loss64, tol_l, variants={
                "the loss is multiplied by T^2 (Hinton et al.): it keeps the gradient's size independent of T":
                    lambda: kl / N,
                "multiply by T^2, not T: the softened gradients shrink like 1/T^2": lambda: T * kl / N,
                "KL(teacher || student) = sum p_t (log p_t - log p_s): you computed KL(student || teacher)":
                    lambda: T * T * (ps * (lps - lpt)).sum() / N,
                "the mean is over ROWS (batchmean): divide by N, not by N * V": lambda: T * T * kl / (N * V),
                "the loss is the mean over rows, not the sum": lambda: T * T * kl,
                "divide the logits by T before the softmax (both student and teacher)":
                    lambda: _kl_rows(s64, t64).sum() / N * T * T,
            })
            grad = s.call("distill_kl_grad", s32, t32, T)
            s.expect_array("dstudent", grad, g64, tol_g, variants={
                "with the T^2 of the loss and the 1/T of s / T the gradient is T * (p_s - p_t) / N: yours has no "
                "factor T": lambda: (ps - pt) / N,
                "chain rule through s / T: the gradient is T^2 * (1/T) * (p_s - p_t) / N = T (p_s - p_t) / N; "
                "yours has T^2": lambda: T * T * (ps - pt) / N,
                "your gradient is (p_s - p_t) / (N T), the gradient of the loss WITHOUT its T^2 factor":
                    lambda: (ps - pt) / (N * T),
                "the gradient of the mean has the factor 1/N": lambda: T * (ps - pt),
                "the sign is flipped: d loss / d s = T (p_s - p_t) / N": lambda: -g64,
            })
    with s.case("finite differences in float64 (3, 5), T=2"):
        rr = np.random.default_rng(11)
        s64, t64 = rr.standard_normal((3, 5)), rr.standard_normal((3, 5))
        grad = s.call("distill_kl_grad", s64.copy(), t64.copy(), 2.0)
        s.finite_difference("dstudent", grad, lambda: K.distill_kl_forward_ref(s64, t64, 2.0)[0], s64)


def _kl_rows(s, t):
    m_s, m_t = s.max(-1, keepdims=True), t.max(-1, keepdims=True)
    lps = s - m_s - np.log(np.exp(s - m_s).sum(-1, keepdims=True))
    lpt = t - m_t - np.log(np.exp(t - m_t).sum(-1, keepdims=True))
    return (np.exp(lpt) * (lpt - lps)).sum(-1)


EXERCISE = Exercise("distill_kl", "temperature-scaled KL distillation loss and its gradient",
                    ("distill_kl_loss", "distill_kl_grad"), run, nonfinite_hint=NONFINITE_SOFTMAX_HINT
                    + " (log p = y - logsumexp(y), never log(softmax(y)), which gives log(0) = -inf)")
