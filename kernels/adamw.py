"""AdamW, one optimiser step in place (PyTorch's torch.optim.AdamW maths), and the sum of squares for clipping.

One step (elementwise over param, grad, m, v of the same shape; step t = 1, 2, ...):
    param = param * (1 - lr * weight_decay)                   decoupled weight decay (Loshchilov & Hutter)
    m     = beta1 * m + (1 - beta1) * grad                     first moment
    v     = beta2 * v + (1 - beta2) * grad^2                   second moment
    bc1   = 1 - beta1^t,   bc2 = 1 - beta2^t                   bias corrections
    param = param - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
This is the order and grouping of torch.optim.AdamW's single-tensor path, the Adam paper's Algorithm 1
(param -= lr m_hat / (sqrt(v_hat) + eps), m_hat = m / bc1, v_hat = v / bc2); the paper's "more efficient" form
lr sqrt(bc2) / bc1 * m / (sqrt(v) + eps) puts eps at another scale and is NOT what torch computes. The
step-dependent scalars (1 - lr * wd, lr / bc1, sqrt(bc2)) are computed once in float64 on the host and passed as
float32; the kernels do float32 arithmetic per element. There is no backward: this is an update, not an op.

Gradient clipping by global norm needs sum(g^2) over every gradient: `sum_of_squares(a)` returns it as a Python
float, accumulated in float64 (66M float32 squares summed in float32 would lose ~4 digits). On the GPU the whole
clip stays on the device, so a training step never waits for it:
    norm = sqrt(sum over the arrays of sum(g^2))              float64, one reduction (clip_coefficient_device)
    coef = min(1, max_norm / (norm + 1e-6))   if norm is finite, else 1 (nothing is scaled)
    g    = g * float32(coef)                                   in place, only where coef < 1 (clip_scale_device_)
and the AdamW kernel reads the norm from device memory and leaves param, m and v untouched when it is not finite
(the step is skipped, as AMP's GradScaler skips one; the host sees the norm when it next reads it).

Versions:
    adamw_step_ref                       NumPy, in place, in the arrays' dtype (float32 or float64)
    adamw_step_cpu                       Numba, prange over elements, one read of 4 arrays and one write of 3
    adamw_step_cuda                      numba.cuda, one thread per element
    sum_of_squares_ref                   NumPy in float64
    sum_of_squares_cpu                   Numba, prange reduction with a float64 accumulator
    sum_of_squares_cuda                  numba.cuda, grid-stride loop, float64 shared-memory tree per block, the
                                         per-block partial sums added by one block on the device
    clip_coefficient_device              the same sums over many arrays, then the norm and the clipping
                                         coefficient computed on the device (nothing read back)
    clip_scale_device_                   numba.cuda, g *= coef with coef read from device memory
"""
from __future__ import annotations

import functools
import math
import numbers

import numpy as np
from numba import njit, prange

from . import _checks, _cuda

EPS64 = float(np.finfo(np.float64).eps)

# ---------------------------------------------------------------------------------------------------------------
# argument checks and the host-side scalars


def _check_hparams(lr, beta1, beta2, eps, weight_decay, step):
    def real(name, val, lo, hi, hi_open):
        ok = isinstance(val, numbers.Real) and not isinstance(val, bool) and math.isfinite(float(val))
        ok = ok and lo <= float(val) and (float(val) < hi if hi_open else float(val) <= hi)
        if not ok:
            bracket = ")" if hi_open else "]"
            raise ValueError(f"{name}: expected a real number in [{lo}, {hi}{bracket}, got {val!r}")
    real("lr", lr, 0.0, math.inf, True)
    real("beta1", beta1, 0.0, 1.0, True)
    real("beta2", beta2, 0.0, 1.0, True)
    real("eps", eps, 0.0, math.inf, True)
    real("weight_decay", weight_decay, 0.0, math.inf, True)
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 1:
        raise ValueError(f"step: expected an integer >= 1 (the step count after this update), got {step!r}")


def _check_arrays(param, grad, m, v):
    device = _cuda.is_device_array(param)
    for name, a in (("param", param), ("grad", grad), ("m", m), ("v", v)):
        _checks.check_array(name, a)
        if name != "param":
            _checks.check_same_shape("param", param, name, a)
            if _cuda.is_device_array(a) != device:
                where = "a device array" if device else "a numpy array"
                raise ValueError(f"{name}: expected {where} like param, got {type(a).__name__}")


def _scalars(lr, beta1, beta2, eps, weight_decay, step):
    """Per-step float64 scalars, the way torch computes them on the host."""
    decay = 1.0 - lr * weight_decay
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    return dict(decay=decay, beta1=beta1, one_m_beta1=1.0 - beta1, beta2=beta2, one_m_beta2=1.0 - beta2,
                step_size=lr / bc1, bc2_sqrt=math.sqrt(bc2), eps=eps)


_ORDER = ("decay", "beta1", "one_m_beta1", "beta2", "one_m_beta2", "step_size", "bc2_sqrt", "eps")


def _f32_args(s):
    return tuple(np.float32(s[k]) for k in _ORDER)


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference


def adamw_step_ref(param, grad, m, v, *, lr, beta1, beta2, eps, weight_decay, step):
    _check_hparams(lr, beta1, beta2, eps, weight_decay, step)
    s = _scalars(lr, beta1, beta2, eps, weight_decay, step)
    t = param.dtype.type  # scalars in the arrays' dtype, as the float32 kernels see them
    param *= t(s["decay"])                                           # param = param * (1 - lr * wd)
    m *= t(s["beta1"])
    m += t(s["one_m_beta1"]) * grad                                  # m = beta1 m + (1 - beta1) g
    v *= t(s["beta2"])
    v += t(s["one_m_beta2"]) * grad * grad                           # v = beta2 v + (1 - beta2) g^2
    param -= t(s["step_size"]) * m / (np.sqrt(v) / t(s["bc2_sqrt"]) + t(s["eps"]))


def sum_of_squares_ref(a) -> float:
    a64 = np.asarray(a, dtype=np.float64)
    return float(np.dot(a64.reshape(-1), a64.reshape(-1)))


# ---------------------------------------------------------------------------------------------------------------
# Numba CPU


@njit(cache=True, parallel=True)
def _adamw_cpu(param, grad, m, v, decay, beta1, one_m_beta1, beta2, one_m_beta2, step_size, bc2_sqrt, eps):
    # all arrays flat (N,) float32, all scalars float32
    for i in prange(param.size):
        g = grad[i]
        mi = beta1 * m[i] + one_m_beta1 * g
        vi = beta2 * v[i] + one_m_beta2 * g * g
        m[i] = mi
        v[i] = vi
        param[i] = param[i] * decay - step_size * mi / (math.sqrt(vi) / bc2_sqrt + eps)


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def _sum_of_squares_cpu(a):
    # a flat (N,) float32. The square of a float32 is exact in float64 (24-bit mantissa squared: 48 bits <= 53),
    # so only the float64 additions round; prange turns the running sum into a parallel reduction, and the
    # "reassoc" flag (only that: no finite-math assumption, an inf or NaN gradient still gives inf or NaN) lets
    # each thread's chain of adds vectorise into 8-lane partial sums. Measured, 66 M elements (DistilBERT-base's
    # gradients), 2 cores: 63 -> 8 ms.
    s = 0.0
    for i in prange(a.size):
        x = np.float64(a[i])
        s += x * x
    return s


def adamw_step_cpu(param, grad, m, v, *, lr, beta1, beta2, eps, weight_decay, step):
    _check_hparams(lr, beta1, beta2, eps, weight_decay, step)
    _check_arrays(param, grad, m, v)
    s = _scalars(lr, beta1, beta2, eps, weight_decay, step)
    _adamw_cpu(param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1), *_f32_args(s))


def sum_of_squares_cpu(a) -> float:
    _checks.check_array("a", a)
    return float(_sum_of_squares_cpu(a.reshape(-1)))


# ---------------------------------------------------------------------------------------------------------------
# numba.cuda


cuda = None  # numba.cuda, bound on first use: the simulator swaps this module global for its fake module

_SUMSQ_MAX_BLOCKS = 8 if _cuda.SIMULATOR else 1024  # grid-stride: at most this many partial sums to add on the host


@functools.cache
def _cuda_kernels():
    global cuda
    cuda = _cuda.get_cuda()
    from numba import float32, float64
    THREADS = _cuda.THREADS
    block_sum, _ = _cuda.block_reductions()

    @cuda.jit
    def adamw(param, grad, m, v, decay, beta1, one_m_beta1, beta2, one_m_beta2, step_size, bc2_sqrt, eps, norm):
        # norm: (1,) float64 on the device, the global gradient norm; not finite: this step is skipped
        i = cuda.grid(1)
        if i < param.size and math.isfinite(norm[0]):
            g = grad[i]
            mi = beta1 * m[i] + one_m_beta1 * g
            vi = beta2 * v[i] + one_m_beta2 * g * g
            m[i] = mi
            v[i] = vi
            param[i] = param[i] * decay - step_size * mi / (math.sqrt(vi) / bc2_sqrt + eps)

    @cuda.jit
    def sumsq(a, partial, offset):
        # each thread sums a strided slice in float64, then the block reduces its THREADS sums in shared memory
        t = cuda.threadIdx.x
        buf = cuda.shared.array(THREADS, float64)
        acc = float64(0.0)
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < a.size:
            x = float64(a[i])
            acc += x * x
            i += stride
        total = block_sum(buf, acc)  # shared-memory tree reduction (_cuda.block_reductions)
        if t == 0:
            partial[offset + cuda.blockIdx.x] = total

    @cuda.jit(device=True)
    def sum_partials(partial, buf, t):
        # the block's threads add partial's entries (strided by THREADS) and the tree reduction adds theirs, in float64
        acc = float64(0.0)
        i = t
        while i < partial.size:
            acc += partial[i]
            i += THREADS
        return block_sum(buf, acc)

    @cuda.jit
    def add_partials(partial, out):
        # one block: out[0] = sum(partial), in float64
        t = cuda.threadIdx.x
        total = sum_partials(partial, cuda.shared.array(THREADS, float64), t)
        if t == 0:
            out[0] = total

    @cuda.jit
    def clip_finish(partial, max_norm, norm, coef):
        # one block: norm[0] = sqrt(sum(partial)) (float64), coef[0] = min(1, max_norm / (norm + 1e-6)) as float32,
        # or 1 (nothing scaled) when the norm is inf or NaN
        t = cuda.threadIdx.x
        total = sum_partials(partial, cuda.shared.array(THREADS, float64), t)
        if t == 0:
            n = math.sqrt(total)
            norm[0] = n
            c = float64(1.0)
            if math.isfinite(n):
                c = min(c, max_norm / (n + 1e-6))
            coef[0] = float32(c)

    @cuda.jit
    def clip_scale(a, coef):
        # a *= coef[0] (float32), only when coef[0] < 1: an unclipped step writes nothing
        i = cuda.grid(1)
        c = coef[0]
        if i < a.size and c < float32(1.0):
            a[i] = a[i] * c

    return adamw, sumsq, add_partials, clip_finish, clip_scale


@functools.cache
def _finite_norm():
    """A (1,) float64 device array holding 0: the norm an update reads when no clipping gave one (made once)."""
    return _cuda.device_zeros((1,), dtype=np.float64)


def _check_norm(norm):
    if not (_cuda.is_device_array(norm) and tuple(norm.shape) == (1,) and np.dtype(norm.dtype) == np.float64):
        raise ValueError(f"norm: expected the (1,) float64 device array of clip_coefficient_device, got "
                         f"{type(norm).__name__} {getattr(norm, 'shape', '')}")


def adamw_step_cuda(param, grad, m, v, *, lr, beta1, beta2, eps, weight_decay, step, norm=None):
    """norm: None, or the (1,) float64 device array of the global gradient norm (clip_coefficient_device): when
    it holds inf or NaN the kernel writes nothing (param, m, v keep their values), decided on the device."""
    _check_hparams(lr, beta1, beta2, eps, weight_decay, step)
    _check_arrays(param, grad, m, v)
    if norm is not None:
        _check_norm(norm)
    n = param.size
    if n:
        adamw = _cuda_kernels()[0]
        s = _scalars(lr, beta1, beta2, eps, weight_decay, step)
        adamw[_cuda.blocks_for(n), _cuda.THREADS](param.reshape(n), grad.reshape(n), m.reshape(n), v.reshape(n),
                                                   *_f32_args(s), _finite_norm() if norm is None else norm)


def sum_of_squares_cuda(a) -> float:
    _checks.check_array("a", a)
    n = a.size
    if n == 0:
        return 0.0
    return float(_cuda.to_host(sum_of_squares_device([a]))[0])


def sum_of_squares_device(arrays):
    """sum over the device arrays of sum(a^2), in float64, left on the GPU as a (1,) device array: every array's
    blocks write their partial sums into one buffer, then one block adds them (gradient clipping reads one number
    per step, not one per parameter)."""
    _, _, add_partials, _, _ = _cuda_kernels()
    partial = _partial_sums(arrays)
    out = _cuda.device_empty((1,), dtype=np.float64)
    add_partials[1, _cuda.THREADS](partial, out)
    return out


def _partial_sums(arrays):
    """A float64 device buffer of per-block partial sums of squares over every array (one 0 when there are none)."""
    arrays = [a for a in arrays if a.size]
    for a in arrays:
        _checks.check_array("a", a)
    sumsq = _cuda_kernels()[1]
    blocks = [min(_cuda.blocks_for(a.size), _SUMSQ_MAX_BLOCKS) for a in arrays]
    partial = _cuda.device_empty((max(1, sum(blocks)),), dtype=np.float64)
    if not arrays:
        return _cuda.fill_(partial, 0.0)
    offset = 0
    for a, nb in zip(arrays, blocks):
        sumsq[nb, _cuda.THREADS](a.reshape(a.size), partial, np.int64(offset))
        offset += nb
    return partial


def clip_coefficient_device(arrays, max_norm: float):
    """Gradient clipping's numbers, computed and left on the GPU: (norm, coef), norm a (1,) float64 device array
    sqrt(sum over the arrays of sum(a^2)), coef a (1,) float32 device array min(1, max_norm / (norm + 1e-6)), or 1
    when the norm is not finite. Nothing is read back: the caller reads the norm when it logs."""
    if not (isinstance(max_norm, numbers.Real) and math.isfinite(float(max_norm)) and float(max_norm) > 0):
        raise ValueError(f"max_norm: expected a positive finite number, got {max_norm!r}")
    _, _, _, clip_finish, _ = _cuda_kernels()
    partial = _partial_sums(arrays)
    norm = _cuda.device_empty((1,), dtype=np.float64)
    coef = _cuda.device_empty((1,), dtype=np.float32)
    clip_finish[1, _cuda.THREADS](partial, np.float64(max_norm), norm, coef)
    return norm, coef


def clip_scale_device_(a, coef):
    """a *= coef[0] in place on the device (a float32 device array, coef the (1,) float32 device array of
    clip_coefficient_device); nothing is written when coef is 1. Returns a."""
    _checks.check_array("a", a)
    if a.size:
        clip_scale = _cuda_kernels()[4]
        clip_scale[_cuda.blocks_for(a.size), _cuda.THREADS](a.reshape(a.size), coef)
    return a


# ---------------------------------------------------------------------------------------------------------------
# public entry points: device arrays go to CUDA, numpy arrays to the Numba CPU kernels


def adamw_step(param, grad, m, v, *, lr, beta1, beta2, eps, weight_decay, step, norm=None):
    """Update param, m and v in place (float32 arrays of one shape; m and v start at zero, step starts at 1).
    norm (device arrays only): the device gradient norm of clip_coefficient_device; the update is skipped on the
    device when it is not finite (see adamw_step_cuda)."""
    hp = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, step=step)
    if _cuda.is_device_array(param):
        adamw_step_cuda(param, grad, m, v, norm=norm, **hp)
    elif norm is not None:
        raise ValueError("norm: the on-device skip is for device arrays; on the CPU the caller reads the norm")
    else:
        adamw_step_cpu(param, grad, m, v, **hp)


def sum_of_squares(a) -> float:
    """sum(a^2) accumulated in float64, as a Python float (for clipping: norm = sqrt of the sum over all grads)."""
    return sum_of_squares_cuda(a) if _cuda.is_device_array(a) else sum_of_squares_cpu(a)


# ---------------------------------------------------------------------------------------------------------------


def update_bound(lr, beta1, beta2, steps) -> float:
    """An upper bound on |param change from the Adam term| over steps 1..steps, whatever the gradients.

    With m_t = (1-b1) sum_k b1^k g_(t-k) and v_t = (1-b2) sum_k b2^k g_(t-k)^2 (k = 0..t-1, m and v start at 0),
    Cauchy-Schwarz on b1^k g = (b1^k / b2^(k/2)) (b2^(k/2) g) gives |m_t| <= (1-b1) sqrt(S_t) sqrt(v_t / (1-b2)),
    S_t = sum_k (b1^2/b2)^k; and eps >= 0 only shrinks the step, so
        (lr / bc1) |m| / (sqrt(v) / sqrt(bc2) + eps) <= lr sqrt(bc2) / bc1 (1-b1) / sqrt(1-b2) sqrt(S_t).
    Tests scale their float32 tolerance by it: each update carries ~10 roundings relative to its own size.
    """
    bound, S = 0.0, 0.0
    for t in range(1, steps + 1):
        S += (beta1 * beta1 / beta2) ** (t - 1)
        bc1, bc2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
        bound = max(bound, lr * math.sqrt(bc2) / bc1 * (1.0 - beta1) / math.sqrt(1.0 - beta2) * math.sqrt(S))
    return bound


def adamw_tolerances(p64, m64, v64, lr, beta1, beta2, steps):
    """Derived float32 tolerances for (param, m, v) after `steps` steps, given the float64 results.

    param: every step adds the rounding of one update (~10 float32 roundings of a value <= update_bound) and of
    the decay product and the subtraction (eps * |param|); grads are given, so these errors never feed back into
    m or v and grow at most linearly: steps * f32_tol(1, |param| + bound).
    m, v: a few roundings per step, damped by beta < 1: f32_tol(steps, max|m|) and f32_tol(steps, max|v|).
    """
    tol_p = steps * _checks.f32_tol(1, scale=float(np.abs(p64).max(initial=0.0))
                                    + update_bound(lr, beta1, beta2, steps))
    tol_m = _checks.f32_tol(steps, scale=float(np.abs(m64).max(initial=0.0)))
    tol_v = _checks.f32_tol(steps, scale=float(np.abs(v64).max(initial=0.0)))
    return tol_p, tol_m, tol_v


def _run_steps(fn, p, g_seq, hp, to_dev=None, to_host=None):
    m, v = np.zeros_like(p), np.zeros_like(p)
    arrs = [p.copy(), m, v]
    if to_dev:
        arrs = [to_dev(a) for a in arrs]
    for t, g in enumerate(g_seq, start=1):
        fn(arrs[0], to_dev(g) if to_dev else g, arrs[1], arrs[2], step=t, **hp)
    return [to_host(a) for a in arrs] if to_host else arrs


def main(argv=None):
    args = _checks.lab_options("adamw", argv)
    rep = _checks.Report("adamw")
    r = _checks.rng(0)
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.01)
    steps = 5
    # validation: 5 steps on 1M parameters against the float64 reference, tolerances from adamw_tolerances()
    N = (1 << 20) if args.size == "base" else 1000
    p0 = r.standard_normal(N).astype(np.float32)
    gs = [r.standard_normal(N).astype(np.float32) for _ in range(steps)]
    p64, m64, v64 = _run_steps(adamw_step_ref, p0.astype(np.float64), [g.astype(np.float64) for g in gs], hp)
    tol_p, tol_m, tol_v = adamw_tolerances(p64, m64, v64, hp["lr"], hp["beta1"], hp["beta2"], steps)
    p32, m32, v32 = _run_steps(adamw_step_cpu, p0, gs, hp)
    rep.check("cpu", "param", p32, p64, atol=tol_p)
    rep.check("cpu", "m", m32, m64, atol=tol_m)
    rep.check("cpu", "v", v32, v64, atol=tol_v)
    # sum of squares: float32 squares are exact in float64 and the terms are positive (no cancellation), so
    # recursive float64 summation is within N * eps64 relative of the exact sum, whatever the order
    ss64 = sum_of_squares_ref(gs[0])
    rtol_ss = N * EPS64
    rep.check("cpu", "sumsq", np.array(sum_of_squares_cpu(gs[0])), np.array(ss64), atol=0.0, rtol=rtol_ss)

    if _cuda.available():
        n_small = 64 if _cuda.SIMULATOR else N
        pc, mc, vc = _run_steps(adamw_step_cuda, p0[:n_small], [g[:n_small] for g in gs], hp,
                                to_dev=_cuda.to_device, to_host=_cuda.to_host)
        rep.check("cuda", "param", pc, p64[:n_small], atol=tol_p)
        rep.check("cuda", "m", mc, m64[:n_small], atol=tol_m)
        rep.check("cuda", "v", vc, v64[:n_small], atol=tol_v)
        rep.check("cuda", "sumsq", np.array(sum_of_squares_cuda(_cuda.to_device(gs[0][:n_small]))),
                  np.array(sum_of_squares_ref(gs[0][:n_small])), atol=0.0, rtol=rtol_ss)
    else:
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set")

    if args.no_bench:
        return rep.finish()

    # benchmark: DistilBERT-base has 66M parameters; one array of them. Bytes: read param, grad, m, v, write
    # param, m, v (7 x 4 bytes per parameter); sum of squares reads 4 bytes per parameter.
    del p64, m64, v64, gs
    N = 66_000_000
    param = r.standard_normal(N, dtype=np.float32)
    grad = r.standard_normal(N, dtype=np.float32)
    m, v = np.zeros_like(param), np.zeros_like(param)
    nbytes = 7 * 4 * N
    rep.bench("ref(numpy)", lambda: adamw_step_ref(param, grad, m, v, step=1, **hp), nbytes=nbytes,
              warmup=1, repeat=3)
    rep.bench("cpu", lambda: adamw_step_cpu(param, grad, m, v, step=1, **hp), nbytes=nbytes, repeat=5)
    rep.bench("ref sumsq", lambda: sum_of_squares_ref(grad), nbytes=4 * N, warmup=1, repeat=3)
    rep.bench("cpu sumsq", lambda: sum_of_squares_cpu(grad), nbytes=4 * N, repeat=5)
    if _cuda.available() and not _cuda.SIMULATOR:
        cu = _cuda.get_cuda()
        pd, gd, md, vd = (_cuda.to_device(a) for a in (param, grad, m, v))
        rep.bench("cuda", lambda: adamw_step_cuda(pd, gd, md, vd, step=1, **hp), nbytes=nbytes,
                  sync=cu.synchronize)
        rep.bench("cuda sumsq", lambda: sum_of_squares_cuda(gd), nbytes=4 * N, sync=cu.synchronize)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
