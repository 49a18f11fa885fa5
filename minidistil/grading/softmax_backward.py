"""Exercise softmax_backward: dx = y * (dy - sum(dy * y)), checked against minidistil.kernels.softmax's
reference in float64 (masked and fully padded rows, one-hot rows) and against finite differences.
"""
import numpy as np

from minidistil.grading.engine import Exercise, Session, f32, f64


def run(s: Session):
    from minidistil.kernels import softmax as K
    r = np.random.default_rng(2)
    fmin = np.finfo(np.float32).min
    masked = r.standard_normal((3, 13)) * 2
    masked[0, 5:] = fmin                                      # a partly masked row: y = 0 exactly there
    masked[1, :] = fmin                                       # a fully padded row: uniform
    cases = [
        ("random (2, 3, 13)", r.standard_normal((2, 3, 13)) * 2),
        ("T=1: rows of length 1 (4, 1)", r.standard_normal((4, 1))),
        ("masked entries and a fully padded row (3, 13)", masked),
        ("large logits (one-hot rows) (2, 13)", r.standard_normal((2, 13)) * 60),
    ]
    for label, x in cases:
        x32, dy32 = f32(x, r.standard_normal(x.shape))
        y32, _ = K.softmax_forward_ref(x32)                       # the student gets the float32 forward's y
        x64, dy64 = f64(x32, dy32)
        y64, c64 = K.softmax_forward_ref(x64)
        expect = K.softmax_backward_ref(dy64, c64)
        _, tol, _, _ = K.tolerances(x64, dy64)                    # derived in softmax.tolerances
        with s.case(label):
            before = y32.copy()
            dx = s.call("softmax_backward", dy32, y32)
            s.expect_unchanged("y", before, y32)
            s.expect_array("dx", dx, expect, tol, variants={
                "your dx is y * dy: the softmax Jacobian is diag(y) - y y^T, so dx = y * (dy - sum(dy * y)) "
                "(the sum over the row is missing)": lambda: y64 * dy64,
                "the row sum must weight dy by y: dx = y * (dy - sum(dy * y))":
                    lambda: y64 * (dy64 - dy64.sum(axis=-1, keepdims=True)),
                "the sum runs over the LAST axis (each row's own entries): sum(dy * y, axis=-1, keepdims=True)":
                    lambda: y64 * (dy64 - (dy64 * y64).sum(axis=0, keepdims=True)),
                "that is the log-softmax backward (dy - y * sum(dy)); softmax's is y * (dy - sum(dy * y))":
                    lambda: dy64 - y64 * dy64.sum(axis=-1, keepdims=True),
                "your dx is the Jacobian's diagonal times dy, y * (1 - y) * dy: the off-diagonal terms - y_i y_j "
                "are missing": lambda: y64 * (1 - y64) * dy64,
            })
    with s.case("finite differences in float64 (3, 6)"):
        rr = np.random.default_rng(7)
        x64, dy64 = rr.standard_normal((3, 6)), rr.standard_normal((3, 6))
        y64, _ = K.softmax_forward_ref(x64)
        dx = s.call("softmax_backward", dy64, y64.copy())
        s.finite_difference("dx", dx, lambda: float((K.softmax_forward_ref(x64)[0] * dy64).sum()), x64)


EXERCISE = Exercise("softmax_backward", "softmax backward: dx = y * (dy - sum(dy * y))", ("softmax_backward",), run)
