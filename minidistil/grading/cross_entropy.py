"""Exercise cross_entropy: the mean cross-entropy over the rows whose target is not ignore_index, and its
gradient, checked against minidistil.kernels.cross_entropy's reference in float64 and against finite differences.
"""
import numpy as np

from minidistil.grading.engine import NONFINITE_SOFTMAX_HINT, Exercise, Session, f32, f64


_N0_HINT = ("when every row is ignored n = 0: return a loss of 0.0 and a zero gradient instead of dividing "
            "by n")


def _cases(r):
    V = 11
    x = r.standard_normal((6, V)) * 2
    t = r.integers(0, V, 6)
    t_rep = np.array([3, 3, 3, 3, 3, 3])
    t_ign = t.copy()
    t_ign[[1, 4]] = -100
    return [
        ("random (6, 11), every row counts", x, t),
        ("ignore_index: rows 1 and 4 have target -100", x, t_ign),
        ("repeated target ids", x, t_rep),
        ("large logits (|x| ~ 200) with an ignored row", r.standard_normal((4, V)) * 200, np.array([2, -100, 0, 9])),
        ("every row ignored: loss 0.0, gradient 0", x[:3], np.full(3, -100)),
        ("a single row, V=1 (1, 1)", r.standard_normal((1, 1)), np.array([0])),
    ]


def run(s: Session):
    from minidistil.kernels import cross_entropy as K
    r = np.random.default_rng(4)
    for label, x, t in _cases(r):
        x32, = f32(x)
        x64, = f64(x32)
        t = t.astype(np.int64)
        loss64, c64 = K.cross_entropy_forward_ref(x64, t)
        g64 = K.cross_entropy_backward_ref(1.0, c64)
        N = x.shape[0]
        n = c64.n_counted
        tol_l, tol_g = K.tolerances(x32, 1.0, n)          # derived in cross_entropy.tolerances
        keep = t != -100
        lse = c64.lse
        rows = lse - x64[np.arange(N), np.where(keep, t, 0)]
        nonfinite = _N0_HINT if n == 0 else None
        with s.case(label):
            loss = s.call("cross_entropy_loss", x32, t.copy(), -100)
            s.expect_scalar("loss", loss, loss64, tol_l, nonfinite=nonfinite, variants={
                f"the mean is over the COUNTED rows (target != ignore_index): divide by n = {n}, not by all "
                f"N = {N} rows":
                    lambda: rows[keep].sum() / N,
                "rows whose target is ignore_index (-100) must not count: skip them in the sum and the divisor":
                    lambda: rows.mean(),
                "the loss is the MEAN over the counted rows, not the sum": lambda: rows[keep].sum(),
            })
            grad = s.call("cross_entropy_grad", x32, t.copy(), -100)
            p = np.exp(x64 - lse[:, None])
            onehot = np.zeros_like(p)
            onehot[np.arange(N)[keep], t[keep]] = 1
            s.expect_array("dlogits", grad, g64, tol_g, nonfinite=nonfinite, variants={
                "rows with target -100 get a zero gradient": lambda: (p - onehot) / max(n, 1),
                f"divide by the number of counted rows n = {n}, not by all N = {N} rows":
                    lambda: np.where(keep[:, None], p - onehot, 0) / N,
                "the gradient of the MEAN has the factor 1/n (you returned the gradient of the sum)":
                    lambda: np.where(keep[:, None], p - onehot, 0),
                "dlogits = (softmax(x) - onehot(target)) / n: the - 1 at the target column is missing":
                    lambda: np.where(keep[:, None], p, 0) / max(n, 1),
                "the sign is flipped: dlogits = (softmax - onehot) / n": lambda: -g64,
            })
    with s.case("finite differences in float64 (4, 5), one ignored row"):
        rr = np.random.default_rng(10)
        x64 = rr.standard_normal((4, 5))
        t = np.array([1, -100, 4, 1])
        grad = s.call("cross_entropy_grad", x64.copy(), t, -100)
        s.finite_difference("dlogits", grad, lambda: K.cross_entropy_forward_ref(x64, t)[0], x64)


EXERCISE = Exercise("cross_entropy", "cross-entropy with ignore_index: the loss and its gradient",
                    ("cross_entropy_loss", "cross_entropy_grad"), run, nonfinite_hint=NONFINITE_SOFTMAX_HINT,
                    exception_hints=(("-100 is out of bounds", "rows whose target is ignore_index (-100) must be "
                                                               "skipped: x[i, -100] is not a class"),
                                     ("division by zero", "when every row is ignored n = 0: return 0.0 (and a zero "
                                                          "gradient) instead of dividing")))
