"""The small array ops the autograd needs when a Tensor's data lives on the GPU: broadcast add / sub / mul, scale,
in-place accumulate (y += alpha x), fill, sums (to a scalar, over axes, back to a broadcast shape), the slice of
one position along an axis (the [CLS] row x[:, 0]) and its scatter backward, copy / cast.

On the CPU these are NumPy's own operations (NumPy runs each as one memory-bound C loop, the same speed a Numba
loop gets, so a Numba copy would teach nothing): the `*_ref` functions ARE the CPU path. The numba.cuda versions
are what lets a whole model, its gradients and its optimiser stay in GPU memory.

Maths (broadcasting as NumPy: shapes aligned on the right, a dimension of 1 stretches):
    add:  out = a + b      da = sum_to(dout, a.shape), db = sum_to(dout, b.shape)
    sub:  out = a - b      da = sum_to(dout, a.shape), db = -sum_to(dout, b.shape)
    mul:  out = a * b      da = sum_to(dout * b, a.shape), db = sum_to(dout * a, b.shape)
    sum_to(g, shape):      g summed over the axes that broadcasting added or stretched (the adjoint of broadcast_to)
    take(a, axis, i):      out = a[(:,) * axis + (i,)];   its backward puts dout at index i of a zero array
(the autograd in minidistil/core/autograd.py calls these; the derivatives above are written there beside each op).

Versions (every public function accepts numpy arrays, then runs the reference, or numba.cuda device arrays):
    *_ref                                    NumPy (also the CPU path)
    binary_cuda                              one thread per output element; each operand is read through strides
                                             that are 0 on broadcast axes (the shape and strides are tuples, so
                                             the kernel is compiled once per rank and nothing is copied to the GPU)
    scalar_cuda, axpy_cuda, fill_cuda,       one thread per element
    copy_cuda (copy and cast)
    sum_to_cuda                              when the last axis is summed: one block per output element, threads
                                             stride along the summed elements, then a shared-memory tree reduction
                                             (no warp shuffles: the simulator has none); when it is kept: column
                                             sums (_cuda.column_sum), adjacent threads reading adjacent columns.
                                             Sums accumulate in the array's precision (float32 or float64)
    take_cuda / take_backward_cuda           one thread per output element (a gather / a scatter into zeros)
"""
from __future__ import annotations

import functools

import numpy as np

from . import _checks, _cuda

_OPS = {"add": 0, "sub": 1, "mul": 2, "rsub": 3, "copy": 4}


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference (and the CPU path)


def binary_ref(op: str, a, b):
    a, b = np.asarray(a), np.asarray(b)
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    raise ValueError(f"op: expected 'add', 'sub' or 'mul', got {op!r}")


def sum_to_ref(g, shape):
    """Sum g over the axes broadcasting added (leading) or stretched (size 1 in `shape`), back to `shape`."""
    g = np.asarray(g)
    shape = tuple(shape)
    lead = g.ndim - len(shape)
    if lead > 0:
        g = g.sum(axis=tuple(range(lead)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return (g.sum(axis=stretched, keepdims=True) if stretched else g).reshape(shape)


def take_ref(a, axis: int, index: int):
    a = np.asarray(a)
    return np.ascontiguousarray(a[(slice(None),) * axis + (index,)])


def take_backward_ref(dout, shape, axis: int, index: int):
    da = np.zeros(shape, dtype=np.asarray(dout).dtype)
    da[(slice(None),) * axis + (index,)] = dout
    return da


# ---------------------------------------------------------------------------------------------------------------
# numba.cuda versions

cuda = None  # numba.cuda, bound on first use: the simulator swaps this module global for its fake module


@functools.cache
def _cuda_kernels():
    global cuda
    cuda = _cuda.get_cuda()
    from numba import float32, float64
    THREADS = _cuda.THREADS
    block_sum, _ = _cuda.block_reductions()

    @cuda.jit
    def binary(a, sa, b, sb, out, shape, op):
        # out[i] = a[ia] (op) b[ib]: i's coordinates in `shape` times each operand's strides (0 where it broadcasts)
        i = cuda.grid(1)
        if i < out.size:
            rem = i
            ia = 0
            ib = 0
            for d in range(len(shape) - 1, -1, -1):
                c = rem % shape[d]
                rem //= shape[d]
                ia += c * sa[d]
                ib += c * sb[d]
            x = a[ia]
            y = b[ib]
            if op == 0:
                out[i] = x + y
            elif op == 1:
                out[i] = x - y
            elif op == 2:
                out[i] = x * y
            elif op == 3:
                out[i] = y - x
            else:
                out[i] = x  # broadcast_to: a copied over `shape`

    @cuda.jit
    def scalar(a, s, out, op):
        # out = a (op) s for a float32 scalar s (no broadcast strides to walk)
        i = cuda.grid(1)
        if i < out.size:
            x = a[i]
            if op == 0:
                out[i] = x + s
            elif op == 1:
                out[i] = x - s
            elif op == 2:
                out[i] = x * s
            else:
                out[i] = s - x

    @cuda.jit
    def axpy(y, x, alpha):
        # y += alpha * x, in place
        i = cuda.grid(1)
        if i < y.size:
            y[i] += alpha * x[i]

    @cuda.jit
    def fill(out, value):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = value

    @cuda.jit
    def copy(a, out):
        # out = a, converted to out's dtype on the store (a cast when the dtypes differ)
        i = cuda.grid(1)
        if i < out.size:
            out[i] = a[i]

    def make_sum_to(acc_type):
        # the accumulator and the shared buffer in the output's precision (a float64 array is summed in float64)
        @cuda.jit
        def sum_to(a, strides, oshape, rshape, n_red, out):
            # one block per output element o: out[o] = sum of a over the reduced coordinates (rshape), with the
            # kept coordinates (oshape) fixed at o's. strides: a's element strides (C order).
            o = cuda.blockIdx.x
            t = cuda.threadIdx.x
            buf = cuda.shared.array(THREADS, acc_type)
            base = 0
            rem = o
            for d in range(len(oshape) - 1, -1, -1):
                c = rem % oshape[d]
                rem //= oshape[d]
                base += c * strides[d]
            acc = acc_type(0.0)
            r = t
            while r < n_red:
                off = base
                rem = r
                for d in range(len(rshape) - 1, -1, -1):
                    c = rem % rshape[d]
                    rem //= rshape[d]
                    off += c * strides[d]
                acc += a[off]
                r += THREADS
            total = block_sum(buf, acc)  # shared-memory tree reduction (_cuda.block_reductions)
            if t == 0:
                out[o] = total

        return sum_to

    sum_to = make_sum_to(float32)
    sum_to64 = make_sum_to(float64)

    @cuda.jit
    def take(a, out, n, inner, index):
        # a viewed as (outer, n, inner), out (outer, inner) = a[:, index, :]
        i = cuda.grid(1)
        if i < out.size:
            out[i] = a[((i // inner) * n + index) * inner + i % inner]

    @cuda.jit
    def put(dout, da, n, inner, index):
        # da (outer, n, inner) is zero; da[:, index, :] = dout (outer, inner)
        i = cuda.grid(1)
        if i < dout.size:
            da[((i // inner) * n + index) * inner + i % inner] = dout[i]

    return dict(binary=binary, scalar=scalar, axpy=axpy, fill=fill, copy=copy, sum_to=sum_to, sum_to64=sum_to64,
                take=take, put=put)


def _launch(name, n, *args):
    if n:
        _cuda_kernels()[name][_cuda.blocks_for(n), _cuda.THREADS](*args)


def _flat(a):
    return a.reshape(a.size) if len(a.shape) != 1 else a


def _c_strides(shape) -> tuple:
    """Element strides of a C-contiguous array of this shape."""
    strides, s = [], 1
    for n in reversed(shape):
        strides.append(s)
        s *= n
    return tuple(reversed(strides))


def _bcast_strides(shape, full) -> tuple:
    """Strides of an operand of `shape` read over the broadcast shape `full`: 0 on axes it lacks or stretches."""
    shape = (1,) * (len(full) - len(shape)) + tuple(shape)
    return tuple(0 if n == 1 and f != 1 else s for n, f, s in zip(shape, full, _c_strides(shape)))


def broadcast_shape(a_shape, b_shape, names=("a", "b")) -> tuple:
    try:
        return tuple(np.broadcast_shapes(tuple(a_shape), tuple(b_shape)))
    except ValueError:
        raise ValueError(f"{names[1]}: shape {tuple(b_shape)} does not broadcast with {names[0]}'s "
                         f"{tuple(a_shape)}") from None


def _check_float(name, a):
    return _checks.check_array(name, a, dtype=(np.float32, np.float64))


def binary_cuda(op: str, a, b):
    """a (op) b for device arrays with NumPy broadcasting; op 'add', 'sub' or 'mul'. Returns a new device array."""
    if op not in ("add", "sub", "mul"):
        raise ValueError(f"op: expected 'add', 'sub' or 'mul', got {op!r}")
    _check_float("a", a)
    _check_float("b", b)
    full = broadcast_shape(a.shape, b.shape)
    out = _cuda.device_empty(full, dtype=a.dtype)
    if len(full) == 0:  # 0-d: read them as 1-element arrays
        full = (1,)
    _launch("binary", out.size, _flat(a), _bcast_strides(tuple(a.shape), full), _flat(b),
            _bcast_strides(tuple(b.shape), full), _flat(out), full, _OPS[op])
    return out


def scalar_cuda(op: str, a, s: float):
    """a (op) s for a device array a and a number s; op 'add', 'sub', 'mul' or 'rsub' (s - a)."""
    _check_float("a", a)
    out = _cuda.device_empty(tuple(a.shape), dtype=a.dtype)
    _launch("scalar", a.size, _flat(a), a.dtype.type(s), _flat(out), _OPS[op])
    return out


def broadcast_to_cuda(a, shape):
    """A new device array of `shape` holding a broadcast over it (the backward of a sum)."""
    _check_float("a", a)
    full = tuple(shape)
    if broadcast_shape(a.shape, full, ("shape", "a")) != full:
        raise ValueError(f"a: shape {tuple(a.shape)} does not broadcast to {full}")
    out = _cuda.device_empty(full, dtype=a.dtype)
    f = full or (1,)
    _launch("binary", out.size, _flat(a), _bcast_strides(tuple(a.shape), f), _flat(a),
            _bcast_strides(tuple(a.shape), f), _flat(out), f, _OPS["copy"])
    return out


def axpy_cuda(y, x, alpha: float = 1.0):
    """y += alpha * x in place (same shapes); returns y."""
    _check_float("y", y)
    _check_float("x", x)
    _checks.check_same_shape("y", y, "x", x)
    _launch("axpy", y.size, _flat(y), _flat(x), y.dtype.type(alpha))
    return y


def fill_cuda(shape, value: float, dtype=np.float32):
    out = _cuda.device_empty(tuple(shape), dtype=dtype)
    _launch("fill", out.size, _flat(out), np.dtype(dtype).type(value))
    return out


def copy_cuda(a, dtype=None):
    """A new device array with a's values (cast to dtype when given)."""
    out = _cuda.device_empty(tuple(a.shape), dtype=a.dtype if dtype is None else dtype)
    _launch("copy", a.size, _flat(a), _flat(out))
    return out


def _axis_groups(gs, red):
    """g's axes with their sizes, size-1 axes dropped and neighbours of the same kind (reduced or kept) merged:
    [(size, reduced), ...] in C order (outermost first)."""
    groups = []
    for m, r in zip(gs, red):
        if m == 1:
            continue
        if groups and groups[-1][1] == r:
            groups[-1] = (groups[-1][0] * m, r)
        else:
            groups.append((m, r))
    return groups


def sum_to_cuda(g, shape):
    """g summed back to the broadcast-compatible `shape` (the adjoint of broadcast_to); a new device array.

    Reads are coalesced either way: when g's last axis is summed, a block per output element strides along it;
    when it is kept (a bias gradient (B, T, C) -> (C,)), the summed axes are reduced one group at a time by
    _cuda.column_sum over g viewed as (outer, rows, inner), where adjacent threads read adjacent columns."""
    _check_float("g", g)
    shape = tuple(shape)
    gs = tuple(g.shape)
    if broadcast_shape(shape, gs, ("shape", "g")) != gs:
        raise ValueError(f"shape: {shape} does not broadcast to g's shape {gs}")
    padded = (1,) * (len(gs) - len(shape)) + shape
    red = tuple(n == 1 and m != 1 for n, m in zip(padded, gs))
    groups = _axis_groups(gs, red)
    if any(m == 0 for m in gs) or not any(r for _, r in groups):  # nothing to add: zeros, or a copy
        return fill_cuda(shape, 0.0, g.dtype) if any(m == 0 for m in gs) else copy_cuda(g).reshape(shape)
    if groups[-1][1]:  # the last axis is summed: one block per output element, reading along it
        oshape = tuple(1 if r else m for r, m in zip(red, gs))
        rshape = tuple(m if r else 1 for r, m in zip(red, gs))
        out = _cuda.device_empty(shape, dtype=g.dtype)
        kernel = _cuda_kernels()["sum_to64" if np.dtype(g.dtype) == np.float64 else "sum_to"]
        kernel[out.size, _cuda.THREADS](_flat(g), _c_strides(gs), oshape, rshape, int(np.prod(rshape)), _flat(out))
        return out
    while any(r for _, r in groups):  # the innermost summed group, with only kept axes after it: column sums
        i = max(k for k, (_, r) in enumerate(groups) if r)
        outer = int(np.prod([m for m, _ in groups[:i]], dtype=np.int64))
        inner = int(np.prod([m for m, _ in groups[i + 1:]], dtype=np.int64))
        g = _cuda.column_sum(g.reshape(outer, groups[i][0], inner))  # (outer, inner)
        groups = _axis_groups([m for m, _ in groups[:i]] + [m for m, _ in groups[i + 1:]],
                              [r for _, r in groups[:i]] + [r for _, r in groups[i + 1:]])
    return g.reshape(shape)


def _axis_view(shape, axis: int, index: int, name="a"):
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis: expected an axis of {name}'s shape {tuple(shape)}, got {axis}")
    axis %= len(shape)
    n = shape[axis]
    if not -n <= index < n:
        raise ValueError(f"index: expected an index in [{-n}, {n}) along axis {axis} of {name}'s shape "
                         f"{tuple(shape)}, got {index}")
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return axis, n, inner, index % n


def take_cuda(a, axis: int, index: int):
    """a[(:,) * axis + (index,)] as a new C-contiguous device array (e.g. the [CLS] rows x[:, 0] of (B, T, C))."""
    _check_float("a", a)
    shape = tuple(a.shape)
    axis, n, inner, index = _axis_view(shape, axis, index)
    out = _cuda.device_empty(shape[:axis] + shape[axis + 1:], dtype=a.dtype)
    _launch("take", out.size, _flat(a), _flat(out), n, inner, index)
    return out


def take_backward_cuda(dout, shape, axis: int, index: int):
    """The gradient of take: zeros of `shape` with dout at `index` along `axis`."""
    _check_float("dout", dout)
    shape = tuple(shape)
    axis, n, inner, index = _axis_view(shape, axis, index, "the input")
    want = shape[:axis] + shape[axis + 1:]
    if tuple(dout.shape) != want:
        raise ValueError(f"dout: expected shape {want}, got {tuple(dout.shape)}")
    da = fill_cuda(shape, 0.0, dout.dtype)
    _launch("put", dout.size, _flat(dout), _flat(da), n, inner, index)
    return da


# ---------------------------------------------------------------------------------------------------------------
# public entry points: any device operand sends the op to CUDA (a host operand of one element is passed as a
# number, a larger one is copied over); numpy arrays take the NumPy path


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.number)) or (isinstance(x, np.ndarray) and x.size == 1 and x.ndim == 0)


def _binary(op, a, b):
    a_dev, b_dev = _cuda.is_device_array(a), _cuda.is_device_array(b)
    if not (a_dev or b_dev):
        return binary_ref(op, a, b)
    if a_dev and _is_number(b):
        return scalar_cuda(op, a, float(b))
    if b_dev and _is_number(a):
        return scalar_cuda({"add": "add", "mul": "mul", "sub": "rsub"}[op], b, float(a))
    dtype = (a if a_dev else b).dtype
    a = a if a_dev else _cuda.to_device(np.ascontiguousarray(a, dtype=dtype))
    b = b if b_dev else _cuda.to_device(np.ascontiguousarray(b, dtype=dtype))
    return binary_cuda(op, a, b)


def add(a, b):
    return _binary("add", a, b)


def sub(a, b):
    return _binary("sub", a, b)


def mul(a, b):
    return _binary("mul", a, b)


def neg(a):
    return scalar_cuda("mul", a, -1.0) if _cuda.is_device_array(a) else -np.asarray(a)


def axpy_(y, x, alpha: float = 1.0):
    """y += alpha * x in place; returns y."""
    if _cuda.is_device_array(y):
        return axpy_cuda(y, _cuda.to_device(x), alpha)
    y += np.asarray(alpha * np.asarray(x), dtype=y.dtype) if alpha != 1.0 else x
    return y


def scale_(a, s: float):
    """a *= s in place; returns a."""
    if _cuda.is_device_array(a):
        _launch("scalar", a.size, _flat(a), a.dtype.type(s), _flat(a), _OPS["mul"])
        return a
    a *= a.dtype.type(s)
    return a


def full(shape, value: float, like):
    """An array of `shape` filled with value, where `like` lives (device or host) and in its dtype."""
    if _cuda.is_device_array(like):
        return fill_cuda(shape, value, like.dtype)
    return np.full(shape, value, dtype=like.dtype)


def zeros(shape, like):
    return full(shape, 0.0, like)


def copy(a, dtype=None):
    if _cuda.is_device_array(a):
        return copy_cuda(a, dtype)
    return np.array(a, dtype=dtype, copy=True)


def sum_to(g, shape):
    return sum_to_cuda(g, shape) if _cuda.is_device_array(g) else sum_to_ref(g, shape)


def sum(a, axis=None, keepdims: bool = False):  # numpy's name
    """a summed over `axis` (an int, a tuple or None for all), as numpy's a.sum."""
    if not _cuda.is_device_array(a):
        return np.asarray(np.asarray(a).sum(axis=axis, keepdims=keepdims))
    nd = len(a.shape)
    axes = tuple(range(nd)) if axis is None else tuple(ax % nd for ax in np.atleast_1d(axis))
    kept = tuple(1 if d in axes else n for d, n in enumerate(a.shape))
    out = sum_to_cuda(a, kept)
    return out if keepdims else out.reshape(tuple(n for d, n in enumerate(a.shape) if d not in axes))


def broadcast_to(a, shape):
    if _cuda.is_device_array(a):
        return broadcast_to_cuda(a, shape)
    return np.broadcast_to(a, shape)


def take(a, axis: int, index: int):
    return take_cuda(a, axis, index) if _cuda.is_device_array(a) else take_ref(a, axis, index)


def take_backward(dout, shape, axis: int, index: int):
    if _cuda.is_device_array(dout):
        return take_backward_cuda(dout, shape, axis, index)
    return take_backward_ref(dout, shape, axis, index)


def single_axis_index(index, ndim: int):
    """(axis, i) when `index` picks one position along one axis and keeps every other axis whole (x[:, 0],
    x[..., 1], x[2]); None for any other index."""
    idx = index if isinstance(index, tuple) else (index,)
    n_ellipsis = len([i for i in idx if i is Ellipsis])
    if n_ellipsis > 1:
        return None
    if n_ellipsis:
        e = [k for k, i in enumerate(idx) if i is Ellipsis][0]
        idx = idx[:e] + (slice(None),) * (ndim - len(idx) + 1) + idx[e + 1:]
    if len(idx) > ndim:
        return None
    ints = [(d, i) for d, i in enumerate(idx) if isinstance(i, (int, np.integer)) and not isinstance(i, bool)]
    rest = [i for d, i in enumerate(idx) if not ints or d != ints[0][0]]
    if len(ints) != 1 or not all(isinstance(i, slice) and i == slice(None) for i in rest):
        return None
    return ints[0][0], int(ints[0][1])


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = _checks.lab_options("elementwise", argv)
    rep = _checks.Report("elementwise")
    r = _checks.rng(0)
    if not _cuda.available():
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set (the CPU path is NumPy itself)")
        return rep.finish()
    N, C = (8, 13) if _cuda.SIMULATOR or args.size == "tiny" else (8 * 128, 768)
    x = r.standard_normal((2, N, C)).astype(np.float32)
    b = r.standard_normal(C).astype(np.float32)
    m = r.standard_normal((2, N, 1)).astype(np.float32)
    xd, bd, md = (_cuda.to_device(a) for a in (x, b, m))
    tol = _checks.f32_tol(1)  # one rounding per element
    rep.check("cuda", "add", _cuda.to_host(add(xd, bd)), x.astype(np.float64) + b, atol=0, rtol=tol)
    rep.check("cuda", "mul", _cuda.to_host(mul(xd, md)), x.astype(np.float64) * m, atol=0, rtol=tol)
    rep.check("cuda", "sum_to", _cuda.to_host(sum_to(xd, (C,))), x.astype(np.float64).sum(axis=(0, 1)),
              atol=_checks.f32_tol(2 * N, scale=float(np.abs(x).max())))
    rep.check("cuda", "take", _cuda.to_host(take(xd, 1, 0)), x[:, 0], atol=0)
    if not _cuda.SIMULATOR and not args.no_bench:
        cuda = _cuda.get_cuda()
        rep.bench("cuda add", lambda: add(xd, bd), nbytes=3 * x.nbytes, sync=cuda.synchronize)
        rep.bench("cuda sum_to", lambda: sum_to(xd, (C,)), nbytes=x.nbytes, sync=cuda.synchronize)
        rep.bench("cuda axpy_", lambda: axpy_(xd, xd, 0.5), nbytes=3 * x.nbytes, sync=cuda.synchronize)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
