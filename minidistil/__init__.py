"""minidistil: DistilBERT built from scratch in NumPy and Numba.

The readable mainline lives in this package; the hand-written kernels in `minidistil.kernels`.

    from minidistil import DistilBertConfig, DistilBertForMaskedLM, no_grad
    model = DistilBertForMaskedLM.from_config(DistilBertConfig(n_layers=2), seed=0)
    with no_grad():
        logits = model(input_ids, attention_mask=mask).logits      # a Tensor; np.asarray(logits) for the array

The names below are imported on first use (PEP 562), so `import minidistil.kernels.gelu` or
`import minidistil.io.tokenizer` does not pull in the models and every kernel.
"""
__version__ = "0.1.0"

# Before anything imports numpy: OpenBLAS's AVX-512 kernels where the CPU has them (MINIDISTIL_OPENBLAS_CORETYPE=0
# turns it off) and thread-waiting settings so that BLAS and Numba threads do not fight (MINIDISTIL_THREAD_ENV=0
# turns them off); see minidistil/core/_runtime.py. Nothing the user set is overridden.
from minidistil.core import _runtime

_runtime.configure()

# the plug-ins that lower layers find by name (minidistil/core/plugins.py): the checkpoint reader behind
# Module.from_pretrained, and the int8 checkpoint format behind from_pretrained / save_pretrained
from minidistil.core import plugins as _plugins  # noqa: E402

_plugins.register_checkpoint_io("minidistil.io.loading")
_plugins.register_format("minidistil_int8", "minidistil.io.quantization")

import importlib  # noqa: E402

_EXPORTS = {
    "minidistil.core.autograd": ["Tensor", "no_grad", "enable_grad", "is_grad_enabled"],
    "minidistil.core.config": ["BertConfig", "DistilBertConfig", "config_from_dict", "config_from_json_file"],
    "minidistil.core.nn": ["Module", "Parameter", "PreTrainedModel"],
    "minidistil.models.bert": ["BertModel", "BertForMaskedLM", "BertForSequenceClassification",
                        "BertForTokenClassification", "BertForQuestionAnswering", "BertForMultipleChoice"],
    "minidistil.models.distilbert": ["DistilBertModel", "DistilBertForMaskedLM", "DistilBertForSequenceClassification",
                              "DistilBertForTokenClassification", "DistilBertForQuestionAnswering",
                              "DistilBertForMultipleChoice"],
    # checkpoint I/O, tokenizer, pipelines
    "minidistil.io.loading": ["from_pretrained", "save_pretrained"],
    "minidistil.io.tokenizer": ["Tokenizer"],
    "minidistil.apps.pipelines": ["pipeline", "SentenceEncoder"],
    # int8 inference
    "minidistil.io.quantization": ["quantize"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
MODEL_ARCHITECTURES = _EXPORTS["minidistil.models.bert"] + _EXPORTS["minidistil.models.distilbert"]

__all__ = ["__version__", "MODEL_CLASSES", *_WHERE]


def __getattr__(name):
    if name == "MODEL_CLASSES":
        # architecture name (config.json "architectures") -> class, for the checkpoint loader
        value = {arch: __getattr__(arch) for arch in MODEL_ARCHITECTURES}
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    else:
        raise AttributeError(f"module 'minidistil' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
