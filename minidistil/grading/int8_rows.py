"""Exercise int8_rows: asymmetric uint8 quantisation of each row (scale, zero point, codes), checked against
minidistil.kernels.int8's reference and against the rounding bound it derives: |x - s (q - z)| <= s (1/2 + SLACK).
"""
import numpy as np

from minidistil.kernels import _checks

from minidistil.grading.engine import CaseOver, Exercise, Session, _add_closest, f32

ZERO_ROW_HINT = ("an all-zero row has hi = lo = 0, so s = 0 and x / s divides by zero: give such a row any "
                 "positive scale (the reference uses the smallest float32) and q = z")


def _variant(x, *, symmetric=False, zero_in_range=True, floor=False, no_zero_point=False):
    """A float64 quantiser with one deliberate difference (for the hints): (q, s, z)."""
    with np.errstate(all="ignore"):
        return _variant64(x.astype(np.float64), symmetric, zero_in_range, floor, no_zero_point)


def _variant64(x, symmetric, zero_in_range, floor, no_zero_point):
    lo, hi = x.min(axis=1), x.max(axis=1)
    if zero_in_range:
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    if symmetric:
        s = np.maximum(np.abs(lo), np.abs(hi)) / 127.0
        z = np.zeros(len(x))
    else:
        s = (hi - lo) / 255.0
        z = np.clip(np.floor(-lo / s + 0.5), 0, 255)
    if no_zero_point:
        z = np.zeros(len(x))
    r = np.floor(x / s[:, None]) if floor else np.floor(x / s[:, None] + 0.5)
    q = np.clip(r + z[:, None], 0, 255)
    return q, s, z


def run(s: Session):
    from minidistil.kernels import int8 as K
    r = np.random.default_rng(11)
    gelu_like = np.abs(r.standard_normal((3, 20))) * 2 - 0.17     # GELU's outputs: a short negative tail
    cases = [
        ("random rows (4, 13), both signs", r.standard_normal((4, 13)) * 3),
        ("GELU-like rows (3, 20): [-0.17, max]", gelu_like),
        ("all-positive rows (2, 9): the range must still hold 0", np.abs(r.standard_normal((2, 9))) + 1.0),
        ("all-negative row (1, 7)", -np.abs(r.standard_normal((1, 7))) - 0.5),
        ("a row with exact zeros (1, 6): 0.0 must come back exactly",
         np.array([[0.0, 1.5, -0.25, 0.0, 3.0, -2.0]])),
        ("a single column (5, 1)", r.standard_normal((5, 1))),
    ]
    for label, x in cases:
        x32, = f32(x)
        q_ref, s_ref, z_ref = K.quantize_rows_ref(x32)
        with s.case(label):
            before = x32.copy()
            got = s.unpack(s.call("quantize_rows", x32), ("q", "scale", "zero_point"))
            s.expect_unchanged("x", before, x32)
            q, sc, zp = got
            for name, a, dt, shape in (("q", q, np.uint8, x.shape), ("scale", sc, np.float32, (len(x),)),
                                       ("zero_point", zp, np.int32, (len(x),))):
                if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dt:
                    s.check.fail(f"{name}: expected a {np.dtype(dt).name} array of shape {shape}, got "
                                 f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}",
                                 "q is uint8 in [0, 255] (.astype(np.uint8) AFTER clipping), scale float32, "
                                 "zero_point int32, one per row" if name != "q" or getattr(a, "dtype", None) !=
                                 np.int8 else "activations are UNSIGNED (uint8, 0..255) with a zero point: VNNI "
                                 "multiplies uint8 activations by int8 weights", where=name)
                    raise CaseOver
            hints = {
                "this is the SYMMETRIC int8 scale max|x| / 127: the activations use the asymmetric range, "
                "s = (hi - lo) / 255 with lo = min(x, 0), hi = max(x, 0), and a zero point":
                    dict(symmetric=True),
                "the range [lo, hi] must hold 0 (lo = min(min(x), 0), hi = max(max(x), 0)), so that 0.0 is stored "
                "exactly: padding and ReLU zeros stay zeros": dict(zero_in_range=False),
                "round to NEAREST (np.floor(v + 0.5) or np.rint): floor's error reaches a whole step s, twice the "
                "bound s / 2": dict(floor=True),
                "add the zero point: q = round(x / s) + z, so that negative values land on 0..z-1 instead of "
                "being clipped to 0": dict(no_zero_point=True),
            }
            x64 = x32.astype(np.float64)
            sc64 = sc.astype(np.float64)
            ok_scale = np.abs(sc64 - s_ref) <= _checks.f32_tol(1, scale=1.0) * np.abs(s_ref) + 1e-30
            live = x64.max(axis=1) > x64.min(axis=1)                  # rows with a range: the scale is defined
            if not ok_scale[live].all():
                i = int(np.flatnonzero(live & ~ok_scale)[0])
                s.check.fail(f"scale[{i}] = {sc64[i]:.8g}, expected {float(s_ref[i]):.8g} ((hi - lo) / 255 with "
                             "the range holding 0)", where=f"scale[{i}]")
                # the variants whose scale of that row is the student's; the closest over all rows wins
                matched = []
                for hint, kw in hints.items():
                    _, vs, _ = _variant(x32, **kw)
                    if abs(vs[i] - sc64[i]) <= 1e-5 * abs(vs[i]):
                        matched.append((float(np.max(np.abs(vs - sc64)[live] / np.abs(vs[live]), initial=0.0)),
                                        hint))
                _add_closest(s.check, matched, None)
                raise CaseOver
            if not np.isfinite(sc64).all() or (sc64 <= 0).any():
                s.check.fail("scale: every scale must be a positive finite number", ZERO_ROW_HINT, where="scale")
                raise CaseOver
            err = np.abs(x64 - sc64[:, None] * (q.astype(np.float64) - zp.astype(np.float64)[:, None]))
            bound = sc64[:, None] * (0.5 + K.SLACK)
            if (err > bound).any():
                idx = tuple(int(i) for i in np.argwhere(err > bound)[0])
                s.check.fail(f"x{list(idx)} = {x64[idx]:.6g} comes back as s (q - z) = "
                             f"{sc64[idx[0]] * (int(q[idx]) - int(zp[idx[0]])):.6g}: error {err[idx]:.3g} exceeds "
                             f"the bound s (1/2 + 2^-13) = {bound[idx[0], 0]:.3g} ({int((err > bound).sum())} of "
                             f"{err.size} entries)", where=f"q[{', '.join(map(str, idx))}]")
                matched = []
                for hint, kw in hints.items():
                    vq, vs, _ = _variant(x32, **kw)
                    # the variant's scales are the student's (they passed the check above, so a variant with
                    # another scale, such as the symmetric one, is another mistake even where its codes coincide),
                    # its codes are the student's (all but a few ties), and not the reference's
                    same_scale = np.all(np.abs(vs - sc64)[live] <= 1e-5 * np.abs(vs[live]))
                    agree = float(np.mean(vq == q))
                    if same_scale and agree >= 0.95 and not np.array_equal(vq, q_ref):
                        matched.append((1.0 - agree, hint))
                _add_closest(s.check, matched, None)
                raise CaseOver
            # the bound holds; the codes themselves may differ from the reference's by one where x / s + z lies
            # within float32 rounding of a half (a tie rounded the other way), never more
            dq = np.abs(q.astype(np.int64) - q_ref.astype(np.int64))
            dz = np.abs(zp.astype(np.int64) - z_ref.astype(np.int64))
            if dq.max(initial=0) > 1 or dz.max(initial=0) > 1:
                s.check.fail(f"q or zero_point differ from the reference by up to {max(dq.max(), dz.max())} "
                             "codes", where="q")
    with s.case("an all-zero row (1, 8) and a normal row"):
        x32, = f32(np.vstack([np.zeros((1, 8)), r.standard_normal((1, 8))]))
        got = s.unpack(s.call("quantize_rows", x32), ("q", "scale", "zero_point"))
        q, sc, zp = (np.asarray(a) for a in got)
        if not np.all(np.isfinite(np.asarray(sc, dtype=np.float64))) or not (np.asarray(sc) > 0).all():
            s.check.fail(f"scale = {sc}: not a positive finite number for the all-zero row", ZERO_ROW_HINT,
                         where="scale[0]")
        elif not np.array_equal(q[0].astype(np.int64), np.full(8, int(zp[0]))):
            s.check.fail(f"the all-zero row: q = {q[0]}, expected every code equal to the zero point {zp[0]}",
                         ZERO_ROW_HINT, where="q[0]")


EXERCISE = Exercise("int8_rows", "asymmetric uint8 quantisation of each row, within the bound s / 2",
                    ("quantize_rows",), run, exception_hints=(("divide by zero", ZERO_ROW_HINT),))
