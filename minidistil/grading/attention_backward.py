"""Exercise attention_backward: (dq, dk, dv) of masked multi-head attention, checked against
minidistil.kernels.attention's reference in float64 and against finite differences.
"""
import numpy as np

from minidistil.grading.engine import Exercise, Session, f32, f64


def run(s: Session):
    from minidistil.kernels import attention as K
    r = np.random.default_rng(3)
    cases = [  # (label, B, T, C, H, mask)
        ("random B=2 T=5 C=12 H=3, one padded sequence", 2, 5, 12, 3, np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])),
        ("T=1 (B=2, C=8, H=2)", 2, 1, 8, 2, np.ones((2, 1), np.int64)),
        ("C=13 H=1, a fully padded sequence", 2, 4, 13, 1, np.array([[1, 1, 0, 1], [0, 0, 0, 0]])),
        ("D=16 (B=1 T=6 C=32 H=2)", 1, 6, 32, 2, np.ones((1, 6), np.int64)),
    ]
    for label, B, T, C, H, mask in cases:
        q32, k32, v32, do32 = f32(*(r.standard_normal((B, T, C)) for _ in range(4)))
        _, c32 = K.attention_forward_ref(q32, k32, v32, mask, H)     # the student gets float32 probs
        q64, k64, v64, do64 = f64(q32, k32, v32, do32)
        _, c64 = K.attention_forward_ref(q64, k64, v64, mask, H)
        dq64, dk64, dv64 = K.attention_backward_ref(do64, c64)
        sp = K._split_heads
        P = c64.probs
        Q, Kh, V, dO = (sp(a, H) for a in (q64, k64, v64, do64))
        dP64 = dO @ V.transpose(0, 1, 3, 2)
        _, _, tol_dq, tol_dk, tol_dv = K.tolerances(q64, k64, v64, do64, P, dP64)  # attention.tolerances
        D = C // H
        pad = (mask == 0)[:, None, None, :]
        mg = K._merge_heads

        def grads(dP=None, sum_term=True, scale=None, zero_pad=True, dk_T=True, dv_T=True):
            scale = 1 / np.sqrt(D) if scale is None else scale
            dP = dO @ V.transpose(0, 1, 3, 2) if dP is None else dP
            dS = P * (dP - (dP * P).sum(-1, keepdims=True)) if sum_term else P * dP
            if zero_pad:
                dS = np.where(pad, 0.0, dS)
            dq = dS @ Kh * scale
            dk = (dS.transpose(0, 1, 3, 2) if dk_T else dS) @ Q * scale
            dv = (P.transpose(0, 1, 3, 2) if dv_T else P) @ dO
            return mg(dq), mg(dk), mg(dv)

        common = {
            "your dS is P * dP: the softmax backward needs the row-sum term, dS = P * (dP - rowsum(dP * P))":
                lambda i: grads(sum_term=False)[i],
            "the 1/sqrt(D) of S = Q K^T / sqrt(D) is missing from dq and dk": lambda i: grads(scale=1.0)[i],
            "you multiplied by sqrt(D) where the forward divides: dq and dk carry 1/sqrt(D)":
                lambda i: grads(scale=np.sqrt(D))[i],
            "masked keys pass no gradient: set dS[..., j] = 0 where mask[b, j] == 0 (their scores were filled "
            "with a constant)": lambda i: grads(zero_pad=False)[i],
        }
        with s.case(label):
            got = s.unpack(s.call("attention_backward", do32, q32, k32, v32, mask.copy(), c32.probs.copy(), H),
                           ("dq", "dk", "dv"))
            s.expect_array("dq", got[0], dq64, tol_dq, variants={h: _bind(f, 0)
                                                                 for h, f in common.items()})
            s.expect_array("dk", got[1], dk64, tol_dk, variants={
                **{h: _bind(f, 1) for h, f in common.items()},
                "dk needs the TRANSPOSE of dS: S = Q K^T, so dK = dS^T Q / sqrt(D)":
                    lambda: grads(dk_T=False)[1]})
            s.expect_array("dv", got[2], dv64, tol_dv, variants={
                "dv needs the TRANSPOSE of P: O = P V, so dV = P^T dO": lambda: grads(dv_T=False)[2]})
    with s.case("finite differences in float64 (B=1, T=3, C=4, H=2, last key padded)"):
        rr = np.random.default_rng(9)
        q, k, v, do = (rr.standard_normal((1, 3, 4)) for _ in range(4))
        mask = np.array([[1, 1, 0]])
        _, c = K.attention_forward_ref(q, k, v, mask, 2)
        got = s.unpack(s.call("attention_backward", do, q.copy(), k.copy(), v.copy(), mask, c.probs.copy(), 2),
                       ("dq", "dk", "dv"))
        loss = lambda: float((K.attention_forward_ref(q, k, v, mask, 2)[0] * do).sum())  # noqa: E731
        for name, g, a in zip(("dq", "dk", "dv"), got, (q, k, v), strict=True):
            s.finite_difference(name, g, loss, a)


def _bind(f, i):
    return lambda: f(i)


EXERCISE = Exercise("attention_backward", "masked multi-head attention backward: (dq, dk, dv)", ("attention_backward",),
                    run, nonfinite_hint="a fully padded sequence has uniform probabilities: keep every value finite "
                    "(no -inf, no division by a zero sum)")
