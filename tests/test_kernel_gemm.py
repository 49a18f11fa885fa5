"""Our own GEMM (kernels/gemm.py): every CPU micro-kernel (AVX-512 where Numba's target has it, the portable one
always) against the float64 reference within the derived bound, on awkward and hypothesis-drawn shapes; the packed
weight's cache and its invalidation; the linear layer's dispatch; the zmm FMAs in the generated code; bad input.

The bound (kernels/gemm.py docstring, `error_bound`): every output is a K-term float32 dot product, so
|C - A B| <= gamma_K sum_k |A[i, k]| |B[k, j]|, gamma_K = K u / (1 - K u), u = 2^-24 (Higham 3.1), plus u |C| for
the bias add. It is a worst case over summation orders, so it holds for any order the blocking chooses.
"""
import gc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minidistil.kernels import gemm as G
from minidistil.kernels import linear as L

KERNELS = ["portable"] + (["avx512"] if G.avx512_available() else [])

# (M, K, N): one row, one column, M and N below, at and above the 8 x 48 tile, K across several KC = 384 blocks and
# not a multiple of it, an empty product, K = 0 (C = bias), the model's widths
SHAPES = [(1, 1, 1), (1, 768, 768), (7, 13, 13), (13, 3, 49), (8, 48, 48), (9, 385, 47), (16, 769, 96),
          (37, 800, 97), (0, 13, 5), (5, 0, 7), (3, 13, 0), (33, 3072, 130)]


def _data(rng, M, K, N):
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = (rng.standard_normal((K, N)) * rng.uniform(0.01, 1.0, (1, N))).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    return a, b, bias


def _assert_within_bound(c, a, b, bias):
    exact, bound = G.gemm_ref(a, b, bias), G.error_bound(a, b, bias)
    assert c.dtype == np.float32 and c.shape == exact.shape
    excess = np.abs(c - exact) - bound
    if excess.size:
        i = np.unravel_index(int(np.argmax(excess)), excess.shape)
        assert excess[i] <= 0, f"error {abs(c[i] - exact[i]):.3e} at {i} exceeds the bound {bound[i]:.3e}"


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_gemm_within_bound(rng, kernel, shape, with_bias):
    a, b, bias = _data(rng, *shape)
    bias = bias if with_bias else None
    _assert_within_bound(G.gemm_cpu(a, b, bias, kernel=kernel), a, b, bias)


@settings(max_examples=25, deadline=None)
@given(M=st.integers(1, 40), K=st.integers(1, 900), N=st.integers(1, 120), seed=st.integers(0, 2**31 - 1),
       kernel=st.sampled_from(KERNELS))
def test_gemm_within_bound_hypothesis(M, K, N, seed, kernel):
    a, b, bias = _data(np.random.default_rng(seed), M, K, N)
    _assert_within_bound(G.gemm_cpu(a, b, bias, kernel=kernel), a, b, bias)


def test_the_bound_is_tight_enough_to_catch_a_wrong_product(rng):
    # the check can fail: one product left out of one output exceeds the bound
    a, b, bias = _data(rng, 9, 100, 50)
    c = G.gemm_cpu(a, b, bias)
    c[3, 7] -= a[3, 0] * b[0, 7]
    with pytest.raises(AssertionError, match="exceeds the bound"):
        _assert_within_bound(c, a, b, bias)


@pytest.mark.parametrize("kernel", KERNELS)
def test_threads_and_strided_operands(rng, kernel):
    # any thread count gives a result within the bound (threads take chunks of columns or of rows), B may be a
    # transposed view (a weight's W.T), A a sliced view; the output buffer's old contents (NaN) are never read
    a, _, bias = _data(rng, 50, 400, 200)
    w = rng.standard_normal((200, 400)).astype(np.float32)
    bp = G.pack_b(w.T)
    for threads in (1, 2, 3, 7):
        out = np.full((50, 200), np.nan, np.float32)
        G.gemm_packed(a, bp, 200, bias, out=out, kernel=kernel, threads=threads)
        _assert_within_bound(out, a, w.T, bias)
    wide = rng.standard_normal((30, 2 * 400)).astype(np.float32)
    _assert_within_bound(G.gemm_cpu(wide[:, ::2], w.T, kernel=kernel), wide[:, ::2], w.T, None)


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_layout_of_a_gives_the_same_bits(rng, kernel):
    # A read in place row by row (the forward's x), in place as a transpose (the backward's dy^T) or packed (any
    # other layout): the micro-kernel adds the same products in the same order, so C agrees to the last bit; M is
    # not a multiple of MR, so the packed edge panel of an in-place A is used too
    a, _, bias = _data(rng, 3 * G.MR + 5, 2 * G.KC + 7, 2 * G.NR + 3)
    bp = G.pack_b(_data(rng, 1, 2 * G.KC + 7, 2 * G.NR + 3)[1])
    layouts = {G.A_ROWS: a, G.A_TRANSPOSED: np.ascontiguousarray(a.T).T, G.A_PACKED: np.repeat(a, 2, axis=1)[:, ::2]}
    outs = []
    for layout, view in layouts.items():
        assert G._a_operand(view)[1] == layout and np.array_equal(view, a)
        outs.append(G.gemm_packed(view, bp, 2 * G.NR + 3, bias, kernel=kernel, threads=2))
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_non_finite_values_stay_in_their_row_and_column(rng):
    a, b, bias = _data(rng, 20, 50, 60)
    a[4, 7] = np.nan
    b[9, 50] = np.inf
    for kernel in KERNELS:
        c = G.gemm_cpu(a, b, bias, kernel=kernel)
        bad = ~np.isfinite(c)
        assert bad[4].all() and bad[:, 50].all()
        assert not np.delete(np.delete(bad, 4, axis=0), 50, axis=1).any()


def test_pack_layout(rng):
    b = rng.standard_normal((5, G.NR + 3)).astype(np.float32)
    p = G.pack_b(b).reshape(2, 5, G.NR)                 # panel, k, lane
    assert p.ctypes.data % 64 == 0
    assert np.array_equal(p[0], b[:, :G.NR]) and np.array_equal(p[1, :, :3], b[:, G.NR:])
    assert not p[1, :, 3:].any()                          # zeros beyond N


def test_pack_cache_reuses_and_invalidates(rng):
    cache = G.PackCache()
    w = rng.standard_normal((60, 30)).astype(np.float32)
    p1 = cache.get(w, transpose=True)
    assert cache.get(w, transpose=True) is p1             # packed once
    assert np.array_equal(p1, G.pack_b(w.T))
    w[...] = 2.0                                           # written in place ...
    G.weights_changed()                                    # ... and said so: repacked
    p2 = cache.get(w, transpose=True)
    assert p2 is not p1 and np.all(p2.reshape(-1, 30, G.NR)[0, :, :] == 2.0)
    v = w[:, :20]                                          # another array over the same memory: its own entry
    assert cache.get(v, transpose=True) is not p2
    n = len(cache)
    del v, w
    gc.collect()
    assert len(cache) == n - 2                             # entries die with their arrays


def test_linear_forward_uses_it_and_sees_optimizer_steps(monkeypatch, rng):
    from minidistil.core import nn, optim
    from minidistil.core.autograd import Tensor
    monkeypatch.setenv("MINIDISTIL_GEMM", "own")
    lin = nn.Linear(37, 29)
    lin.weight.data[...] = rng.standard_normal((29, 37))
    lin.bias.data[...] = rng.standard_normal(29)
    G.weights_changed()
    x = rng.standard_normal((11, 37)).astype(np.float32)
    opt = optim.AdamW(lin.named_parameters(), lr=0.1)
    for _ in range(3):
        y = lin(Tensor(x))
        exact = x.astype(np.float64) @ lin.weight.data.T.astype(np.float64) + lin.bias.data
        _assert_within_bound(y.data.reshape(11, 29), x, lin.weight.data.T, lin.bias.data)
        assert np.abs(y.data - exact).max() < 1e-4
        y.sum().backward()
        opt.step()                                         # changes the weight in place: the next forward repacks
        opt.zero_grad()


def test_dispatch_rule_and_switch(monkeypatch, rng):
    monkeypatch.setenv("MINIDISTIL_GEMM", "openblas")                 # forces OpenBLAS for all three products
    assert not any(G.use_own_gemm(1024, 768, 3072, p) for p in G.PRODUCTS)
    monkeypatch.setenv("MINIDISTIL_GEMM", "own")                      # forces ours for all three
    assert all(G.use_own_gemm(1, 2, 3, p) for p in G.PRODUCTS)
    monkeypatch.setenv("MINIDISTIL_GEMM", "auto")
    assert G.use_own_gemm(256, 768, 3072) == (G.cpu_kernel() == "avx512")
    assert not G.use_own_gemm(256, 768, 2)                 # a classifier head of 2 outputs: OpenBLAS
    avx = G.cpu_kernel() == "avx512"
    for T, cin, cout in ((256, 768, 3072), (1024, 3072, 768), (256, 384, 384), (159, 768, 30522)):
        for p in G.PRODUCTS:                                # the model's products: all three here
            assert G.use_own_gemm(*G.product_shape(p, T, cin, cout), p) == avx
    assert not G.use_own_gemm(*G.product_shape("dx", 256, 2, 768), "dx")     # a 2-input layer's dx: OpenBLAS
    assert not G.use_own_gemm(*G.product_shape("dw", 4, 768, 768), "dw")     # dW over 4 rows: OpenBLAS
    with pytest.raises(ValueError, match="product"):
        G.use_own_gemm(256, 768, 3072, "backward")
    monkeypatch.setenv("MINIDISTIL_GEMM", "fast")
    with pytest.raises(ValueError, match="MINIDISTIL_GEMM"):
        G.use_own_gemm(256, 768, 3072)
    # both paths of the linear layer agree within the linear layer's derived tolerance
    x = rng.standard_normal((2, 40, 300)).astype(np.float32)
    w = (rng.standard_normal((260, 300)) * 0.02).astype(np.float32)
    b = rng.standard_normal(260).astype(np.float32)
    ys = {}
    for m in ("own", "openblas"):
        monkeypatch.setenv("MINIDISTIL_GEMM", m)
        ys[m], _ = L.linear_forward_cpu(x, w, b)
    ty = L.tolerances(x, w, np.zeros((80, 260), np.float32))[0]
    assert ys["own"].shape == (2, 40, 260) and np.abs(ys["own"] - ys["openblas"]).max() <= 2 * ty


@pytest.mark.skipif(not G.avx512_available(), reason="the CPU has no AVX-512F")
def test_micro_kernel_is_zmm_fma():
    asm = G.avx512_assembly()
    assert "vfmadd231ps" in asm and "zmm" in asm
    fma_lines = [ln for ln in asm.splitlines() if "vfmadd" in ln and "zmm" in ln]
    assert len(fma_lines) >= G.MR * G.NV                   # the whole register tile


def test_bad_input():
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="b: expected 4 rows"):
        G.gemm_cpu(a, np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="a"):
        G.gemm_cpu(a.astype(np.float64), np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="bias"):
        G.gemm_cpu(a, np.zeros((4, 2), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="kernel"):
        G.gemm_cpu(a, np.zeros((4, 2), np.float32), kernel="amx")
    with pytest.raises(ValueError, match="bp: expected"):
        G.gemm_packed(a, np.zeros(7, np.float32), 2)
    with pytest.raises(ValueError, match="a, b: expected"):            # the unchecked entry reads in place: it
        G.gemm(a, np.zeros((5, 2), np.float32))                         # refuses what would read out of bounds
    with pytest.raises(ValueError, match="a, b: expected"):
        G.gemm(a.T.astype(np.float64).T, np.zeros((4, 2), np.float32))


# the backward products of a linear layer y = x W^T: dx = dy W (B = W read in place) and dW = dy^T x (A = dy^T and
# B = x read in place); T, Cin, Cout not multiples of the 8 x 48 tile, so the packed edge panels are used too
BACKWARD_SHAPES = [(1, 13, 5), (7, 50, 97), (37, 49, 8), (9, 385, 47), (16, 96, 769)]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", BACKWARD_SHAPES)
def test_backward_products_within_bound(rng, kernel, shape):
    T, cin, cout = shape
    x = rng.standard_normal((T, cin)).astype(np.float32)
    w = rng.standard_normal((cout, cin)).astype(np.float32)
    dy = rng.standard_normal((T, cout)).astype(np.float32)
    if T > 1:                                          # the layouts the linear layer passes are read in place
        assert G._b_operand(w)[1] and G._b_operand(x)[1] and G._a_operand(dy.T)[1]
    for threads in (1, 3):
        _assert_within_bound(G.gemm(dy, w, kernel=kernel, threads=threads), dy, w, None)            # dx = dy W
        _assert_within_bound(G.gemm(dy.T, x, kernel=kernel, threads=threads), dy.T, x, None)        # dW = dy^T x
    # the other layouts (packed here): dy stored transposed, W a strided view, x Fortran-ordered
    dyf, ws = np.asfortranarray(dy), np.repeat(w, 2, axis=1)[:, ::2]
    _assert_within_bound(G.gemm(dyf, ws, kernel=kernel), dy, w, None)
    _assert_within_bound(G.gemm(dyf.T, np.asfortranarray(x), kernel=kernel), dy.T, x, None)


def test_every_pack_path_gives_the_same_panels(rng):
    a = rng.standard_normal((13, 37)).astype(np.float32)
    pa = G.pack_a(a)
    assert pa.ctypes.data % 64 == 0
    assert np.array_equal(pa.reshape(2, 37, G.MR)[0], a[:G.MR].T) and not pa.reshape(2, 37, G.MR)[1, :, 5:].any()
    for view in (np.asfortranarray(a), np.repeat(a, 2, axis=1)[:, ::2]):
        assert np.array_equal(G.pack_a(view), pa)
    b = rng.standard_normal((37, 2 * G.NR + 5)).astype(np.float32)
    assert np.array_equal(G.pack_b(b), G.pack_b(np.asfortranarray(b)))


def test_linear_backward_uses_it_under_the_switch(monkeypatch, rng):
    # MINIDISTIL_GEMM=own: both backward products (dense, and the row-skipping path for a mostly zero dy) go to
    # gemm.gemm and match the reference within the linear layer's derived tolerances; =openblas: none does
    calls = []
    real = G.gemm
    monkeypatch.setattr(G, "gemm", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    x = rng.standard_normal((3, 20, 50)).astype(np.float32)
    w = rng.standard_normal((97, 50)).astype(np.float32)
    b = rng.standard_normal(97).astype(np.float32)
    dy_dense = rng.standard_normal((3, 20, 97)).astype(np.float32)
    dy_sparse = dy_dense * (np.arange(60) % 5 == 0).reshape(3, 20, 1)     # 12 of 60 rows nonzero
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    for mode, expect in (("own", [(60, 97), (97, 60), (12, 97), (97, 12)]), ("openblas", [])):
        monkeypatch.setenv("MINIDISTIL_GEMM", mode)
        calls.clear()
        for dy in (dy_dense, dy_sparse):
            _, cache = L.linear_forward_cpu(x, w, b)
            dx, dw, db = L.linear_backward_cpu(dy, cache)
            _, c64 = L.linear_forward_ref(f64(x), f64(w), f64(b))
            dx64, dw64, _ = L.linear_backward_ref(f64(dy), c64)
            _, tdx, tdw, _ = L.tolerances(x, w, dy)
            assert dx.dtype == dw.dtype == np.float32 and dx.shape == x.shape and dw.shape == w.shape
            assert np.abs(dx - dx64).max() <= tdx and np.abs(dw - dw64).max() <= tdw
        assert calls == expect


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("T, D", [(1, 1), (7, 13), (50, 64), (33, 96)])
def test_heads_gemm_within_bound_on_attention_views(rng, kernel, T, D):
    # attention's head products as kernels/attention.py passes them: (B, H, T, D) views of a (B, T, 3C) array
    # (row stride 3C), their transposes, and (B, H, T, T) probabilities; T and D not multiples of the 8 x 48 tile,
    # and D = 64 where computing the transpose pads less (heads_gemm turns the product round)
    B, H = 2, 3
    qkv = rng.standard_normal((B, T, 3 * H * D)).astype(np.float32)
    q, k, v = (qkv[..., i * H * D:(i + 1) * H * D].reshape(B, T, H, D).transpose(0, 2, 1, 3) for i in range(3))
    p = rng.uniform(0, 1, (B, H, T, T)).astype(np.float32)
    out_t = np.full((B, T, H * D), np.nan, np.float32)
    o = out_t.reshape(B, T, H, D).transpose(0, 2, 1, 3)
    s = np.full((B, H, T, T), np.nan, np.float32)
    for a, b, out in ((q, k.transpose(0, 1, 3, 2), s), (p, v, o), (p.transpose(0, 1, 3, 2), q, o)):
        G.heads_gemm(a, b, out, kernel=kernel)
        for x in range(B):
            for y in range(H):
                _assert_within_bound(out[x, y], a[x, y], b[x, y], None)


def test_heads_gemm_bad_shapes():
    a = np.zeros((2, 3, 4, 5), np.float32)
    with pytest.raises(ValueError, match="expected"):
        G.heads_gemm(a, np.zeros((2, 3, 6, 7), np.float32), np.zeros((2, 3, 4, 7), np.float32))
    with pytest.raises(ValueError, match="expected"):
        G.heads_gemm(a[0], np.zeros((3, 5, 7), np.float32), np.zeros((3, 4, 7), np.float32))
    with pytest.raises(ValueError, match="expected"):      # the pairs' axes differ only in out
        G.heads_gemm(a, np.zeros((2, 3, 5, 7), np.float32), np.zeros((3, 2, 4, 7), np.float32))
