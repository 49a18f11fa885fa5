"""AdamW with DistilBERT's settings, its learning-rate schedule and gradient clipping.

    opt = AdamW(model.named_parameters(), lr=5e-4)          # betas (0.9, 0.98), eps 1e-6, weight decay 0.01
    sched = LinearWarmupDecay(peak_lr=5e-4, total_steps=1000, warmup_frac=0.05)
    for step in range(1000):
        ... loss.backward() (once, or once per micro-batch with the loss divided by the number of micro-batches)
        norm = clip_grad_norm(opt.parameters(), max_norm=5.0)
        opt.step(lr=sched(step))
        opt.zero_grad()

On a GPU, `clip_grad_norm(..., sync=False)` keeps the norm on the device and `opt.step(lr, norm=norm)` skips the
update on the device when it is not finite: a step then never waits for the GPU (the norm is read when it is logged).

AdamW (Loshchilov & Hutter, decoupled weight decay), per parameter p with gradient g at update t = 1, 2, ...:
    p <- p - lr * wd * p
    m <- beta1 m + (1 - beta1) g;   v <- beta2 v + (1 - beta2) g^2
    p <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
The arithmetic is the kernel `minidistil.kernels.adamw.adamw_step` (in place on p, m, v). Weight decay is applied
to matrices only: biases and LayerNorm weights (every 1-D parameter, and any name with "bias" or "norm") get none.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from minidistil.kernels import _cuda
from minidistil.kernels import elementwise as _ew
from minidistil.kernels import gemm as _gemm


def decays(name: str, param) -> bool:
    """Weight decay for this parameter? Not for biases and LayerNorm weights (BERT's and DistilBERT's rule)."""
    lname = name.lower()
    return len(param.data.shape) >= 2 and "bias" not in lname and "norm" not in lname


class AdamW:
    def __init__(self, named_parameters: Iterable[tuple[str, object]], lr: float = 5e-4,
                 betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6, weight_decay: float = 0.01):
        self.named = [(n, p) for n, p in named_parameters]
        if not self.named:
            raise ValueError("named_parameters: expected at least one (name, Tensor) pair, got none")
        names = [n for n, _ in self.named]
        if len(set(names)) != len(names):
            raise ValueError("named_parameters: parameter names must be unique")
        for n, p in self.named:
            on_device = _cuda.is_device_array(p.data)
            if not (isinstance(p.data, np.ndarray) or on_device) or np.dtype(p.data.dtype) != np.float32:
                raise ValueError(f"named_parameters: {n}: expected float32 numpy or device data, got "
                                 f"{type(p.data).__name__}")
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.decay = {n: decays(n, p) for n, p in self.named}
        self.m = {n: _ew.zeros(p.shape, like=p.data) for n, p in self.named}  # first moments, where p lives
        self.v = {n: _ew.zeros(p.shape, like=p.data) for n, p in self.named}  # second moments
        self.t = 0  # updates done

    def parameters(self) -> list:
        return [p for _, p in self.named]

    def zero_grad(self):
        for _, p in self.named:
            p.grad = None

    def step(self, lr: float | None = None, norm=None):
        """One update of every parameter that has a gradient, at learning rate `lr` (default: self.lr).
        norm: None, or the device gradient norm that clip_grad_norm(..., sync=False) returned: each kernel reads it
        from device memory and leaves the parameter and its moments untouched when it is inf or NaN (the update
        count still advances). A host float is ignored (its caller has read it and decided)."""
        from minidistil.kernels.adamw import adamw_step
        lr = self.lr if lr is None else float(lr)
        norm = norm if _cuda.is_device_array(norm) else None
        self.t += 1
        for n, p in self.named:
            if p.grad is None:
                continue
            if _cuda.is_device_array(p.data) != _cuda.is_device_array(self.m[n]):  # the model moved: so do m, v
                move = _cuda.to_device if _cuda.is_device_array(p.data) else _cuda.to_host
                self.m[n], self.v[n] = move(self.m[n]), move(self.v[n])
            grad = p.grad if _cuda.is_device_array(p.grad) else np.ascontiguousarray(p.grad, dtype=np.float32)
            adamw_step(p.data, grad, self.m[n], self.v[n], lr=lr, beta1=self.betas[0], beta2=self.betas[1],
                       eps=self.eps, weight_decay=self.weight_decay if self.decay[n] else 0.0, step=self.t,
                       norm=norm if _cuda.is_device_array(p.data) else None)
        _gemm.weights_changed()  # the weights were written in place: packed copies of them are stale

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: the moments (copies) and the update count."""
        host = lambda a: _cuda.to_host(a) if _cuda.is_device_array(a) else a.copy()  # noqa: E731 (copies)
        return {"t": self.t, "m": {n: host(a) for n, a in self.m.items()}, "v": {n: host(a) for n, a in self.v.items()},
                "lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def load_state_dict(self, state: dict):
        for key in ("m", "v"):
            missing = set(self.m) - set(state[key])
            if missing:
                raise ValueError(f"state: {key} has no entry for {sorted(missing)[:3]} (a different model?)")
            for n in self.m:
                src = np.asarray(state[key][n], dtype=np.float32)
                if src.shape != self.m[n].shape:
                    raise ValueError(f"state: {key}[{n}] has shape {src.shape}, the parameter {self.m[n].shape}")
                dst = getattr(self, key)[n]
                if _cuda.is_device_array(dst):
                    dst.copy_to_device(np.ascontiguousarray(src))
                else:
                    dst[...] = src
        self.t = int(state["t"])
        self.lr = float(state["lr"])
        self.betas = tuple(float(b) for b in state["betas"])
        self.eps = float(state["eps"])
        self.weight_decay = float(state["weight_decay"])


class LinearWarmupDecay:
    """Learning rate of update `step` (0-based): linear warm-up from 0 to peak over the first `warmup_frac` of
    the steps, then linear decay to 0 at `total_steps` (the schedule of BERT and DistilBERT; the same numbers as
    transformers' get_linear_schedule_with_warmup, whose first update also has learning rate 0)."""

    def __init__(self, peak_lr: float, total_steps: int, warmup_frac: float = 0.05):
        if total_steps < 1:
            raise ValueError(f"total_steps: expected a positive int, got {total_steps}")
        if not 0.0 <= warmup_frac < 1.0:
            raise ValueError(f"warmup_frac: expected a number in [0, 1), got {warmup_frac}")
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = math.ceil(warmup_frac * total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * step / self.warmup_steps
        return self.peak_lr * max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps))


def global_grad_norm(params) -> float:
    """sqrt(sum over all parameters of sum(g^2)), accumulated in float64 (on the GPU: one sum_of_squares_device
    reduction over every gradient, one float back)."""
    from minidistil.kernels.adamw import sum_of_squares_device
    on_device = [p.grad for p in params if p.grad is not None and _cuda.is_device_array(p.grad)]
    # every device gradient in one reduction on the GPU: one number comes back (one wait per step, not one per
    # parameter)
    total = float(_cuda.to_host(sum_of_squares_device(on_device))[0]) if on_device else 0.0
    for p in params:
        if p.grad is not None and not _cuda.is_device_array(p.grad):
            g = np.asarray(p.grad, dtype=np.float64)
            total += float(np.dot(g.reshape(-1), g.reshape(-1)))
    return math.sqrt(total)


def clip_grad_norm(params, max_norm: float = 5.0, sync: bool = True):
    """Scale every gradient in place by min(1, max_norm / (norm + 1e-6)) (PyTorch's clip_grad_norm_ rule).
    Returns the norm BEFORE clipping (inf or nan when a gradient is not finite; then nothing is scaled).

    sync=False, when every gradient is a device array: the norm, the coefficient and the scaling stay on the GPU
    (minidistil.kernels.adamw.clip_coefficient_device) and the norm is returned as a (1,) float64 device array,
    not read: pass it to AdamW.step(norm=...), which skips the update on the device when it is not finite, and
    read it (float(_cuda.to_host(norm)[0])) when logging. With host gradients sync=False changes nothing: the
    float comes back as before (reading it costs nothing there)."""
    params = list(params)
    grads = [p.grad for p in params if p.grad is not None]
    if not sync and grads and all(_cuda.is_device_array(g) for g in grads):
        from minidistil.kernels.adamw import clip_coefficient_device, clip_scale_device_
        norm, coef = clip_coefficient_device(grads, max_norm)     # (1,) float64, (1,) float32, on the device
        for g in grads:
            clip_scale_device_(g, coef)                            # g *= coef where coef < 1
        return norm
    norm = global_grad_norm(params)
    if not math.isfinite(norm):
        return norm
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for p in params:
            if p.grad is not None:
                _ew.scale_(p.grad, coef)  # p.grad *= float32(coef), in place (a kernel on the GPU)
    return norm
