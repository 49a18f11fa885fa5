"""Exercise linear_backward: (dx, dw, db) of y = x W^T + b, checked against minidistil.kernels.linear's reference in
float64 and against finite differences.
"""
import numpy as np

from minidistil.grading.engine import Exercise, Session, f32, f64


def run(s: Session):
    from minidistil.kernels import linear as K
    r = np.random.default_rng(13)
    cases = [  # (label, x shape, Cout): square layers too, where a transposed weight keeps its shape
        ("random (2, 3, 13) -> 5", (2, 3, 13), 5),
        ("square (2, 4, 8) -> 8", (2, 4, 8), 8),
        ("T=1 (1, 1, 6) -> 6", (1, 1, 6), 6),
        ("2-d input (7, 9) -> 4", (7, 9), 4),
    ]
    for label, xshape, cout in cases:
        cin = xshape[-1]
        x32, w32, dy32 = f32(r.standard_normal(xshape), r.standard_normal((cout, cin)) * 0.5,
                             r.standard_normal(xshape[:-1] + (cout,)))
        x64, w64, dy64 = f64(x32, w32, dy32)
        dx64, dw64, db64 = K.linear_backward_ref(dy64, K.LinearCache(x64, w64, np.zeros(cout)))
        _, tol_dx, tol_dw, tol_db = K.tolerances(x64, w64, dy64)            # linear.tolerances
        dx_v, dw_v, db_v = _variants(x64, w64, dy64)
        with s.case(label):
            before = (dy32.copy(), x32.copy(), w32.copy())
            got = s.unpack(s.call("linear_backward", dy32, x32, w32, raises={**dx_v, **dw_v, **db_v}),
                           ("dx", "dw", "db"))
            for name, b, a in zip(("dy", "x", "w"), before, (dy32, x32, w32), strict=True):
                s.expect_unchanged(name, b, a)
            s.expect_array("dx", got[0], dx64, tol_dx, variants=dx_v)
            s.expect_array("dw", got[1], dw64, tol_dw, variants=dw_v)
            s.expect_array("db", got[2], db64, tol_db, variants=db_v)
    with s.case("finite differences in float64 (2, 3, 4) -> 5"):
        rr = np.random.default_rng(14)
        x, w, b, dy = rr.standard_normal((2, 3, 4)), rr.standard_normal((5, 4)), rr.standard_normal(5), \
            rr.standard_normal((2, 3, 5))
        dx_v, dw_v, db_v = _variants(x, w, dy)
        got = s.unpack(s.call("linear_backward", dy, x.copy(), w.copy(), raises={**dx_v, **dw_v, **db_v}),
                       ("dx", "dw", "db"))
        loss = lambda: float((K.linear_forward_ref(x, w, b)[0] * dy).sum())  # noqa: E731
        for name, g, a in zip(("dx", "dw", "db"), got, (x, w, b), strict=True):
            s.finite_difference(name, g, loss, a)


def _variants(x64, w64, dy64):
    """The known-wrong variants of (dx, dw, db), each as hint -> the wrong answer on these inputs (float64). On a
    layer that is not square, dy W^T does not chain: the student's matmul error is then matched by the variant's
    (Session.call's `raises`)."""
    cin, cout = w64.shape[1], w64.shape[0]
    x2, dy2 = x64.reshape(-1, cin), dy64.reshape(-1, cout)
    T = x64.shape[-2] if x64.ndim > 2 else 1
    dx = {"dx = dy W, not dy W^T: w is (Cout, Cin) and the forward multiplies by W^T, so the backward multiplies by "
          "W itself": lambda: dy64 @ w64.T}
    dw = {"dW = dy^T x (Cout, Cin), not x^T dy: the weight's gradient has the weight's layout (out, in)":
          lambda: x2.T @ dy2,
          "dW must sum over ALL rows N = B*T (flatten the leading axes), not use only the first sequence":
          lambda: dy64.reshape(-1, T, cout)[0].T @ x64.reshape(-1, T, cin)[0],
          "dW is a sum over the rows, not a mean": lambda: dy2.T @ x2 / len(x2)}
    db = {"db is the SUM of dy over all rows, not the mean": lambda: dy2.mean(axis=0)}
    return dx, dw, db


EXERCISE = Exercise("linear_backward", "the linear layer's backward: dx = dy W, dW = dy^T x, db = sum dy",
                    ("linear_backward",), run)
