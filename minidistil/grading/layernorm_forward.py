"""Exercise layernorm_forward: y = (x - mean) / sqrt(var + eps) * w + b with its mean and rstd, checked against
minidistil.kernels.layernorm's reference in float64 on the awkward rows (T=1, C=13, zeros, mean 1000).
"""
import numpy as np

from minidistil.kernels import _checks

from minidistil.grading.engine import Exercise, Session, f32, f64


def inputs(r):
    """(label, x, w, b, eps) with the awkward cases: T=1, C=13, a padding row of zeros, a row far from mean 0."""
    C = 13
    far = r.standard_normal((1, 2, C)) + 1000.0
    pad = r.standard_normal((2, 3, C)) * 2
    pad[1, 2] = 0.0
    return [
        ("random (2, 3, 13)", r.standard_normal((2, 3, C)) * 2 + 0.5, 1e-12),
        ("T=1 (1, 1, 13)", r.standard_normal((1, 1, C)), 1e-12),
        ("a padding row of zeros, eps=1e-5", pad, 1e-5),
        ("rows with mean 1000 and std 1", far, 1e-12),
        ("C=64 (4, 64), eps=0.1", r.standard_normal((4, 64)) * 0.3, 0.1),
    ]


def run(s: Session):
    from minidistil.kernels import layernorm as K
    r = np.random.default_rng(0)
    for label, x, eps in inputs(r):
        C = x.shape[-1]
        x32, w32, b32 = f32(x, 1 + 0.5 * r.standard_normal(C), 0.5 * r.standard_normal(C))
        x64, w64, b64 = f64(x32, w32, b32)
        y64, c64 = K.layernorm_forward_ref(x64, w64, b64, eps)
        tol_y, _, _, _ = K.tolerances(x64, w64, b64, np.ones_like(x64), eps)  # derived in layernorm.tolerances
        x2 = x64.reshape(-1, C)
        mu = x2.mean(axis=1, keepdims=True)

        def y_with(var, rstd_of=lambda v: 1 / np.sqrt(v + eps), x2=x2, mu=mu, w64=w64, b64=b64, shape=x.shape):
            return (((x2 - mu) * rstd_of(var)) * w64 + b64).reshape(shape)

        var = ((x2 - mu) ** 2).mean(axis=1, keepdims=True)
        with s.case(label):
            got = s.unpack(s.call("layernorm_forward", x32, w32, b32, eps), ("y", "mean", "rstd"))
            s.expect_array("y", got[0], y64, tol_y, variants={
                "you used the unbiased variance (divide by C - 1, or ddof=1); layer norm divides by C":
                    lambda: y_with(((x2 - mu) ** 2).sum(axis=1, keepdims=True) / (C - 1)),
                "eps belongs inside the square root: rstd = 1 / sqrt(var + eps)":
                    lambda: y_with(var, lambda v: 1 / (np.sqrt(v) + eps)),
                "you multiplied by the standard deviation: rstd is 1 / sqrt(var + eps), not sqrt(var + eps)":
                    lambda: y_with(var, lambda v: np.sqrt(v + eps)),
                "you divided by the variance, not its square root": lambda: y_with(var, lambda v: 1 / (v + eps)),
                "w and b are swapped: y = xhat * w + b":
                    lambda: ((x2 - mu) / np.sqrt(var + eps) * b64 + w64).reshape(x.shape),
            }, otherwise=("the rows far from zero mean lose precision with the one-pass variance E[x^2] - E[x]^2 "
                          "(catastrophic cancellation in float32): compute the mean first, then mean((x - mean)^2)"
                          if "1000" in label else None))
            N = x2.shape[0]
            s.expect_array("mean", got[1], c64.mean, _checks.f32_tol(C, scale=float(np.abs(x64).max())),
                           otherwise=f"mean and rstd have one value per row: shape ({N},) = x.reshape(-1, C) rows")
            s.expect_array("rstd", got[2], c64.rstd, 0.0, _checks.f32_tol(C, scale=2 + float(
                (np.abs(c64.mean) * c64.rstd).max())), variants={
                "rstd is 1 / sqrt(var + eps), not sqrt(var + eps)": lambda: np.sqrt(var[:, 0] + eps),
            })


EXERCISE = Exercise("layernorm_forward", "layer norm forward, returning (y, mean, rstd)", ("layernorm_forward",), run,
                    nonfinite_hint="a row of zeros has var = 0: eps inside the sqrt keeps 1 / sqrt(var + eps) finite")
