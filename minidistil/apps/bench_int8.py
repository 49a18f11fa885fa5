"""The int8 rows of `minidistil bench`: minidistil's quantised model beside ONNX Runtime's int8 model.

    minidistil bench --scenarios fwd_T32,fwd_T128,fwd_T512        # every framework, the int8 rows included
    minidistil bench --frameworks minidistil,onnxruntime,minidistil-int8,onnxruntime-int8 --scenarios fwd_T128

    minidistil-int8    minidistil.quantize() of the float32 model of the same run (the same weights as torch's):
                       Linear layers int8 (VNNI where the CPU has it), word embeddings int8
    onnxruntime-int8   onnxruntime.quantization.quantize_dynamic(QuantType.QInt8) of the run's float32 ONNX export,
                       with its defaults (per-tensor weight scales, uint8 activations quantised at run time), run
                       with the same session options as the float32 ONNX model
Forward scenarios only (int8 is inference only), on the CPU. The file size of each model (the safetensors file
minidistil writes, the .onnx file ONNX Runtime reads) is reported beside its time.
"""
from __future__ import annotations

import os

INT8_FRAMEWORKS = ("minidistil-int8", "onnxruntime-int8")


def int8_onnx_path(onnx_path: str) -> str:
    """Where the int8 ONNX model of a float32 export lives (beside it)."""
    root, ext = os.path.splitext(onnx_path)
    return f"{root}_int8{ext}"


def quantize_onnx(onnx_path: str) -> str:
    """onnxruntime's dynamic int8 quantisation of the float32 model at `onnx_path` (once); returns its path."""
    out = int8_onnx_path(onnx_path)
    if not os.path.exists(out):
        import logging
        import warnings

        from onnxruntime.quantization import QuantType, quantize_dynamic
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice, on every call
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(onnx_path, out, weight_type=QuantType.QInt8)
        finally:
            logging.getLogger().setLevel(level)
    return out


def quantized_models(float_models):
    """(quantised student, None) from the float32 (model, teacher) pair of a forward scenario."""
    from minidistil.io.quantization import quantize
    return quantize(float_models[0]), None


def file_mb(fw: str, model=None, onnx_path: str | None = None, folder: str | None = None) -> float | None:
    """The model's file size in MB: for minidistil (float32 or int8) the model.safetensors save_pretrained writes
    into `folder`; for ONNX Runtime the .onnx file (int8: its quantised sibling)."""
    if fw.startswith("onnxruntime"):
        path = int8_onnx_path(onnx_path) if fw == "onnxruntime-int8" else onnx_path
        return os.path.getsize(path) / 1e6 if path and os.path.exists(path) else None
    if model is None or folder is None:
        return None
    from minidistil.io.loading import save_pretrained
    path = os.path.join(save_pretrained(model, folder), "model.safetensors")
    size = os.path.getsize(path) / 1e6
    os.unlink(path)
    return size


def available(out: dict, device: str) -> dict:
    """The bench's version table with the int8 frameworks added (CPU only)."""
    for fw, base in (("minidistil-int8", "minidistil"), ("onnxruntime-int8", "onnxruntime")):
        out[fw] = out[base]
        if device != "cpu" and not out[fw].startswith("missing"):
            out[fw] = "missing: the int8 rows run on the CPU only"
    if not out["onnxruntime-int8"].startswith("missing"):
        try:
            import onnxruntime.quantization  # noqa: F401
        except ImportError as e:
            out["onnxruntime-int8"] = f"missing: onnxruntime.quantization ({e})"
    return out
