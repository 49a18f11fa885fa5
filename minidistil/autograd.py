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
call, defined in `minidistil.functional` and `minidistil.losses`, each backed by a hand-written kernel pair
`*_forward` / `*_backward`. Only the few generic ops a user needs (add, mul, sum, mean, reshape, indexing, matmul)
are written here in NumPy.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Sequence

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

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "_op", "_retain")
    __array_ufunc__ = None  # `ndarray * Tensor` calls Tensor.__rmul__ (numpy does not try to loop over a Tensor)

    def __init__(self, data, requires_grad: bool = False, _parents: tuple = (), _backward: Backward | None = None,
                 _op: str = ""):
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

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def retain_grad(self) -> "Tensor":
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

        grads: dict[int, np.ndarray] = {id(self): grad}  # `grad` stays referenced here: never handed over
        for node in _topological_order(self):  # the output first, every node before its inputs
            g = grads.pop(id(node), None)
            if g is None:  # nothing flowed here (e.g. an input of an op that needs no gradient for it)
                continue
            if node._backward is None or node._retain:
                if node.grad is None:
                    # a leaf takes a gradient array nobody else holds as it is (no copy: the parameters' gradients
                    # of a DistilBERT-base step are 265 MB); anything shared or a view is copied
                    node.grad = g if node._backward is None and _sole_owner(g) else _copy(g)
                else:
                    node.grad = _accumulate(node.grad, g, in_place=True)
            if node._backward is None:
                continue
            parent_grads = node._backward(_contiguous(g))
            for parent, pg in zip(node._parents, parent_grads):
                if parent is None or pg is None or not parent.requires_grad:
                    continue
                k = id(parent)
                if k not in grads:
                    grads[k] = pg
                    continue
                # a second gradient for the same input: add it in place when nobody else holds the first one (a
                # fresh array from a backward), else into a new array. Measured: the tied word embeddings of an
                # MLM model get (V, C) = 94 MB from the vocabulary projection and from the embedding lookup;
                # `acc + g` into a new array took 25-250 ms of a training step, `acc += g` 10 ms
                acc = grads.pop(k)
                in_place = _unshared(acc)  # (before the call below, whose own argument would count as a holder)
                grads[k] = _accumulate(acc, pg, in_place=in_place)
                acc = None
            parent_grads = pg = None  # so that the reference counts of _sole_owner see only the dictionary's

    def zero_grad(self):
        self.grad = None

    # ---- generic ops (NumPy): the coarse ones live in minidistil.functional --------------------------------
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


def _sole_owner(a) -> bool:
    """True when `a` is a numpy array owning its memory that only the caller's variable references: the caller's
    name, this function's argument and getrefcount's own argument make 3 (CPython reference counts)."""
    return (isinstance(a, np.ndarray) and a.base is None and a.flags.writeable and a.flags.c_contiguous
            and sys.getrefcount(a) <= 3)


def _unshared(a) -> bool:
    """True when writing into `a` cannot change anything another object sees: a writeable numpy array that only
    the caller references, owning its memory or a view (e.g. a reshape) of an array owning its memory that nothing
    but this view references (getrefcount: the view's base pointer and getrefcount's own argument)."""
    if not isinstance(a, np.ndarray) or not a.flags.writeable or sys.getrefcount(a) > 3:
        return False
    base = a.base
    if base is None:
        return True
    return isinstance(base, np.ndarray) and base.base is None and sys.getrefcount(base) <= 3  # + `base` here


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
    dtype = like.dtype if like is not None else np.float32
    return Tensor(np.asarray(x, dtype=dtype))


def make_result(data, parents: tuple, backward: Backward, op: str) -> Tensor:
    """The output of an op: attached to the graph when recording and some input needs a gradient."""
    if _GRAD_ENABLED and any(p is not None and p.requires_grad for p in parents):
        return Tensor(data, True, parents, backward, op)
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

    return make_result(out, (a, b), backward, "add")


def neg(a: Tensor) -> Tensor:
    def backward(dout):
        # out = -a
        return (_ew.neg(dout) if _cuda.is_device_array(dout) else -dout,)

    return make_result(_ew.neg(a.data) if _on_device(a) else -a.data, (a,), backward, "neg")


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

    return make_result(out, (a, b), backward, "mul")


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

    return make_result(out, (a,), backward, "sum")


def mean(a: Tensor, axis=None, keepdims=False) -> Tensor:
    n = a.size if axis is None else int(np.prod([a.shape[i] for i in np.atleast_1d(axis)]))
    return mul(sum_(a, axis, keepdims), np.asarray(1.0 / n, dtype=a.dtype))


def reshape(a: Tensor, shape) -> Tensor:
    out = a.data.reshape(shape)

    def backward(dout):
        # out = a.reshape(shape)
        return (dout.reshape(a.shape),)

    return make_result(out, (a,), backward, "reshape")


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

    return make_result(out, (a,), backward, "getitem")


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

    return make_result(out, (a, b), backward, "matmul")


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

    return make_result(out, (a,), backward, "getitem")


def _matmul_device(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for 2-d operands on the device (the GEMM of minidistil.kernels.linear)."""
    from minidistil.kernels.linear import gemm_cuda as matmul_cuda  # noqa: PLC0415 (cuBLAS or the tiled GEMM)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"b: on the device matmul takes 2-d operands, got {a.shape} @ {b.shape}")
    ad, bd = _cuda.to_device(_contiguous(a.data)), _cuda.to_device(_contiguous(b.data))
    out = matmul_cuda(ad, bd)

    def backward(dout):
        # out = a @ b  ->  da = dout @ b^T, db = a^T @ dout
        da = matmul_cuda(dout, bd, trans_b=True) if a.requires_grad else None
        db = matmul_cuda(ad, dout, trans_a=True) if b.requires_grad else None
        return da, db

    return make_result(out, (a, b), backward, "matmul")
