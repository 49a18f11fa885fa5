"""Checks the two training loops (minidistil.train.distill, minidistil.train.finetune) make before they train: the
output is
apart from every input, and what a run is (inputs, student shape, settings), so that --resume continues only the
run its checkpoint came from (minidistil.train.run.Run.expect)."""
from __future__ import annotations

import os
from pathlib import Path

from minidistil.core.files import check_apart
from minidistil.train.run import digest

# settings that change what a run learns from and how: a resume must keep them. How long it runs (steps, time
# budget, stop_after), how often it checkpoints, where it runs and what it prints may change between sessions, and
# so may the learning rate and the clipping norm: a diverged run is told to continue with a lower --lr
DISTILL_SETTINGS = ("text_field", "held_out", "max_len", "batch_size", "grad_accum", "warmup", "weight_decay",
                    "weights", "mask_smoothing", "seed", "freeze_embeddings",
                    "teacher_int8", "random_words", "hidden_size", "num_heads", "intermediate_size", "width_loss",
                    "pca_texts", "pca_weighting")
FINETUNE_SETTINGS = ("task", "labels", "max_length", "stride", "epochs", "batch_size", "warmup", "weight_decay",
                     "seed", "alpha", "temperature", "limit", "held_out")


def _local(name) -> str | None:
    """The folder or file a name stands for (a path, or a checkpoint already in the weights folder); None for
    data in memory or a name that is not here (nothing is fetched: loading it later says what is wrong)."""
    if not isinstance(name, (str, os.PathLike)) or not str(name):
        return None
    if os.path.exists(name):
        return str(name)
    from minidistil.io.hub import local_path
    try:
        found = local_path(str(name))
    except (ValueError, OSError):
        return None
    return None if found is None else str(found)


def local_inputs(**inputs) -> dict[str, list[str]]:
    """{what: [paths]} of the inputs given as paths, lists of paths or names (None and data in memory left out)."""
    resolved = {}
    for what, value in inputs.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        resolved[what] = [p for p in map(_local, values) if p is not None]
    return resolved


def check_output(out, **inputs):
    """A ValueError when `out` (or its state folder OUT.training) is, holds or lies in one of the inputs
    ({what: path, list of paths or None}); names are resolved as the loaders resolve them."""
    resolved = local_inputs(**inputs)
    check_apart(out, resolved)
    check_apart(Path(os.path.realpath(out)).parent / (Path(os.path.realpath(out)).name + ".training"), resolved,
                flag="the training state of --out")


def _named(name, arrays) -> dict:
    return {"name": str(name), "digest": digest(arrays)}


def distill_identity(cfg, teacher_model, teacher_name: str, layers, seqs) -> dict:
    """What a distillation run is: the teacher's weights, the student's layers, the training sequences (corpus,
    tokenizer and max length together) and the settings that change the updates."""
    return {"teacher": _named(teacher_name, teacher_model.state_dict()), "student_layers": list(layers),
            "corpus": _named(cfg.corpus or "the default corpus", seqs),
            **{k: getattr(cfg, k) for k in DISTILL_SETTINGS}}


def finetune_identity(cfg, params: dict, names, train_feats: dict, val_feats: dict | None, teacher=None) -> dict:
    """What a fine-tuning run is: the starting weights (base model and new head), the label names, the encoded
    training and validation data, the teacher's weights and the settings that change the updates."""
    return {"model": _named(cfg.model, params), "label_names": names, "train": _named(cfg.train, train_feats),
            "validation": _named(cfg.validation, val_feats or {}),
            "teacher": _named(cfg.teacher, teacher.state_dict()) if teacher is not None else None,
            **{k: getattr(cfg, k) for k in FINETUNE_SETTINGS}}


def _labels_of(task: str, examples) -> set[str]:
    if task == "classification":
        return {e.label for e in examples}
    if task == "multilabel":
        return {x for e in examples for x in e.label}
    if task == "token":
        return {t for e in examples for t in e.tags}
    return set()


def check_labels(cfg, train: list, names: list[str] | None):
    """Before unknown labels are dropped: the label names are distinct, the training data has at least one of them,
    and token classification has a tag besides O (a ValueError saying which)."""
    if names is None:
        return
    seen = [n for i, n in enumerate(names) if n in names[:i]]
    if seen:
        raise ValueError(f"--labels: {seen[0]!r} is given twice ({','.join(names)}); each label once, in id order")
    present = _labels_of(cfg.task, train)
    if not present & set(names):
        raise ValueError(f"--labels {','.join(names)}: none of them is a label of the training data "
                         f"(its labels: {', '.join(sorted(present)[:10])})")
    if cfg.task == "token" and not (present & set(names)) - {"O"}:
        raise ValueError(f"train: every tag in {cfg.train} is O: token classification needs entity tags to learn")


def check_examples(cfg, train: list, val: list, validation_given: bool):
    """After unknown labels are dropped: examples are left to train on, and a validation file given holds some."""
    if not train:
        raise ValueError(f"train: no example of {cfg.train} is left once those with unknown labels are dropped")
    if validation_given and not val:
        raise ValueError(f"validation: no usable examples in {cfg.validation} (see the rows skipped above)")
