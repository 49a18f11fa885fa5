"""Where arrays live: "cpu" (numpy arrays) or "cuda" (numba.cuda device arrays, on a GPU or the simulator).

    model.to("cuda")                        parameters (and any gradients) move to GPU memory, once
    out = model(input_ids, attention_mask)  ids and mask are numpy arrays; the model copies them over once per
                                            forward and every layer's kernels use the device copies
    out.logits.numpy(), np.asarray(t)       copy a result back to the host only when asked; losses are floats
    print(describe())                       "device: cuda (NVIDIA H100 ...), GEMM: cublas (cupy)"

Every op of a model dispatches on the type of its input arrays (minidistil.kernels.*, `_cuda.is_device_array`), so
the same Python code runs on either device. numba.cuda is imported only by minidistil/kernels/_cuda.py, and only
when "cuda" is asked for: without a GPU (and without NUMBA_ENABLE_CUDASIM=1) it raises `_cuda.require_cuda`'s
RuntimeError, which says what to install or set.
"""
from __future__ import annotations

from minidistil.core.autograd import Tensor
from minidistil.kernels import _cuda

DEVICES = ("cpu", "cuda")


def check_device(device) -> str:
    """"cpu" or "cuda"; "cuda" also checks that a GPU (or the simulator) is there. Accepted as in transformers:
    None and -1 mean "cpu"; "cuda:0" and 0 (the GPU's index) mean "cuda" (minidistil uses one GPU)."""
    if isinstance(device, int) and not isinstance(device, bool):
        device = "cpu" if device == -1 else f"cuda:{device}"
    device = "cpu" if device is None else str(device).lower()
    if device == "cuda:0":
        device = "cuda"
    if device not in DEVICES:
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r} (also accepted: 'cuda:0' or 0 for the "
                         "GPU, -1 for the CPU; minidistil uses one GPU)")
    if device == "cuda":
        _cuda.require_cuda()  # a RuntimeError saying what is missing
    return device


def device_of(x) -> str:
    """"cuda" for a device array or a Tensor holding one, else "cpu" (a Module says it as `module.device`)."""
    if isinstance(x, Tensor):
        x = x.data
    return "cuda" if _cuda.is_device_array(x) else "cpu"


def move_array(a, device: str):
    """A numpy or device array on `device` (the same object when it is already there)."""
    device = check_device(device)
    if device == "cuda":
        return _cuda.to_device(a)  # C-contiguous copy of the bytes
    return _cuda.to_host(a)


def to_device(x, device: str):
    """Move a Tensor (in place: its data and gradient; returned) or an array (a moved copy returned) to `device`.
    A Module moves with `module.to(device)`."""
    if isinstance(x, Tensor):
        x.data = move_array(x.data, device)
        if x.grad is not None:
            x.grad = move_array(x.grad, device)
        return x
    return move_array(x, device)


def synchronize():
    """Wait for the GPU's queued kernels (for timing); nothing on the CPU."""
    if _cuda.available():
        _cuda.get_cuda().synchronize()


def describe(device: str = "cuda") -> str:
    """One line naming the device and the GEMM in use, e.g. for `minidistil bench --device cuda`."""
    if device == "cpu":
        return "device: cpu (numpy arrays, Numba CPU kernels, BLAS GEMM)"
    return _cuda.describe()
