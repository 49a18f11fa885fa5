"""Exercise gelu_backward: dx = dy * (Phi(x) + x phi(x)), checked against
minidistil.kernels.gelu's reference in float64 and against finite differences.
"""
import numpy as np

from minidistil.kernels import _checks

from minidistil.grading.engine import Exercise, Session, f32, f64


def run(s: Session):
    from minidistil.kernels import gelu as K
    from scipy.special import erf
    r = np.random.default_rng(0)
    cases = [
        ("random (2, 3, 13)", r.standard_normal((2, 3, 13)) * 2),
        ("T=1 (1, 1, 13)", r.standard_normal((1, 1, 13))),
        ("large |x| and zero: x in {-10, -3, 0, 3, 10}", np.array([[-10.0, -3.0, 0.0, 3.0, 10.0]])),
        ("1-d input (7,)", r.standard_normal(7) * 3),
    ]
    for label, x in cases:
        x32, = f32(x)
        dy32, = f32(r.standard_normal(x.shape))
        x64, dy64 = f64(x32, dy32)
        expect = K.gelu_backward_ref(dy64, K.GeluCache(x64))
        # elementwise: erf, exp and ~6 roundings per element, |dx| <= 1.13 |dy|: f32_tol(1) relative and absolute
        atol = _checks.f32_tol(1, scale=float(np.abs(dy64).max()) * 1.2)
        cdf = 0.5 * (1 + erf(x64 / np.sqrt(2)))
        pdf = np.exp(-0.5 * x64 ** 2) / np.sqrt(2 * np.pi)
        with s.case(label):
            before = x32.copy()
            dx = s.call("gelu_backward", dy32, x32)
            s.expect_unchanged("x", before, x32)
            s.expect_array("dx", dx, expect, atol, _checks.f32_tol(1), variants={
                "your dx equals dy * Phi(x): GELU is x * Phi(x), so by the product rule its derivative also has the "
                "term x * phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi)": lambda: dy64 * cdf,
                "your dx is gelu'(x) without the factor dy: the chain rule multiplies by the incoming gradient":
                    lambda: cdf + x64 * pdf,
                "your dx is dy * gelu(x), the forward: the backward multiplies dy by the DERIVATIVE gelu'(x)":
                    lambda: dy64 * x64 * cdf,
                "your Phi(x) is missing the 0.5: Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))":
                    lambda: dy64 * (2 * cdf + x64 * pdf),
                "your GELU is missing its 0.5: gelu(x) = 0.5 * x * (1 + erf(x / sqrt(2))), so its derivative is "
                "Phi(x) + x phi(x) with Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))": lambda: 2 * dy64 * (cdf + x64 * pdf),
                "your phi(x) is missing 1/sqrt(2 pi) (the normal density is exp(-x^2/2) / sqrt(2 pi))":
                    lambda: dy64 * (cdf + x64 * np.exp(-0.5 * x64 ** 2)),
                "your phi uses exp(-x^2) instead of exp(-x^2 / 2)":
                    lambda: dy64 * (cdf + x64 * np.exp(-x64 ** 2) / np.sqrt(2 * np.pi)),
                "you differentiated the tanh approximation of GELU; BERT uses the exact erf form":
                    lambda: dy64 * _gelu_tanh_grad(x64),
            })
    x64 = np.random.default_rng(1).standard_normal((2, 5))
    dy64 = np.random.default_rng(2).standard_normal((2, 5))
    with s.case("finite differences in float64 (2, 5)"):
        dx = s.call("gelu_backward", dy64, x64.copy())
        s.finite_difference("dx", dx, lambda: float((K.gelu_forward_ref(x64)[0] * dy64).sum()), x64)


def _gelu_tanh_grad(x):
    a = np.sqrt(2 / np.pi)
    u = a * (x + 0.044715 * x ** 3)
    t = np.tanh(u)
    return 0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * a * (1 + 3 * 0.044715 * x ** 2)


EXERCISE = Exercise("gelu_backward", "GELU backward: dx = dy * (Phi(x) + x phi(x))", ("gelu_backward",), run,
                    exception_hints=(("module 'numpy' has no attribute 'erf'",
                                      "NumPy has no erf: from scipy.special import erf"),))
