"""Exercise layernorm_backward: (dx, dw, db) of layer norm, checked against minidistil.kernels.layernorm's
reference in float64 (on layernorm_forward's inputs) and against finite differences.
"""
import numpy as np

from minidistil.kernels import _checks

from minidistil.grading.engine import Exercise, Session, f32, f64
from minidistil.grading.layernorm_forward import inputs as layernorm_inputs


def run(s: Session):
    from minidistil.kernels import layernorm as K
    r = np.random.default_rng(1)
    for label, x, eps in layernorm_inputs(r):
        C = x.shape[-1]
        x32, w32, b32, dy32 = f32(x, 1 + 0.5 * r.standard_normal(C), 0.5 * r.standard_normal(C),
                                   r.standard_normal(x.shape))
        _, c32 = K.layernorm_forward_ref(x32, w32, b32, eps)       # the student gets float32 mean and rstd
        x64, w64, b64, dy64 = f64(x32, w32, b32, dy32)
        # the truth: the backward of the forward the student was given, in float64 (mean and rstd exactly as
        # given), so the float32 rounding of mean and rstd (large on rows with mean 1000) is not in the comparison
        c64 = K.LayerNormCache(x64, w64, *f64(c32.mean, c32.rstd))
        dx64, dw64, db64 = K.layernorm_backward_ref(dy64, c64)
        x2, dy2 = x64.reshape(-1, C), dy64.reshape(-1, C)
        rstd = c64.rstd[:, None]
        xhat = (x2 - c64.mean[:, None]) * rstd
        dxhat = dy2 * w64
        # tolerances, per row for dx: xhat = (x - mean) * rstd rounds a few times; the bracket holds terms up to
        # |dxhat| (2 + |xhat|^2) and two means of C terms; times rstd: f32_tol(C) of rstd |dxhat| (2 + |xhat|)^2
        # for each row (one tolerance for all rows would let a padding row's rstd = 1/sqrt(eps) excuse the others)
        tol_dx = np.broadcast_to(_checks.f32_tol(C, scale=1.0) * rstd * np.abs(dxhat).max(1, keepdims=True)
                                 * (2 + np.abs(xhat).max(1, keepdims=True)) ** 2, x2.shape).reshape(x.shape)
        # dw: sums over N rows of dy * xhat, each term with the rounding above; db: plain sums of N values of dy
        tol_dw = _checks.f32_tol(x2.size, scale=float(np.abs(dy2).max() * (1 + np.abs(xhat).max())))
        tol_db = _checks.f32_tol(x2.shape[0], scale=float(np.abs(dy2).max()))

        def dx_with(dxh, mean_term=True, proj_term=True, scale=rstd, shape=x.shape, xhat=xhat):
            out = dxh.copy()
            if mean_term:
                out -= dxh.mean(axis=1, keepdims=True)
            if proj_term:
                out -= xhat * (dxh * xhat).mean(axis=1, keepdims=True)
            return (scale * out).reshape(shape)

        with s.case(label):
            before = [a.copy() for a in (x32, w32, c32.mean, c32.rstd)]
            got = s.unpack(s.call("layernorm_backward", dy32, x32, w32, c32.mean, c32.rstd), ("dx", "dw", "db"))
            for name, b, a in zip(("x", "w", "mean", "rstd"), before, (x32, w32, c32.mean, c32.rstd), strict=True):
                s.expect_unchanged(name, b, a)
            s.expect_array("dx", got[0], dx64, tol_dx, variants={
                "your dx is missing the term - xhat * mean(dxhat * xhat): rstd depends on x too (the variance "
                "term of the derivative)": lambda: dx_with(dxhat, proj_term=False),
                "your dx is missing the term - mean(dxhat): the mean depends on x too":
                    lambda: dx_with(dxhat, mean_term=False),
                "your dx treats mean and rstd as constants (dx = dxhat * rstd): both depend on x, which adds "
                "- mean(dxhat) and - xhat * mean(dxhat * xhat)": lambda: dx_with(dxhat, False, False),
                "you used dy where dxhat = dy * w belongs (the scale w sits between xhat and y)":
                    lambda: dx_with(dy2),
                "the bracket is multiplied by rstd once: dx = rstd * (dxhat - mean(dxhat) - xhat * "
                "mean(dxhat * xhat))": lambda: dx_with(dxhat, scale=rstd ** 2),
                "you summed over C where the formula has a MEAN (divide by C)":
                    lambda: (rstd * (dxhat - dxhat.sum(1, keepdims=True)
                                     - xhat * (dxhat * xhat).sum(1, keepdims=True))).reshape(x.shape),
            })
            s.expect_array("dw", got[1], dw64, tol_dw, variants={
                "dw = sum over rows of dy * xhat (not dy * x: the scale multiplies the NORMALISED input)":
                    lambda: (dy2 * x2).sum(axis=0),
                "dw is missing xhat: y = xhat * w + b, so dy/dw = xhat": lambda: dy2.sum(axis=0),
                "dw and db are sums over the rows (axis 0), not means": lambda: (dy2 * xhat).mean(axis=0),
            })
            s.expect_array("db", got[2], db64, tol_db, variants={
                "db = the sum of dy over the rows (axis 0), not the mean": lambda: dy2.mean(axis=0),
            })
    with s.case("finite differences in float64 (2, 3, 5), dx and dw"):
        rr = np.random.default_rng(5)
        x64, dy64 = rr.standard_normal((2, 3, 5)), rr.standard_normal((2, 3, 5))
        w64, b64 = 1 + 0.3 * np.arange(5.0), 0.1 * np.arange(5.0)
        _, c = K.layernorm_forward_ref(x64, w64, b64, 1e-5)
        got = s.unpack(s.call("layernorm_backward", dy64, x64.copy(), w64.copy(), c.mean.copy(), c.rstd.copy()),
                       ("dx", "dw", "db"))
        loss = lambda: float((K.layernorm_forward_ref(x64, w64, b64, 1e-5)[0] * dy64).sum())  # noqa: E731
        s.finite_difference("dx", got[0], loss, x64)
        s.finite_difference("dw", got[1], loss, w64)


EXERCISE = Exercise("layernorm_backward", "layer norm backward: (dx, dw, db)", ("layernorm_backward",), run)
