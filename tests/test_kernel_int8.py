"""Int8 kernels: the three levels (integer results exact against an int64 reference; the quantised layer within
its derived error bound; awkward shapes and values), for every CPU kernel (VNNI where the CPU has it, and the
portable fallback always) and the CUDA versions, plus bad input.

The bound (kernels/int8.py docstring, `linear_error_bound`): |y - (x W^T + b)| <= s_x (1/2 + 2^-13) sum_k |W^| +
s_w (1/2 + 2^-13) sum_k |x| + 5 u (sum_k |x^| |W^| + |b|), per element; it is a worst case, not a fitted number.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minidistil.kernels import _cuda
from minidistil.kernels import int8 as K

CPU_KERNELS = ["portable"] + (["vnni"] if K.vnni_available() else [])

# (N, Cin, Cout): one row, one input, one output, rows not a multiple of the 6-row tile, Cin not a multiple of 4,
# Cout on both sides of the 64-channel tile, an empty batch, DistilBERT's widths
SHAPES = [(1, 1, 1), (1, 13, 5), (7, 13, 13), (13, 3, 65), (6, 130, 64), (5, 4, 63), (0, 13, 6), (37, 768, 130),
          (12, 3072, 70)]


def _data(rng, n, cin, cout):
    x = rng.standard_normal((n, cin)).astype(np.float32)
    if n > 1:
        x[0] = 0.0                                           # a padded (all-zero) row
    if n > 2:
        x[1] = np.abs(x[1])                                  # a one-sided row: lo = 0
    if n > 3:
        x[2] = -np.abs(x[2]) * 1e3                           # all negative and large: hi = 0
    if n > 4:
        x[3] = 0.25                                          # a constant row
    w = (rng.standard_normal((cout, cin)) * rng.uniform(0.01, 1.0, (cout, 1))).astype(np.float32)
    if cout > 1:
        w[-1] = 0.0                                          # an all-zero output channel
    b = rng.standard_normal(cout).astype(np.float32)
    return x, w, b


def _assert_within_bound(y, x, w, wq, b):
    """|y - (x W^T + b)| <= linear_error_bound, element by element (x W^T + b in float64)."""
    exact = x.astype(np.float64) @ w.astype(np.float64).T + (0 if b is None else b)
    bound = K.linear_error_bound(x, wq.q, wq.scale, b)
    assert y.dtype == np.float32 and y.shape == exact.shape
    excess = np.abs(y - exact) - bound
    if excess.size:
        i = np.unravel_index(int(np.argmax(excess)), excess.shape)
        assert excess[i] <= 0, f"error {abs(y[i] - exact[i]):.3e} at {i} exceeds the bound {bound[i]:.3e}"


def _abs_products(x, wq):
    """sum_k |x^[n, k]| |W^[o, k]| (N, Cout): the scale of the float32 epilogue's rounding."""
    qx, sx, z = K.quantize_rows_ref(x)
    xh = sx.astype(np.float64)[:, None] * (qx.astype(np.float64) - z[:, None])
    return np.abs(xh) @ np.abs(K.dequantize(wq.q, wq.scale).astype(np.float64)).T


# ---- weights ---------------------------------------------------------------------------------------------------

def test_weight_quantisation_is_symmetric_per_channel(rng):
    w = (rng.standard_normal((9, 21)) * np.geomspace(1e-4, 1e3, 9)[:, None]).astype(np.float32)
    w[4] = 0.0
    q, s = K.quantize_weight_ref(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (9,)
    assert np.abs(q).max() <= 127 and (q != -128).all()
    nonzero = np.abs(w).max(axis=1) > 0
    assert (np.abs(q[nonzero]).max(axis=1) == 127).all()          # each row uses its full range
    assert (q[4] == 0).all() and s[4] == 1.0
    err = np.abs(K.dequantize(q, s).astype(np.float64) - w)
    assert (err <= s[:, None] * (0.5 + K.SLACK)).all()
    wq = K.prepare_weight(q, s)
    assert (wq.row_sum == q.astype(np.int64).sum(axis=1)).all()
    assert wq.packed.ctypes.data % 64 == 0


def test_packed_layout(rng):
    q = rng.integers(-127, 128, (70, 10), dtype=np.int8)
    p = K.pack_weight(q).reshape(2, 3, K.NR, 16, 4)              # (channel blocks, k groups, vectors, lanes, bytes)
    for c, g, v, lane, j in [(0, 0, 0, 0, 0), (1, 2, 0, 5, 1), (0, 1, 3, 15, 3), (1, 0, 0, 5, 3)]:
        o, k = 64 * c + 16 * v + lane, 4 * g + j
        assert p[c, g, v, lane, j] == (q[o, k] if o < 70 and k < 10 else 0)


# ---- level 1: integer results exact ----------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("n,cin,cout", SHAPES)
def test_integer_product_exact(rng, kernel, n, cin, cout):
    qx = rng.integers(0, 256, (n, cin), dtype=np.uint8)
    wq = K.prepare_weight(rng.integers(-127, 128, (cout, cin), dtype=np.int8), np.ones(cout, np.float32))
    acc = K.int8_matmul_cpu(qx, wq, kernel)
    assert acc.dtype == np.int32 and acc.shape == (n, cout)
    assert np.array_equal(acc, K.int8_matmul_ref(qx, wq.q))


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_integer_product_at_the_int32_limit(kernel):
    # the largest |acc| the kernel promises: 255 * 127 * MAX_CIN < 2^31 (one output, both signs)
    qx = np.full((2, K.MAX_CIN), 255, np.uint8)
    q = np.stack([np.full(K.MAX_CIN, 127, np.int8), np.full(K.MAX_CIN, -127, np.int8)])
    acc = K.int8_matmul_cpu(qx, K.prepare_weight(q, np.ones(2, np.float32)), kernel)
    want = 255 * 127 * K.MAX_CIN
    assert want < 2**31 and np.array_equal(acc, [[want, -want], [want, -want]])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 20), cin=st.integers(1, 40), cout=st.integers(1, 80), seed=st.integers(0, 2**31 - 1))
def test_integer_product_exact_hypothesis(n, cin, cout, seed):
    r = np.random.default_rng(seed)
    qx = r.integers(0, 256, (n, cin), dtype=np.uint8)
    wq = K.prepare_weight(r.integers(-127, 128, (cout, cin), dtype=np.int8), np.ones(cout, np.float32))
    for kernel in CPU_KERNELS:
        assert np.array_equal(K.int8_matmul_cpu(qx, wq, kernel), K.int8_matmul_ref(qx, wq.q)), kernel


@pytest.mark.parametrize("n,cin", [(1, 1), (3, 7), (13, 130), (2, 3072)])
def test_row_quantisation_matches_reference_exactly(rng, n, cin):
    x = rng.standard_normal((n, cin)).astype(np.float32) * rng.uniform(1e-6, 1e4, (n, 1)).astype(np.float32)
    x[0] = 0.0
    q, s, z = K.quantize_rows_cpu(x)
    qr, sr, zr = K.quantize_rows_ref(x)
    assert q.dtype == np.uint8 and s.dtype == np.float32 and z.dtype == np.int32
    assert np.array_equal(q, qr) and np.array_equal(s, sr) and np.array_equal(z, zr)
    xh = s[:, None].astype(np.float64) * (q.astype(np.float64) - z[:, None])
    assert (np.abs(xh - x) <= s[:, None] * (0.5 + K.SLACK)).all()
    assert (xh[0] == 0).all()                                   # zero is exact (the zero point is an integer)


# ---- level 2: the quantised layer within its derived bound -----------------------------------------------------

@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("n,cin,cout", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_within_bound(rng, kernel, n, cin, cout, bias):
    x, w, b = _data(rng, n, cin, cout)
    b = b if bias else None
    wq = K.quantize_weight(w)
    y = K.int8_linear_forward_cpu(x, wq, b, kernel)
    _assert_within_bound(y, x, w, wq, b)
    # against the float64 quantised computation only the float32 epilogue differs: int32 -> float32, s_x s_w,
    # the product, the bias add: <= 4.01 u |x^ . W^| + u |b| <= 5 u (sum |x^| |W^| + |b|)
    y_q = K.int8_linear_ref(x, wq.q, wq.scale, b)
    assert (np.abs(y - y_q) <= 5 * K.U32 * (_abs_products(x, wq) + (0 if b is None else np.abs(b)))).all()


@pytest.mark.parametrize("bias", [True, False])
def test_linear_keeps_leading_axes_and_kernels_agree(rng, bias):
    # 2 x 13 = 26 rows and 130 outputs: whole 6 x 64 tiles (dequantised in registers by the VNNI kernel) and edge
    # tiles (through memory) in both directions
    x = rng.standard_normal((2, 13, 37)).astype(np.float32)
    wq = K.quantize_weight(rng.standard_normal((130, 37)).astype(np.float32))
    b = rng.standard_normal(130).astype(np.float32) if bias else None
    ys = [K.int8_linear_forward(x, wq, b, k) for k in CPU_KERNELS]
    assert ys[0].shape == (2, 13, 130)
    for y in ys[1:]:
        assert np.array_equal(y, ys[0])                        # the same integers and the same float epilogue


def test_non_finite_rows_give_nan_rows_only(rng):
    x = rng.standard_normal((4, 9)).astype(np.float32)
    x[1, 3] = np.nan
    x[2, 0] = np.inf
    wq = K.quantize_weight(rng.standard_normal((5, 9)).astype(np.float32))
    for kernel in CPU_KERNELS:
        y = K.int8_linear_forward_cpu(x, wq, None, kernel)
        assert np.isnan(y[1]).all() and np.isnan(y[2]).all()
        assert np.isfinite(y[[0, 3]]).all()


@pytest.mark.parametrize("shape", [(3, 4), (1,), (2, 1, 5)])
def test_embedding_within_bound(rng, shape):
    table = (rng.standard_normal((50, 13)) * rng.uniform(0.01, 2, (50, 1))).astype(np.float32)
    table[0] = 0.0                                               # the padding row
    q, s = K.quantize_weight_ref(table)
    ids = rng.integers(0, 50, shape)
    ids.reshape(-1)[0] = 0
    out = K.int8_embedding_forward(ids, q, s)
    assert out.dtype == np.float32 and out.shape == shape + (13,)
    assert np.array_equal(out, K.int8_embedding_ref(ids, q, s))
    assert (np.abs(out - table[ids]) <= K.embedding_error_bound(ids, q, s)).all()


# ---- the CPU kernel choice -------------------------------------------------------------------------------------

def test_kernel_choice_and_fallback(monkeypatch):
    monkeypatch.delenv("MINIDISTIL_INT8_KERNEL", raising=False)
    assert K.cpu_kernel() == ("vnni" if K.vnni_available() else "portable")
    monkeypatch.setenv("MINIDISTIL_INT8_KERNEL", "portable")
    assert K.cpu_kernel() == "portable"
    monkeypatch.setattr(K, "vnni_available", lambda: False)     # a CPU without VNNI
    monkeypatch.delenv("MINIDISTIL_INT8_KERNEL")
    assert K.cpu_kernel() == "portable"
    with pytest.raises(ValueError, match="AVX-512 VNNI"):
        K.cpu_kernel("vnni")
    with pytest.raises(ValueError, match="kernel: expected one of"):
        K.cpu_kernel("avx2")


@pytest.mark.skipif(not K.vnni_available(), reason="this CPU has no AVX-512 VNNI (the portable kernel is tested)")
def test_vnni_kernel_emits_vpdpbusd():
    # the register tile's 24 vpdpbusd (twice: the tile stored as int32, and the tile dequantised in registers)
    lines = [ln for ln in K.vnni_assembly().splitlines() if "vpdpbusd" in ln]
    assert len(lines) >= 2 * K.MR * K.NR and all("zmm" in ln for ln in lines)


# ---- bad input -------------------------------------------------------------------------------------------------

def test_bad_input_names_the_problem(rng):
    wq = K.quantize_weight(rng.standard_normal((4, 6)).astype(np.float32))
    x = rng.standard_normal((2, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="x: expected dtype float32"):
        K.int8_linear_forward(x.astype(np.float64), wq)
    with pytest.raises(ValueError, match="w: expected Cin = 5"):
        K.int8_linear_forward(x[:, :5].copy(), wq)
    with pytest.raises(ValueError, match="w: expected an Int8Weight"):
        K.int8_linear_forward(x, np.zeros((4, 6), np.int8))
    with pytest.raises(ValueError, match=r"b: expected shape \(4\)"):
        K.int8_linear_forward(x, wq, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="q: holds -128"):
        K.prepare_weight(np.full((2, 3), -128, np.int8), np.ones(2, np.float32))
    with pytest.raises(ValueError, match="int32 sums could overflow"):
        K.prepare_weight(np.zeros((1, K.MAX_CIN + 1), np.int8), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="w: non-finite value"):
        K.quantize_weight(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(ValueError, match="ids: id 7 at position"):
        K.int8_embedding_forward(np.array([1, 7]), wq.q, wq.scale)


# ---- CUDA (the simulator without a GPU) ------------------------------------------------------------------------

@pytest.mark.cuda
# (the last shape: a row's quantisation loop and the GEMM's tiles take several passes, whatever THREADS is)
@pytest.mark.parametrize("n,cin,cout", [(1, 1, 1), (5, 13, 11), (9, 21, 17),
                                         (2 * _cuda.TILE + 1, 2 * _cuda.THREADS + 3, _cuda.TILE + 2)])
def test_cuda_matches(rng, n, cin, cout):
    if not _cuda.available():
        pytest.skip("no GPU and NUMBA_ENABLE_CUDASIM is not set")
    x, w, b = _data(rng, n, cin, cout)
    wq = K.quantize_weight(w)
    wd = K.weight_to_device(wq)
    qr, sr, zr = K.quantize_rows_ref(x)
    q, s, z = (_cuda.to_host(a) for a in K.quantize_rows_cuda(_cuda.to_device(x)))
    # a GPU may fuse x * (1/s) + 0.5 into one FMA, so a value on a rounding tie may land one step away
    assert np.array_equal(s, sr) and np.abs(z - zr).max() <= 1 and np.abs(q.astype(int) - qr).max() <= 1
    acc = _cuda.to_host(K.int8_matmul_cuda(_cuda.to_device(qr), wd))
    assert acc.dtype == np.int32 and np.array_equal(acc, K.int8_matmul_ref(qr, wq.q))
    y = _cuda.to_host(K.int8_linear_forward(_cuda.to_device(x), wd, _cuda.to_device(b)))
    _assert_within_bound(y, x, w, wq, b)
    ids = rng.integers(0, cout, (2, 3))
    out = _cuda.to_host(K.int8_embedding_forward(ids, wd.q, wd.scale))
    assert np.array_equal(out, K.int8_embedding_ref(ids, wq.q, wq.scale))
