"""Exercise gemm_packing: B (K, N) packed into zero-padded NR-wide k-major column panels (kernels/gemm.py's layout,
unflattened), and C = A B computed panel by panel; checked against the layout written out with loops and against
minidistil.kernels.gemm's reference product in float64.
"""
import numpy as np

from minidistil.kernels import _checks

from minidistil.grading.engine import Exercise, Session, f32, f64


def _packed_truth(b, nr):
    K, N = b.shape
    P = -(-N // nr)
    out = np.zeros((P, K, nr))
    for p in range(P):
        for j in range(nr):
            if p * nr + j < N:
                out[p, :, j] = b[:, p * nr + j]
    return out


def run(s: Session):
    from minidistil.kernels import gemm as K
    r = np.random.default_rng(0)
    cases = [  # (label, M, K, N, nr)
        ("N a multiple of nr: (5, 7) x (7, 12), nr 4", 5, 7, 12, 4),
        ("a partial last panel: (3, 9) x (9, 13), nr 4", 3, 9, 13, 4),
        ("one row, one column: (1, 6) x (6, 1), nr 3", 1, 6, 1, 3),
        ("N below nr: (4, 5) x (5, 3), nr 8", 4, 5, 3, 8),
        ("K = 1: (6, 1) x (1, 10), nr 4", 6, 1, 10, 4),
        ("the kernel's panel width: (9, 40) x (40, 100), nr 48", 9, 40, 100, 48),
    ]
    for label, M, Kd, N, nr in cases:
        a32, b32 = f32(r.standard_normal((M, Kd)), r.standard_normal((Kd, N)))
        a64, b64 = f64(a32, b32)
        P = -(-N // nr)
        truth = _packed_truth(b64, nr)
        with s.case("pack_panels, " + label):
            before = b32.copy()
            packed = s.call("pack_panels", b32, nr)
            s.expect_unchanged("b", before, b32)
            if isinstance(packed, np.ndarray) and packed.ndim == 3 and packed.shape[0] == N // nr != P:
                s.check.fail(f"packed: shape {packed.shape}, expected {truth.shape}",
                             f"{N} columns make ceil({N} / {nr}) = {P} panels, not {N} // {nr} = {N // nr}: the "
                             "last, partial panel is kept and padded with zero columns", where="packed")
            else:
                s.expect_array("packed", packed, truth, 0.0, variants={
                    "panel p must hold the CONTIGUOUS columns p*nr ... p*nr + nr - 1 of b (b[:, p*nr:(p+1)*nr]), "
                    "not every P-th column": lambda: _strided(b64, nr),
                    "the last panel's padding must be zeros (np.zeros, not np.empty or a repeated column)":
                        lambda: _edge_padded(b64, nr),
                })
        with s.case("matmul_panels, " + label):
            packed = np.ascontiguousarray(truth, dtype=np.float32)
            before = a32.copy()
            c = s.call("matmul_panels", a32, packed, N)
            s.expect_unchanged("a", before, a32)
            expect = K.gemm_ref(a64, b64)
            # each output: a K-term float32 dot product (f32_tol: 16 eps sqrt(K) max|a| max|b| ... per term)
            atol = _checks.f32_tol(Kd, scale=float(np.abs(a64).max() * np.abs(b64).max()) * np.sqrt(Kd))
            if isinstance(c, np.ndarray) and c.shape == (M, P * nr) and P * nr != N:
                s.check.fail(f"c: shape {c.shape}, expected {expect.shape}",
                             f"crop the padding columns: the panels hold {P * nr} columns, B has {N}: return "
                             "c[:, :n]", where="c")
            else:
                s.expect_array("c", c, expect, atol, variants={
                    "each panel's product belongs at columns p*nr ... p*nr + nr - 1 of c":
                        lambda: _misplaced(a64, truth, N),
                })


def _strided(b, nr):
    K, N = b.shape
    P = -(-N // nr)
    out = np.zeros((P, K, nr))
    for p in range(P):
        cols = b[:, p::P]
        out[p, :, :cols.shape[1]] = cols[:, :nr]
    return out


def _edge_padded(b, nr):
    K, N = b.shape
    P = -(-N // nr)
    wide = np.pad(b, ((0, 0), (0, P * nr - N)), mode="edge")
    return wide.reshape(K, P, nr).transpose(1, 0, 2)


def _misplaced(a, truth, n):
    P, _, nr = truth.shape
    c = np.zeros((a.shape[0], P * nr))
    for p in range(P):
        c[:, p::P][:, :nr] = (a @ truth[p])[:, :c[:, p::P].shape[1]]
    return c[:, :n]


EXERCISE = Exercise("gemm_packing", "GEMM: pack B into NR-wide panels, and C = A B from the panels",
                    ("pack_panels", "matmul_panels"), run)
