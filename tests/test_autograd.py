"""The autograd: graph mechanics (a node used twice, accumulation, a 3000-node chain, no_grad), the generic ops
against central finite differences in float64, and every coarse kernel-backed op against finite differences of the
kernel's float64 NumPy reference forward.

Tolerances. Generic ops run in float64: finite differences with h = 1e-6 have truncation error O(h^2) ~ 1e-12 and
rounding error O(eps64 / h) ~ 1e-10, so 1e-7 relative is loose. Kernel ops run in float32 (the kernels accept
nothing else) and are compared with the float64 truth: the error of a float32 gradient that sums R terms of size
<= S is bounded by f32_tol(R, S) = 16 eps32 sqrt(R) S (see kernels/_checks.f32_tol); each test names its R and S.
"""
from __future__ import annotations

import numpy as np
import pytest

from minidistil.core import functional as F
from minidistil.core import losses
from minidistil.core.autograd import Tensor, no_grad
from minidistil.kernels import _checks
from minidistil.kernels import activations as K_act
from minidistil.kernels import attention as K_att
from minidistil.kernels import bce as K_bce
from minidistil.kernels import cosine as K_cos
from minidistil.kernels import cross_entropy as K_ce
from minidistil.kernels import distill_kl as K_kl
from minidistil.kernels import dropout as K_drop
from minidistil.kernels import embedding as K_emb
from minidistil.kernels import gelu as K_gelu
from minidistil.kernels import layernorm as K_ln
from minidistil.kernels import linear as K_lin
from minidistil.kernels import softmax as K_sm

FD64_RTOL = 1e-7


def leaf(a, dtype=np.float64):
    return Tensor(np.array(a, dtype=dtype), requires_grad=True)


# ---- graph mechanics -----------------------------------------------------------------------------------------

def test_node_used_twice_sums_both_paths():
    x = leaf([1.5, -2.0, 3.0])
    y = x * x + x          # x feeds mul twice and add once: dy/dx = 2x + 1
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1)

    a = leaf([[1.0, 2.0], [3.0, 4.0]])
    h = a * 3.0
    z = (h + h) * h        # a diamond: z = 2 h^2, dz/da = 4 h * 3
    z.sum().backward()
    np.testing.assert_allclose(a.grad, 12 * h.data)


def test_backward_twice_accumulates_until_zeroed():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward()
    y.backward()           # the graph is kept: the same gradient is added again
    np.testing.assert_allclose(x.grad, 2 * (2 * x.data))
    z = (x * 5.0).sum()
    z.backward()           # a new graph adds too
    np.testing.assert_allclose(x.grad, 4 * x.data + 5.0)
    x.zero_grad()
    assert x.grad is None
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * x.data)


def test_long_chain_is_iterative():
    # 3000 nodes deep: a recursive topological sort would hit Python's recursion limit (~1000)
    x = leaf([0.5])
    y = x
    for _ in range(3000):
        y = y * 1.001 + 0.0
    y.backward()
    np.testing.assert_allclose(x.grad, [1.001 ** 3000], rtol=1e-10)


def test_only_leaves_keep_grads_unless_retained():
    x = leaf([1.0, 2.0])
    h = x * 2.0
    k = (x * 3.0).retain_grad()
    (h * k).sum().backward()   # d/dh = k, d/dk = h
    assert h.grad is None
    np.testing.assert_allclose(k.grad, h.data)
    np.testing.assert_allclose(x.grad, 2 * k.data + 3 * h.data)


def test_no_grad_and_errors():
    x = leaf([1.0, 2.0])
    with no_grad():
        y = x * 2.0
    assert not y.requires_grad and y._parents == ()
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        y.sum().backward()
    with pytest.raises(ValueError, match="grad must be given"):
        (x * 2.0).backward()
    with pytest.raises(ValueError, match=r"grad: expected shape \(2,\)"):
        (x * 2.0).backward(np.ones(3))
    z = x * 2.0
    z.backward(np.array([1.0, 10.0]))  # a vector-Jacobian product
    np.testing.assert_allclose(x.grad, [2.0, 20.0])


def test_tensor_is_array_like():
    t = Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert np.asarray(t).shape == (2, 3) and np.asarray(t).dtype == np.float32
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and len(t) == 2
    assert float(t.sum()) == 15.0 and t[1, 2].item() == 5.0
    s = np.ones((2, 3), np.float32) * t        # numpy on the left defers to Tensor
    assert isinstance(s, Tensor) and s.dtype == np.float32
    assert (t * 0.5).dtype == np.float32       # a Python float does not promote to float64
    assert Tensor([1.0, 2.0]).dtype == np.float32


# ---- generic ops: float64, against finite differences -----------------------------------------------------------

GENERIC = {
    "add_broadcast": (lambda a, b: a + b, [(2, 3), (3,)]),
    "add_keepdim_broadcast": (lambda a, b: a + b, [(2, 3), (2, 1)]),
    "sub_rsub": (lambda a, b: (a - b) - (1.0 - a), [(2, 3), (2, 3)]),
    "mul_tensor": (lambda a, b: a * b, [(2, 3), (1, 3)]),
    "mul_numpy": (lambda a: a * np.arange(3.0), [(2, 3)]),
    "div_scalar": (lambda a: a / 4.0, [(2, 3)]),
    "neg": (lambda a: -a, [(4,)]),
    "sum_axis": (lambda a: a.sum(axis=1), [(2, 3, 4)]),
    "sum_keepdims": (lambda a: a.sum(axis=(0, 2), keepdims=True), [(2, 3, 4)]),
    "mean": (lambda a: a.mean(axis=-1), [(2, 5)]),
    "reshape": (lambda a: a.reshape(3, 4) * np.arange(12.0).reshape(3, 4), [(2, 6)]),
    "getitem_slice": (lambda a: a[:, 0], [(3, 4, 2)]),
    "getitem_repeated": (lambda a: a[np.array([0, 2, 0, 0])], [(3, 2)]),
    "matmul": (lambda a, b: a @ b, [(3, 4), (4, 2)]),
    "matmul_batched": (lambda a, b: a @ b, [(2, 3, 4), (2, 4, 5)]),
}


@pytest.mark.parametrize("name", list(GENERIC))
def test_generic_op_matches_finite_differences(name, rng):
    f, shapes = GENERIC[name]
    xs = [rng.standard_normal(s) for s in shapes]
    ts = [leaf(x) for x in xs]
    out = f(*ts)
    w = rng.standard_normal(out.shape)
    (out * w).sum().backward()
    for x, t in zip(xs, ts):
        objective = lambda: float((np.asarray(f(*[Tensor(v) for v in xs])) * w).sum())
        expected = _checks.numerical_gradient(objective, x)
        assert t.grad.dtype == np.float64
        assert _checks.relative_error(t.grad, expected) <= FD64_RTOL, name


# ---- coarse ops: float32 kernels, against finite differences of the float64 reference forward --------------------

def _check_coarse(ours, reference, arrays: dict, wrt: list[str], R: int, S: float, rng, scalar=False):
    """ours(**Tensors) -> Tensor; reference(**float64 arrays) -> float64 output (or loss). Differentiates
    sum(out * w) (or the loss itself) with respect to the arrays named in wrt."""
    tensors = {k: (Tensor(v, requires_grad=k in wrt) if v.dtype == np.float32 else v) for k, v in arrays.items()}
    out = ours(**tensors)
    assert out.dtype == np.float32
    w = None if scalar else rng.standard_normal(out.shape).astype(np.float32)
    (out if scalar else (out * w).sum()).backward()
    a64 = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in arrays.items()}
    tol = _checks.f32_tol(R, scale=S)
    for k in wrt:
        if scalar:
            objective = lambda: float(reference(**a64))
        else:
            objective = lambda: float((np.asarray(reference(**a64)) * w).sum())
        expected = _checks.numerical_gradient(objective, a64[k])
        got = tensors[k].grad
        assert got is not None and got.dtype == np.float32, k
        _checks.assert_close(got, expected, atol=tol, name=f"d/d{k}")


def _f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def test_linear(rng):
    x, w, b = _f32(rng, 2, 3, 5), _f32(rng, 4, 5), _f32(rng, 4)
    # dx sums Cout=4 terms, dw and db sum N=6 rows; terms |dy| |x| <= ~3 * 3
    _check_coarse(F.linear, lambda x, w, b: K_lin.linear_forward_ref(x, w, b)[0], dict(x=x, w=w, b=b),
                  ["x", "w", "b"], R=6, S=10, rng=rng)
    _check_coarse(lambda x, w: F.linear(x, w), lambda x, w: K_lin.linear_forward_ref(x, w)[0], dict(x=x, w=w),
                  ["x", "w"], R=6, S=10, rng=rng)


def test_gelu_and_bias_gelu(rng):
    x, b = _f32(rng, 2, 3, 5, scale=2), _f32(rng, 5)
    _check_coarse(F.gelu, lambda x: K_gelu.gelu_forward_ref(x)[0], dict(x=x), ["x"], R=1, S=4, rng=rng)
    _check_coarse(F.bias_gelu, lambda x, b: K_gelu.bias_gelu_forward_ref(x, b)[0], dict(x=x, b=b), ["x", "b"],
                  R=6, S=4, rng=rng)


def test_layer_norm_and_residual(rng):
    x, r, w, b = _f32(rng, 2, 3, 8), _f32(rng, 2, 3, 8), _f32(rng, 8), _f32(rng, 8)
    # dx reduces over C=8 with rstd ~ 1 and |w dy| ~ 3 * 3; dw, db over N=6 rows
    _check_coarse(lambda x, w, b: F.layer_norm(x, w, b, 1e-5),
                  lambda x, w, b: K_ln.layernorm_forward_ref(x, w, b, 1e-5)[0], dict(x=x, w=w, b=b),
                  ["x", "w", "b"], R=8, S=10, rng=rng)
    _check_coarse(lambda x, r, w, b: F.residual_layer_norm(x, r, w, b, 1e-12),
                  lambda x, r, w, b: K_ln.residual_layernorm_forward_ref(x, r, w, b, 1e-12)[0],
                  dict(x=x, r=r, w=w, b=b), ["x", "r", "w", "b"], R=8, S=10, rng=rng)


def test_attention(rng):
    B, T, C, H = 2, 4, 6, 2
    q, k, v = _f32(rng, B, T, C), _f32(rng, B, T, C), _f32(rng, B, T, C)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=np.int64)
    ours = lambda q, k, v, mask: F.attention(q, k, v, mask, H)[0]
    ref = lambda q, k, v, mask: K_att.attention_forward_ref(q, k, v, mask, H)[0]
    # scores sum D=3 products, the backward sums T=4 keys; terms ~ |q||k||v||dout| <= ~3^4 / sqrt(D)
    _check_coarse(ours, ref, dict(q=q, k=k, v=v, mask=mask), ["q", "k", "v"], R=T * C, S=50, rng=rng)
    out, probs = F.attention(Tensor(q), Tensor(k), Tensor(v), mask, H)
    assert probs.shape == (B, H, T, T) and not probs.requires_grad
    np.testing.assert_allclose(np.asarray(probs)[1, :, :, 2:], 0.0)  # padding keys get no attention


def test_projected_attention(rng):
    B, T, C, H = 2, 4, 6, 2
    arrays = dict(x=_f32(rng, B, T, C), wq=_f32(rng, C, C), wk=_f32(rng, C, C), wv=_f32(rng, C, C),
                  bq=_f32(rng, C), bk=_f32(rng, C), bv=_f32(rng, C), mask=np.array([[1, 1, 1, 1], [1, 1, 0, 0]]))

    def ours(x, wq, wk, wv, bq, bk, bv, mask):
        return F.projected_attention(x, (wq, wk, wv), (bq, bk, bv), mask, H)[0]

    def ref(x, wq, wk, wv, bq, bk, bv, mask):
        q, k, v = x @ wq.T + bq, x @ wk.T + bk, x @ wv.T + bv
        return K_att.attention_forward_ref(q, k, v, mask, H)[0]
    # as test_attention, with q, k, v themselves C-term sums (|q| up to ~C |x||w|): a coarser scale
    _check_coarse(ours, ref, arrays, ["x", "wq", "wk", "wv", "bq", "bk", "bv"], R=T * C * C, S=500, rng=rng)


def test_embedding_and_padding_row(rng):
    ids = np.array([[1, 3, 3], [0, 1, 6]])
    table = _f32(rng, 7, 4)
    _check_coarse(lambda table, ids: F.embedding(ids, table),
                  lambda table, ids: K_emb.embedding_forward_ref(ids, table)[0],
                  dict(table=table, ids=ids), ["table"], R=3, S=3, rng=rng)
    t = Tensor(table, requires_grad=True)
    F.embedding(ids, t, padding_idx=0).sum().backward()
    assert np.all(t.grad[0] == 0.0) and np.all(t.grad[3] == 2.0)   # id 3 used twice; row 0 is padding


def test_activations_and_softmax(rng):
    x = _f32(rng, 3, 5, scale=2)
    x_relu = np.where(np.abs(x) < 0.1, 0.5, x).astype(np.float32)  # no finite differences across the kink at 0
    _check_coarse(F.tanh, lambda x: K_act.tanh_forward_ref(x)[0], dict(x=x), ["x"], R=1, S=3, rng=rng)
    _check_coarse(F.relu, lambda x: K_act.relu_forward_ref(x)[0], dict(x=x_relu), ["x"], R=1, S=3, rng=rng)
    _check_coarse(F.softmax, lambda x: K_sm.softmax_forward_ref(x)[0], dict(x=x), ["x"], R=5, S=3, rng=rng)
    _check_coarse(F.log_softmax, lambda x: K_sm.log_softmax_forward_ref(x)[0], dict(x=x), ["x"], R=5, S=3, rng=rng)


def test_dropout(rng):
    x = _f32(rng, 4, 6)
    p, seed = 0.3, 1234
    _check_coarse(lambda x: F.dropout(x, p, True, seed=seed), lambda x: K_drop.dropout_forward_ref(x, p, seed)[0],
                  dict(x=x), ["x"], R=1, S=5, rng=rng)
    t = Tensor(x, requires_grad=True)
    assert F.dropout(t, p, training=False) is t and F.dropout(t, 0.0, training=True) is t
    with pytest.raises(ValueError, match=r"p: expected a dropout probability in \[0, 1\)"):
        F.dropout(t, 1.0, training=True)


def test_losses(rng):
    N, V = 6, 5
    logits = _f32(rng, N, V, scale=2)
    targets = np.array([0, 4, -100, 2, 2, 1])
    # each dlogits element is (softmax - onehot) / n: no reduction beyond the row's softmax sum (V terms)
    _check_coarse(lambda logits, targets: losses.cross_entropy(logits, targets),
                  lambda logits, targets: K_ce.cross_entropy_forward_ref(logits, targets)[0],
                  dict(logits=logits, targets=targets), ["logits"], R=V, S=1, rng=rng, scalar=True)
    teacher = _f32(rng, N, V, scale=2)
    mask = np.array([True, True, False, True, True, False])
    _check_coarse(lambda student, teacher, mask: losses.distill_kl(student, teacher, 2.0, mask),
                  lambda student, teacher, mask: K_kl.distill_kl_forward_ref(student, teacher, 2.0, mask)[0],
                  dict(student=logits, teacher=teacher, mask=mask), ["student"], R=V, S=2, rng=rng, scalar=True)
    a, b = _f32(rng, N, 8), _f32(rng, N, 8)
    _check_coarse(lambda a, b, mask: losses.cosine_embedding_loss(a, b, mask),
                  lambda a, b, mask: K_cos.cosine_loss_forward_ref(a, b, mask)[0],
                  dict(a=a, b=b, mask=mask), ["a", "b"], R=8, S=1, rng=rng, scalar=True)
    _check_coarse(lambda a, b: losses.mse(a, b), lambda a, b: K_cos.mse_forward_ref(a, b)[0],
                  dict(a=a, b=b), ["a", "b"], R=1, S=1, rng=rng, scalar=True)
    targets01 = (rng.random((N, V)) < 0.5).astype(np.float32)
    _check_coarse(lambda logits, t: losses.bce_with_logits(logits, t),
                  lambda logits, t: K_bce.bce_with_logits_forward_ref(logits, t)[0],
                  dict(logits=logits, t=targets01), ["logits"], R=1, S=1, rng=rng, scalar=True)


def test_loss_against_an_array_gets_one_gradient(rng):
    a, b = _f32(rng, 3, 4), _f32(rng, 3, 4)
    ta = Tensor(a, requires_grad=True)
    loss = losses.cosine_embedding_loss(ta, b)   # the teacher side as a plain array: no gradient wanted
    loss.backward()
    assert ta.grad.shape == (3, 4) and loss.shape == ()


def test_losses_compose_with_generic_ops(rng):
    logits = Tensor(_f32(rng, 4, 3), requires_grad=True)
    l1 = losses.cross_entropy(logits, np.array([0, 1, 2, 0]))
    l2 = losses.cross_entropy(logits, np.array([1, 1, 1, 1]))
    total = (l1 + l2) * 0.5
    total.backward()
    g = (K_ce.cross_entropy_backward_ref(0.5, K_ce.cross_entropy_forward_ref(logits.data, np.array([0, 1, 2, 0]))[1])
         + K_ce.cross_entropy_backward_ref(0.5, K_ce.cross_entropy_forward_ref(logits.data, np.array([1, 1, 1, 1]))[1]))
    _checks.assert_close(logits.grad, g, atol=_checks.f32_tol(3, scale=1))


# ---- gradient ownership: in-place adds and uncopied leaf gradients never alias ----------------------------------
#
# backward() adds a second gradient into the first in place, and hands a gradient to a leaf without a copy, only
# when it is the sole holder of that array: every op made with make_result(..., fresh_grads=True) promises that its
# backward returns new arrays (or views of its dout) and keeps none of them. The tests check that promise for every
# such op, and that the results never depend on it: the same graphs with every in-place add and uncopied handover
# turned off (autograd._sole -> False) give the same bits, no two leaves share memory, and the caller's array is
# never written.

def _arrays_held_by(fn) -> list:
    """The numpy arrays a backward closure can reach: its free variables, their fields (caches are NamedTuples)
    and the .data of the Tensors among them."""
    found, todo = [], [c.cell_contents for c in (fn.__closure__ or ())]
    while todo:
        v = todo.pop()
        if isinstance(v, np.ndarray):
            found.append(v)
        elif isinstance(v, Tensor):
            todo.append(v.data)
        elif isinstance(v, tuple):
            todo.extend(v)
    return found


def _fresh_ops(rng):
    """(name, output Tensor) for every op that declares fresh gradients, on small float32 inputs."""
    t = lambda *shape: Tensor(_f32(rng, *shape), requires_grad=True)
    x, r, w, b, v = t(3, 4), t(3, 4), t(5, 4), t(5), t(4)
    q, k, vv = t(2, 3, 4), t(2, 3, 4), t(2, 3, 4)
    ids, mask = np.array([[0, 2, 2]]), np.array([[1, 1, 0], [1, 1, 1]])
    return [
        ("add", x + r), ("add_broadcast", x + v), ("neg", -x), ("mul", x * r), ("sum", x.sum(axis=1)),
        ("reshape", x.reshape(4, 3)), ("getitem", x[np.array([0, 0, 2])]), ("matmul", x @ t(4, 2)),
        ("linear", F.linear(x, w, b)), ("gelu", F.gelu(x)), ("bias_gelu", F.bias_gelu(x, v)),
        ("layer_norm", F.layer_norm(x, v, v, 1e-5)), ("residual_layer_norm", F.residual_layer_norm(x, r, v, v, 1e-5)),
        ("attention", F.attention(q, k, vv, mask, 2, 0.2, training=True, seed=3)[0]),
        ("embedding", F.embedding(ids, t(3, 4), padding_idx=0)), ("tanh", F.tanh(x)), ("relu", F.relu(x)),
        ("softmax", F.softmax(x)), ("log_softmax", F.log_softmax(x)), ("dropout", F.dropout(x, 0.3, True, seed=1)),
        ("cross_entropy", losses.cross_entropy(x, np.array([0, 3, -100]))),
        ("distill_kl", losses.distill_kl(x, r, 2.0)), ("cosine", losses.cosine_embedding_loss(x, r)),
        ("mse", losses.mse(x, r)), ("bce", losses.bce_with_logits(x, (rng.random((3, 4)) < 0.5).astype(np.float32))),
    ]


def test_every_op_that_declares_fresh_gradients_returns_fresh_gradients(rng):
    for name, out in _fresh_ops(rng):
        assert out._fresh_grads, name
        dout = rng.standard_normal(out.shape).astype(np.float32)
        held = _arrays_held_by(out._backward) + [out.data]
        first = [g for g in out._backward(dout) if isinstance(g, np.ndarray)]
        second = [g for g in out._backward(dout) if isinstance(g, np.ndarray)]
        assert first, name
        for g in first + second:  # new, or a view of dout: never something the op keeps
            assert not any(np.shares_memory(g, h) for h in held), name
        for g, g2 in zip(first, second):  # a second call returns new arrays again
            assert np.shares_memory(g, dout) or not np.shares_memory(g, g2), name


def _random_graph(seed: int):
    """A random graph over three leaves mixing the ops whose gradients alias (add passes dout on, residual layer
    norm hands one array to two inputs, reshape returns a view) with ops that make new arrays."""
    r = np.random.default_rng(seed)
    leaves = [Tensor(r.standard_normal((3, 4)).astype(np.float32), requires_grad=True) for _ in range(3)]
    g, b = Tensor(np.ones(4, np.float32), requires_grad=True), Tensor(np.zeros(4, np.float32), requires_grad=True)
    w = Tensor(r.standard_normal((4, 4)).astype(np.float32), requires_grad=True)
    ops = [lambda a, c: a + c, lambda a, c: a * c, lambda a, c: F.tanh(a), lambda a, c: F.linear(a, w),
           lambda a, c: F.residual_layer_norm(a, c, g, b, 1e-5),
           lambda a, c: (a.reshape(4, 3) * 0.5).reshape(3, 4), lambda a, c: a + 1.0]
    nodes = list(leaves)
    for _ in range(12):
        i, j, op = (int(v) for v in r.integers(0, [len(nodes), len(nodes), len(ops)]))
        nodes.append(ops[op](nodes[i], nodes[j]))
    out = nodes[-1] + nodes[-2] + nodes[-3]
    return out, leaves + [g, b, w]


@pytest.mark.parametrize("seed", range(8))
def test_gradients_never_alias_and_do_not_depend_on_in_place_adds(seed, monkeypatch):
    from minidistil.core import autograd as A
    dout = np.random.default_rng(100 + seed).standard_normal((3, 4)).astype(np.float32)
    kept = dout.copy()
    out, params = _random_graph(seed)
    out.backward(dout)
    out.backward(dout)                                          # the second pass adds into the leaves' .grad
    fast = [None if p.grad is None else p.grad.copy() for p in params]
    np.testing.assert_array_equal(dout, kept)                   # the caller's array is never written
    grads = [p.grad for p in params if p.grad is not None]
    for i, gi in enumerate(grads):
        assert not np.shares_memory(gi, dout)
        assert not any(np.shares_memory(gi, gj) for gj in grads[i + 1:])
    monkeypatch.setattr(A, "_sole", lambda a, holders: False)   # every add into a new array, every leaf a copy
    out, params = _random_graph(seed)
    out.backward(dout)
    out.backward(dout)
    for p, f in zip(params, fast):
        assert (p.grad is None) == (f is None)
        if f is not None:
            np.testing.assert_array_equal(p.grad, f)


def test_leaf_gradients_are_never_aliased_and_fresh_ones_are_not_copied(rng, monkeypatch):
    from minidistil.core import autograd as A
    copies = []
    real_copy = A._copy
    monkeypatch.setattr(A, "_copy", lambda a: copies.append(a.shape) or real_copy(a))
    x = Tensor(_f32(rng, 4, 6), requires_grad=True)
    r = Tensor(_f32(rng, 4, 6), requires_grad=True)
    w = Tensor(_f32(rng, 5, 6), requires_grad=True)
    g, b = Tensor(np.ones(6, np.float32), requires_grad=True), Tensor(np.zeros(6, np.float32), requires_grad=True)
    y = F.linear(F.residual_layer_norm(x, r, g, b, 1e-5), w)    # LN's backward hands ONE array to both x and r
    dy = _f32(rng, 4, 5)
    y.backward(dy)
    assert x.grad is not r.grad and not np.shares_memory(x.grad, r.grad)
    np.testing.assert_array_equal(x.grad, r.grad)
    assert copies == [(4, 6)]                                  # only the shared one was copied (w, g, b were not)
    before = r.grad.copy()
    x.grad += 1.0                                              # accumulating into one leaves the other alone
    np.testing.assert_array_equal(r.grad, before)
    assert not np.shares_memory(dy, w.grad)


def test_second_gradient_is_added_in_place_only_into_an_unshared_array(rng, monkeypatch):
    from minidistil.core import autograd as A
    calls = []
    real = A._accumulate
    monkeypatch.setattr(A, "_accumulate", lambda acc, g, in_place=False: calls.append(in_place) or
                        real(acc, g, in_place))
    # h feeds two linears: their fresh dx arrays meet at h, the first is added to in place
    x = Tensor(_f32(rng, 3, 4), requires_grad=True)
    w1, w2 = Tensor(_f32(rng, 5, 4), requires_grad=True), Tensor(_f32(rng, 5, 4), requires_grad=True)
    h = F.tanh(x)
    y = F.linear(h, w1) + F.linear(h, w2)
    dy = _f32(rng, 3, 5)
    y.backward(dy)
    dh = dy @ w1.data + dy @ w2.data                           # from y = h W1^T + h W2^T
    _checks.assert_close(x.grad, dh * (1 - np.tanh(x.data) ** 2), atol=1e-5)
    assert calls == [True]
    # residual LN hands ONE array to x and r; when both then meet again, neither may be written in place
    calls.clear()
    g, b = Tensor(np.ones(4, np.float32), requires_grad=True), Tensor(np.zeros(4, np.float32), requires_grad=True)
    x.grad = None
    t = F.tanh(x)
    z = F.residual_layer_norm(t, t, g, b, 1e-5)                # x + r with x = r = t: dt = dh + dh
    dz = _f32(rng, 3, 4)
    z.backward(dz)
    assert calls == [False]
    t64 = np.tanh(x.data.astype(np.float64))
    h64 = 2 * t64
    mu, var = h64.mean(1, keepdims=True), h64.var(1, keepdims=True)
    xh = (h64 - mu) / np.sqrt(var + 1e-5)
    dh64 = (dz - dz.mean(1, keepdims=True) - xh * (dz * xh).mean(1, keepdims=True)) / np.sqrt(var + 1e-5)
    _checks.assert_close(x.grad, 2 * dh64 * (1 - t64 ** 2), atol=1e-4)


def test_an_op_without_the_promise_has_its_gradients_copied():
    from minidistil.core.autograd import make_result
    kept = np.full(3, 2.0, np.float32)                         # a backward that returns an array it holds
    x = Tensor(np.zeros(3, np.float32), requires_grad=True)
    y = make_result(np.zeros(3, np.float32), (x,), lambda dout: (kept,), "constant_grad")
    (y + y).backward(np.ones(3, np.float32))                   # y gets two gradients; x gets `kept`
    y.backward(np.ones(3, np.float32))
    x.grad += 1.0
    np.testing.assert_array_equal(kept, 2.0)                   # never written through x.grad
    np.testing.assert_array_equal(x.grad, 5.0)
