"""A minimal reverse-mode autograd: a Tensor, a tape, and backward() in reverse topological order.

Every op builds its output Tensor and, right under the forward maths, a `backward(dout)` closure that returns the
gradient of each input (the "tape" is the graph of these closures, kept through `Tensor._parents`). `backward()`
sorts the graph ITERATIVELY (no recursion, so a chain of any length works), then walks it from the output to the
leaves, summing the gradients of a node that is used several times before passing them on.

Rules (as in PyTorch):
- only leaves with `requires_grad=True` (the Parameters) keep a `.grad`; intermediate gradients are dropped after
  use unless `retain_grad()` was called on that Tensor;
- gradients ACCUMULATE: `.grad` is added to, never overwritten, until it is zeroed (`model.zero_grad()` or
  `t.grad = None`); calling backward() twice on the same graph therefore doubles the leaves' gradients;
- inside `with no_grad():` no graph is recorded (inference: no caches are kept alive).

The ops that carry the model (linear, attention, layer norm, GELU, embedding, ...) are COARSE: one node per kernel
call, defined in `minidistil.core.functional` and `minidistil.core.losses`, each backed by a hand-written kernel pair
`*_forward` / `*_backward`. Only the few generic ops a user needs (add, mul, sum, mean, reshape, indexing, matmul)
are written here in NumPy.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np

from minidistil.kernels import _cuda
from minidistil.kernels import elementwise as _ew  # the generic ops on device arrays (numba.cuda)

_GRAD_ENABLED = True


@contextlib.contextmanager
def no_grad():
    """Record no graph inside this block (inference). Ops still compute their outputs."""
    global _GRAD_ENABLED
    previous, _GRAD_ENABLED = _GRAD_ENABLED, False
    try:
        yield
    finally:
        _GRAD_ENABLED = previous


@contextlib.contextmanager
def enable_grad():
    global _GRAD_ENABLED
    previous, _GRAD_ENABLED = _GRAD_ENABLED, True
    try:
        yield
    finally:
        _GRAD_ENABLED = previous


def is_grad_enabled() -> bool:
    return _GRAD_ENABLED


Backward = Callable[[np.ndarray], Sequence["np.ndarray | None"]]


class Tensor:
    """An array (`.data`) with an optional gradient (`.grad`, a numpy array or None until backward() sets it).

    `.data` is a numpy array (later also a numba.cuda device array); the model keeps everything in float32.
    `np.asarray(t)` gives the data as a host numpy array.
    """

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "_op", "_retain", "_fresh_grads")
    __array_ufunc__ = None  # `ndarray * Tensor` calls Tensor.__rmul__ (numpy does not try to loop over a Tensor)

    def __init__(self, data, requires_grad: bool = False, _parents: tuple = (), _backward: Backward | None = None,
                 _op: str = "", _fresh_grads: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        if not (isinstance(data, np.ndarray) or _cuda.is_device_array(data)):
            data = np.asarray(data, dtype=np.float32)
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = _parents    # the inputs of the op that made this Tensor (None entries allowed)
        self._backward = _backward  # dout -> one gradient per parent (None where not needed)
        self._op = _op
        self._retain = False
        self._fresh_grads = _fresh_grads  # the backward returns new arrays (or views of its dout) and keeps none

    # ---- array-like surface -------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return len(self.data.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.data.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def numpy(self) -> np.ndarray:
        """The data as a host numpy array (a view when it already is one)."""
        return _cuda.to_host(self.data)

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        if dtype is not None and a.dtype != dtype:
            return a.astype(dtype)
        return np.array(a, copy=True) if copy else a

    def item(self) -> float:
        if self.size != 1:
            raise ValueError(f"item(): only a one-element Tensor converts to a number, got shape {self.shape}")
        return float(self.numpy().reshape(-1)[0])

    def __float__(self) -> float:
        return self.item()

    def __repr__(self) -> str:
        g = f", grad_fn={self._op}" if self._backward is not None else ""
        r = ", requires_grad=True" if self.requires_grad and self._backward is None else ""
        return f"Tensor({self.numpy()!r}{r}{g})"

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def retain_grad(self) -> Tensor:
        """Keep this (non-leaf) Tensor's gradient in `.grad` during backward(); it accumulates like a leaf's."""
        self._retain = True
        return self

    @property
    def is_leaf(self) -> bool:
        return self._backward is None

    # ---- backward -----------------------------------------------------------------------------------------
    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) into every leaf's `.grad` that requires a gradient.

        grad: the gradient of some scalar with respect to self (defaults to 1 for a one-element Tensor).
        Gradients are ADDED to existing `.grad` arrays: zero them between steps (`model.zero_grad()`).
        The graph is kept, so backward() may be called again (which adds the same gradients once more).
        """
        if not self.requires_grad:
            raise RuntimeError("backward(): this Tensor does not require a gradient (no parameter or input with "
                               "requires_grad=True led to it, or it was computed under no_grad())")
        if grad is None:
            if self.size != 1:
                raise ValueError(f"backward(): grad must be given for a non-scalar output of shape {self.shape}")
            grad = _ew.full(self.shape, 1.0, self.data) if _cuda.is_device_array(self.data) else \
                np.ones(self.shape, dtype=self.dtype)
        else:
            grad = np.asarray(grad, dtype=self.dtype) if not _cuda.is_device_array(grad) else grad
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward(): grad: expected shape {self.shape}, got {tuple(grad.shape)}")

        # each pending gradient is (array, holders): `holders` counts the pending gradients that share the array's
        # memory, when the pass knows them all (None: an array someone else may hold, e.g. `grad` above). The pass
        # writes into an array, or hands it to a leaf without a copy, only when it is the sole holder.
        grads: dict[int, tuple] = {id(self): (grad, None)}
        for node in _topological_order(self):  # the output first, every node before its inputs
            g, holders = grads.pop(id(node), (None, None))
            if g is None:  # nothing flowed here (e.g. an input of an op that needs no gradient for it)
                continue
            if node._backward is None or node._retain:
                if node.grad is None:
                    # a leaf takes a gradient array nobody else holds as it is (no copy: the parameters' gradients
                    # of a DistilBERT-base step are 265 MB); anything shared is copied
                    node.grad = g if node._backward is None and _sole(g, holders) and g.flags.c_contiguous \
                        else _copy(g)
                else:
                    node.grad = _accumulate(node.grad, g, in_place=True)
            if node._backward is None:
                _release(holders)
                continue
            dout = _contiguous(g)
            if dout is not g:  # a copy the pass made: held by nobody else
                _release(holders)
                holders = _Holders(1)
            taken = [(parent, pg) for parent, pg in zip(node._parents, node._backward(dout))
                     if parent is not None and pg is not None and parent.requires_grad]
            owners = _holders_of([pg for _, pg in taken], dout, holders) if node._fresh_grads else [None] * len(taken)
            _release(holders)  # the pass is done with dout
            for (parent, pg), pg_holders in zip(taken, owners):
                k = id(parent)
                if k not in grads:
                    grads[k] = (pg, pg_holders)
                    continue
                # a second gradient for the same input: add it in place into the first when the pass is its sole
                # holder, else into a new array: the tied word embeddings of an MLM model get a (V, C) gradient
                # from the vocabulary projection and one from the lookup, and a new (V, C) array per step costs
                # fresh pages
                acc, acc_holders = grads.pop(k)
                if _sole(acc, acc_holders):
                    grads[k] = (_accumulate(acc, pg, in_place=True), acc_holders)
                else:
                    grads[k] = (_accumulate(acc, pg), _Holders(1))
                    _release(acc_holders)
                _release(pg_holders)

    def zero_grad(self):
        self.grad = None

    # ---- generic ops (NumPy): the coarse ones live in minidistil.core.functional --------------------------------
    def __add__(self, other):
        return add(self, other)

    __radd__ = __add__

    def __sub__(self, other):
        return add(self, neg(_as_tensor(other, self)))

    def __rsub__(self, other):
        return add(neg(self), other)

    def __neg__(self):
        return neg(self)

    def __mul__(self, other):
        return mul(self, other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        if isinstance(other, Tensor):
            raise TypeError("Tensor / Tensor is not an op here; divide by a number or a numpy array")
        return mul(self, 1.0 / np.asarray(other, dtype=self.dtype))

    def __matmul__(self, other):
        return matmul(self, other)

    def __getitem__(self, index):
        return getitem(self, index)

    def sum(self, axis=None, keepdims=False):
        return sum_(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return mean(self, axis, keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return reshape(self, shape)


def _topological_order(root: Tensor) -> list[Tensor]:
    """Nodes that need a gradient, each after every node that uses it (root first). Iterative depth-first search:
    a node is emitted once all its inputs are emitted (post-order), and the list is then reversed."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for p in node._parents:
            if p is not None and p.requires_grad and id(p) not in visited:
                stack.append((p, False))
    order.reverse()
    return order


# ---- array helpers (the one place to change when .data may be a device array) ---------------------------------

def _contiguous(a):
    """C-contiguous as the kernels want (np.ascontiguousarray would turn a 0-d array into a 1-d one)."""
    if _cuda.is_device_array(a) or (isinstance(a, np.ndarray) and a.flags.c_contiguous):
        return a
    return np.ascontiguousarray(a).reshape(np.shape(a))


class _Holders:
    """How many pending gradients of one backward pass share an array's memory."""

    __slots__ = ("n",)

    def __init__(self, n: int):
        self.n = n


def _release(holders: _Holders | None):
    """One holder is done with the array (consumed by its node, added into another, or handed to a leaf)."""
    if holders is not None:
        holders.n -= 1


def _sole(a, holders: _Holders | None) -> bool:
    """True when the pass may write into `a`: a writeable host array that no other pending gradient, and nothing
    outside the pass, holds."""
    return holders is not None and holders.n == 1 and isinstance(a, np.ndarray) and a.flags.writeable


def _holders_of(pgs: list, dout, dout_holders: _Holders | None) -> list[_Holders | None]:
    """The holders of each gradient an op's backward returned, for an op that promises fresh gradients
    (`make_result(..., fresh_grads=True)`): every array it returns is new, or a view of its dout, and it keeps
    none of them. Arrays returned for several inputs (residual layer norm hands one dh to x and r) share one count;
    a view of dout joins dout's count (None when dout's holders are unknown); device arrays get None (never written
    in place, as before). The memory test is np.may_share_memory (bounds only: it may say yes for two disjoint
    views of one array, never no for two that overlap)."""
    out: list[_Holders | None] = [None] * len(pgs)
    host = [i for i, a in enumerate(pgs) if isinstance(a, np.ndarray)]
    label = {i: i for i in host}  # connected components of "may share memory"
    for i in host:
        for j in host:
            if j > i and label[j] != label[i] and np.may_share_memory(pgs[i], pgs[j]):
                old = label[j]
                label.update({m: label[i] for m in host if label[m] == old})
    for group in {lab: [i for i in host if label[i] == lab] for lab in label.values()}.values():
        if isinstance(dout, np.ndarray) and any(np.may_share_memory(pgs[i], dout) for i in group):
            shared = dout_holders
        else:
            shared = _Holders(0)
        if shared is not None:
            shared.n += len(group)
            for i in group:
                out[i] = shared
    return out


def _copy(a):
    return a.copy() if not _cuda.is_device_array(a) else _ew.copy(a)


def _accumulate(acc, g, in_place=False):
    if _cuda.is_device_array(acc):  # gradients of device data stay on the device
        return _ew.axpy_(acc, g) if in_place else _ew.add(acc, g)
    if in_place:
        acc += g
        return acc
    return acc + g


def _as_tensor(x, like: Tensor | None = None) -> Tensor:
    """Wrap a number or numpy array as a constant Tensor, in the dtype of `like` (no float64 leaks)."""
    if isinstance(x, Tensor):
        return x
    if _cuda.is_device_array(x):  # a device constant stays where it is (np.asarray would copy it back)
        return Tensor(x)
    dtype = like.dtype if like is not None else np.float32
    return Tensor(np.asarray(x, dtype=dtype))


def make_result(data, parents: tuple, backward: Backward, op: str, fresh_grads: bool = False) -> Tensor:
    """The output of an op: attached to the graph when recording and some input needs a gradient.

    fresh_grads=True is the op's promise that every array its backward returns is new or a view of its dout, and
    that it keeps none of them (the kernels' backwards return fresh arrays): backward() may then add into them in
    place and hand them to leaves without a copy. Leave it False for a backward that returns an array it holds (a
    cached constant, a buffer it reuses): its gradients are then copied before anything writes into them."""
    if _GRAD_ENABLED and any(p is not None and p.requires_grad for p in parents):
        return Tensor(data, True, parents, backward, op, fresh_grads)
    return Tensor(data)


def _unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum g over the axes that broadcasting added or stretched, back to `shape`."""
    if tuple(g.shape) == tuple(shape):
        return g
    if _cuda.is_device_array(g):
        return _ew.sum_to(g, shape)
    g = g.sum(axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=stretched, keepdims=True) if stretched else g


# ---- the generic ops -----------------------------------------------------------------------------------------

def add(a, b) -> Tensor:
    a = _as_tensor(a)
    b = _as_tensor(b, a)
    out = _ew.add(a.data, b.data) if _on_device(a, b) else a.data + b.data  # broadcasting allowed

    def backward(dout):
        # out = a + b  ->  da = dout, db = dout (summed over broadcast axes)
        return _unbroadcast(dout, a.shape), _unbroadcast(dout, b.shape)

    return make_result(out, (a, b), backward, "add", fresh_grads=True)


def neg(a: Tensor) -> Tensor:
    def backward(dout):
        # out = -a
        return (_ew.neg(dout) if _cuda.is_device_array(dout) else -dout,)

    return make_result(_ew.neg(a.data) if _on_device(a) else -a.data, (a,), backward, "neg", fresh_grads=True)


def mul(a, b) -> Tensor:
    """a * b, b a Tensor, a numpy array or a number (broadcasting allowed)."""
    a = _as_tensor(a)
    b = _as_tensor(b, a)
    times = _ew.mul if _on_device(a, b) else np.multiply
    out = times(a.data, b.data)

    def backward(dout):
        # out = a * b  ->  da = dout * b, db = dout * a
        da = _unbroadcast(times(dout, b.data), a.shape) if a.requires_grad else None
        db = _unbroadcast(times(dout, a.data), b.shape) if b.requires_grad else None
        return da, db

    return make_result(out, (a, b), backward, "mul", fresh_grads=True)


def sum_(a: Tensor, axis=None, keepdims=False) -> Tensor:
    out = _ew.sum(a.data, axis, keepdims) if _on_device(a) else np.asarray(a.data.sum(axis=axis, keepdims=keepdims))

    def backward(dout):
        # out = sum(a, axis)  ->  da = dout broadcast back over the summed axes
        if _cuda.is_device_array(dout):
            kept = tuple(1 if axis is None or d in np.atleast_1d(axis) % a.ndim else n for d, n in enumerate(a.shape))
            return (_ew.broadcast_to(dout.reshape(kept), a.shape),)
        if axis is not None and not keepdims:
            dout = np.expand_dims(dout, axis)
        return (np.broadcast_to(dout, a.shape),)

    return make_result(out, (a,), backward, "sum", fresh_grads=True)


def mean(a: Tensor, axis=None, keepdims=False) -> Tensor:
    n = a.size if axis is None else int(np.prod([a.shape[i] for i in np.atleast_1d(axis)]))
    return mul(sum_(a, axis, keepdims), np.asarray(1.0 / n, dtype=a.dtype))


def reshape(a: Tensor, shape) -> Tensor:
    out = a.data.reshape(shape)

    def backward(dout):
        # out = a.reshape(shape)
        return (dout.reshape(a.shape),)

    return make_result(out, (a,), backward, "reshape", fresh_grads=True)


def getitem(a: Tensor, index) -> Tensor:
    """a[index] (basic or advanced indexing); the result is made C-contiguous for the kernels that follow."""
    if _on_device(a):
        return _getitem_device(a, index)
    out = _contiguous(np.asarray(a.data[index]))

    def backward(dout):
        # out = a[index]  ->  da[index] += dout (np.add.at sums repeated indices)
        da = np.zeros(a.shape, dtype=dout.dtype)
        np.add.at(da, index, dout)
        return (da,)

    return make_result(out, (a,), backward, "getitem", fresh_grads=True)


def matmul(a, b) -> Tensor:
    """a @ b for 2-d (or batched, same leading shape) arrays."""
    a = _as_tensor(a)
    b = _as_tensor(b, a)
    if _on_device(a, b):
        return _matmul_device(a, b)
    out = a.data @ b.data

    def backward(dout):
        # out = a @ b  ->  da = dout @ b^T, db = a^T @ dout
        da = _unbroadcast(dout @ np.swapaxes(b.data, -1, -2), a.shape) if a.requires_grad else None
        db = _unbroadcast(np.swapaxes(a.data, -1, -2) @ dout, b.shape) if b.requires_grad else None
        return da, db

    return make_result(out, (a, b), backward, "matmul", fresh_grads=True)


# ---- the generic ops on device arrays (numba.cuda kernels of minidistil.kernels.elementwise) -------------------

def _on_device(*tensors) -> bool:
    """True when some operand's data is a numba.cuda device array: the op then runs as a GPU kernel."""
    return any(_cuda.is_device_array(t.data) for t in tensors)


def _getitem_device(a: Tensor, index) -> Tensor:
    """a[index] on the device for an index that picks one position along one axis (x[:, 0], x[..., 1])."""
    picked = _ew.single_axis_index(index, a.ndim)
    if picked is None:
        raise ValueError(f"index: on a device Tensor only an index picking one position along one axis is supported "
                         f"(like x[:, 0] or x[..., 1]), got {index!r}; copy to the host first with .numpy()")
    axis, i = picked
    out = _ew.take(a.data, axis, i)

    def backward(dout):
        # out = a[:, ..., i, ...]  ->  da = zeros with dout at position i along that axis
        return (_ew.take_backward(dout, a.shape, axis, i),)

    return make_result(out, (a,), backward, "getitem", fresh_grads=True)


def _matmul_device(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for 2-d operands on the device (the GEMM of minidistil.kernels.linear)."""
    from minidistil.kernels.linear import gemm_cuda as matmul_cuda  # cuBLAS or the tiled GEMM
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"b: on the device matmul takes 2-d operands, got {a.shape} @ {b.shape}")
    ad, bd = _cuda.to_device(_contiguous(a.data)), _cuda.to_device(_contiguous(b.data))
    out = matmul_cuda(ad, bd)

    def backward(dout):
        # out = a @ b  ->  da = dout @ b^T, db = a^T @ dout
        da = matmul_cuda(dout, bd, trans_b=True) if a.requires_grad else None
        db = matmul_cuda(ad, dout, trans_a=True) if b.requires_grad else None
        return da, db

    return make_result(out, (a, b), backward, "matmul", fresh_grads=True)
