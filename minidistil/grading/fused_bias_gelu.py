"""Exercise fused_bias_gelu: y = gelu(x + b) as ONE compiled Numba loop (the bias added in registers, no temporary
x + b), checked against minidistil.kernels.gelu's reference in float64.
"""
import numpy as np

from minidistil.kernels import _checks

from minidistil.grading.engine import CaseOver, Exercise, Session, f32

NJIT_HINT = ("decorate the function with @njit (from numba import njit): the exercise is a compiled loop, one pass "
             "over x that adds b[j] and applies GELU to each element")


def run(s: Session):
    from scipy.special import erf

    from minidistil.kernels import gelu as K
    r = np.random.default_rng(9)
    cases = [
        ("random (4, 13)", r.standard_normal((4, 13)) * 2, r.standard_normal(13)),
        ("one element (1, 1)", r.standard_normal((1, 1)), r.standard_normal(1)),
        ("large |x + b| and zero: (1, 5)", np.array([[-10.0, -3.0, 0.0, 3.0, 10.0]]), np.zeros(5)),
        ("a bias that matters (3, 8): b ~ 3", r.standard_normal((3, 8)), 3 + r.standard_normal(8)),
    ]
    for label, x, b in cases:
        x32, b32 = f32(x, b)
        v = x32.astype(np.float64) + b32.astype(np.float64)
        expect, _ = K.gelu_forward_ref(v)
        # elementwise: an erf, a product and ~4 roundings of a value of size |v|
        atol = _checks.f32_tol(1, scale=float(np.abs(v).max()) + 1.0)

        def gelu64(a):
            return 0.5 * a * (1 + erf(a / np.sqrt(2)))

        with s.case(label):
            before = (x32.copy(), b32.copy())
            y = s.call("bias_gelu", x32, b32)
            s.expect_unchanged("x", before[0], x32)
            s.expect_unchanged("b", before[1], b32)
            if y is None:
                s.check.fail("bias_gelu returned None", "allocate y = np.empty_like(x), fill it, return y",
                             where="return value")
                raise CaseOver
            s.expect_array("y", y, expect, atol, _checks.f32_tol(1), variants={
                "add the bias BEFORE GELU: y = gelu(x + b[j]); yours is gelu(x) + b": lambda: gelu64(x) + b,
                "the bias is missing: v = x[i, j] + b[j], then GELU of v": lambda: gelu64(x.astype(np.float64)),
                "that is the tanh approximation; BERT's GELU is exact: 0.5 v (1 + erf(v / sqrt(2))) (math.erf "
                "works inside @njit)": lambda: K.gelu_tanh_ref(v),
            })

    # after the values, so that a time-out or a crash of the function is the report's first failure
    with s.case("the function is compiled by Numba"):
        fn = getattr(s.module, "bias_gelu", None)       # through the proxy: an attribute of the answer's object
        if fn is not None and not hasattr(fn, "py_func"):
            s.check.fail("bias_gelu is a plain Python function", NJIT_HINT, where="bias_gelu")


EXERCISE = Exercise("fused_bias_gelu", "bias + GELU fused into one Numba loop", ("bias_gelu",), run,
                    exception_hints=(("Untyped global name", "inside @njit use math.erf / math.sqrt (import math); "
                                      "scipy's erf cannot be compiled"),
                                     ("TypingError", "Numba could not compile your loop: read the first lines of "
                                      "the error; keep to loops, math.* functions and NumPy arrays")))
