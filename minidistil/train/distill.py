"""Distil a small DistilBERT student from a BERT / DistilBERT teacher (Sanh et al., 2019).

    from minidistil.train.distill import distill
    report = distill(teacher="all-MiniLM-L6-v2", out_dir="student", time_budget=15 * 60)

1. The student (`make_student`): with an MLM head DistilBERT's, the teacher's width and half its depth; from a
   sentence encoder two thirds of its width and depth (`default_student_shape`). Word and position embeddings and the
   embedding LayerNorm are copied; each student layer is a copy of one teacher layer (12 -> 6 takes teacher layers
   0, 2, 4, 7, 9, 11 as DistilBERT did; 6 -> 3 takes 0, 2, 4, or 0, 3, 5 for a sentence encoder, whose student
   must end on the layer its embeddings come from, and 6 -> 4 takes 0, 2, 3, 5; any map can be given). The pooler
   and the token-type
   table are dropped: a BERT teacher adds token-type row 0 to every token, so that row is folded into the student's
   position table and the student's embedding output equals the teacher's at initialisation. The student is a
   DistilBertForMaskedLM when the teacher has an MLM head (its head is copied too), else a DistilBertModel.
   With `hidden_size` below the teacher's the student is narrower too: every copied weight is projected onto the
   teacher's leading principal directions of its hidden states, U (C x H), and the hidden-state and pooled loss
   terms compare the student with the teacher's states projected by U ("pca") or map the student's to the
   teacher's width by a Linear trained with it and never saved ("learned"); see minidistil.train.narrow.

2. The loss, per batch (padding never counts):
       alpha_ce  * T^2 KL(softmax(teacher / T) || softmax(student / T))    MLM logits, every real token
     + alpha_mlm * cross-entropy(student, original token)                  masked tokens only
     + alpha_cos * (1 - cos(student h, teacher h))                          last hidden states, every real token
     + alpha_mse * mean (student h - teacher h)^2                           (optional)
     + alpha_pool_cos * (1 - cos(pool(student h), pool(teacher h)))         mean-pooled sentence embeddings
     + alpha_pool_mse * mean (pool(student h) - pool(teacher h))^2
     + alpha_layers * mean_l (1 - cos(student h_l, teacher h_m(l)))          the earlier hidden states (below)
   With an MLM head the defaults are DistilBERT's (5, 2, 1, 0, 0, 0; T = 2) and the inputs are masked
   (minidistil.train.masking, redrawn every batch). Both models compute their MLM logits only at the rows these
   two terms read (`logit_rows`: every real token, or only the masked ones when alpha_ce is 0 or kl_masked_only),
   not at all B*T positions: at every position the logits, their gradient, the teacher's logits and the KL's
   gradient would each be a (B*T, V) array. A teacher WITHOUT an MLM head (e.g. all-MiniLM-L6-v2, a sentence
   encoder) has no logits to match: the student learns from the hidden-state terms only (defaults 0, 0, 1, 0, 1, 1)
   on unmasked text, 64-token sequences (its sentences are short), and an optional term on the structure of the
   in-batch similarities of the pooled embeddings:
     + alpha_sim * tau^2 mean_i KL(softmax(cos(t_i, t_j) / tau) || softmax(cos(s_i, s_j) / tau))  over j != i
   The layer-wise term matches the hidden states before the last: the student's embedding output with the
   teacher's, and the output of student layer l (not the last) with that of the teacher layer it was copied from
   (layer_map[l]), every real token, the mean over those states (a 3-layer student: 3 pairs). Through the same
   width maps as the other hidden-state terms, so it works for a narrower student too.
   The teacher runs under no_grad, in eval mode; with `teacher_int8` (the default on a CPU with AVX-512 VNNI)
   its outputs (the targets) come from an int8 copy of it (minidistil.io.quantization, the Linear layers on the
   VNNI kernel), a faster forward, so more updates fit in a time budget; the student is still copied from the
   float32 weights, and the final comparison is with the float32 teacher. Options measured for
   narrow students and left off by default (the README gives the runs): `freeze_embeddings` (the word embeddings
   kept as copied) and `random_words` (a share of each batch replaced by random whole words of the vocabulary,
   data.with_random_words).

3. The loop: AdamW (minidistil.core.optim) with warm-up and linear decay, gradient clipping at norm 5, gradient
   accumulation. With `steps` the schedule has that many updates. With a time budget instead, the number of
   updates is re-planned after every update from the time left and the recent speed (minidistil.train.run.BudgetPlan),
   so the decay ends when the budget does; the budget counts the updates and checkpoints, while loading, the
   corpus and the evaluation come on top (the report gives each time, and says when the schedule was cut).
   An atomic checkpoint every `checkpoint_every` steps and at the end (minidistil.train.run, the last two kept);
   `resume=True` continues from it with the SAME loss sequence an uninterrupted run has (every random choice of
   step s, masking and dropout, comes from generators seeded by (seed, s), and the data position is saved).
   A non-finite loss or gradient norm, or exploded parameters, stop the run (minidistil.train.run.Diverged) with a
   message naming the step, keeping the last good checkpoint. On a GPU the loss, terms and norm are read only when
   the loop logs (every READ_EVERY steps, before a checkpoint, at the end), so the stop comes at that read; the
   non-finite step's update was skipped on the device, so no parameter took its inf or NaN.

4. The output folders: OUT holds the student (config.json, model.safetensors, tokenizer files) that
   `transformers` loads (and, for a sentence-transformers teacher, the files that make it a sentence-transformers
   model), metrics.jsonl (one line per step), loss_curve.png and report.json; the training state (checkpoints:
   parameters, AdamW's moments, the data position) lives apart in OUT.training, so that copying OUT ships the model
   only. A folder that already holds a run is refused unless `resume` or `overwrite` is given.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from minidistil.train import data
from minidistil.train import evaluation as E
from minidistil.core import functional as F
from minidistil.core import losses as L
from minidistil.train import parallel
from minidistil.core.autograd import Tensor, no_grad
from minidistil.core.argtypes import COUNT, NON_NEGATIVE, POSITIVE, POSITIVE_INT, SHARE, bounded, check_fields
from minidistil.core.config import BertConfig, DistilBertConfig
from minidistil.core.device import check_device
from minidistil.core.nn import to_device_of
from minidistil.kernels import _cuda
from minidistil.kernels.int8 import cpu_kernel as int8_kernel
from minidistil.train.masking import IGNORE_INDEX, mask_tokens, selection_weights
from minidistil.train.narrow import projected_agreement
from minidistil.core.optim import AdamW, LinearWarmupDecay
from minidistil.train.run import (READ_EVERY, BudgetPlan, Run, RunError, RunState, StepRows, models_to, open_run,
                                  plot_curves, resume, schedule_complete,
                  schedule_summary, schedule_text, step_seed, update)

DEFAULT_TEACHER = "all-MiniLM-L6-v2"
DEFAULT_MAPS = {(12, 6): [0, 2, 4, 7, 9, 11], (6, 3): [0, 2, 4]}
# A sentence encoder's embeddings live in its LAST layer's output space: a student of one ends on that layer.
# all-MiniLM-L6-v2, before any training, dev-set Spearman kept: 0, 2, 4 -> 94.9%; 0, 3, 5 -> 99.8%.
ENCODER_MAPS = {(6, 3): [0, 3, 5]}

# BERT layer -> DistilBERT layer parameter names (weight and bias of each)
LAYER_MAP = {
    "attention.self.query": "attention.q_lin",
    "attention.self.key": "attention.k_lin",
    "attention.self.value": "attention.v_lin",
    "attention.output.dense": "attention.out_lin",
    "attention.output.LayerNorm": "sa_layer_norm",
    "intermediate.dense": "ffn.lin1",
    "output.dense": "ffn.lin2",
    "output.LayerNorm": "output_layer_norm",
}
MLM_HEAD_MAP = {
    "cls.predictions.transform.dense": "vocab_transform",
    "cls.predictions.transform.LayerNorm": "vocab_layer_norm",
}


# ----------------------------------------------------------------------------------------------------------------
# 1. the student


def default_layer_map(n_teacher: int, n_student: int, mlm: bool = True) -> list[int]:
    """DistilBERT's choices for 12 -> 6 and 6 -> 3 (with an MLM head; a sentence encoder's 6 -> 3 takes 0, 3, 5);
    otherwise layers evenly spaced from the first to the last."""
    if not 1 <= n_student <= n_teacher:
        raise ValueError(f"student layers: expected 1 .. {n_teacher} (the teacher's depth), got {n_student}")
    maps = DEFAULT_MAPS if mlm else {**DEFAULT_MAPS, **ENCODER_MAPS}
    if (n_teacher, n_student) in maps:
        return list(maps[(n_teacher, n_student)])
    return [int(i) for i in np.round(np.linspace(0, n_teacher - 1, n_student))]


def default_student_shape(C: int, heads: int, n_layers: int, mlm: bool) -> tuple[int, int]:
    """(hidden size, layers) of the default student. A teacher with an MLM head: DistilBERT's, its width and half
    its depth. A sentence encoder: two thirds of its heads (whole heads of its head width) and two thirds of its
    depth, rounded up: all-MiniLM-L6-v2 (384 wide, 12 heads, 6 layers) gives 256 x 4, the shape whose 15-minute
    run kept the most of the teacher per parameter of those the README reports."""
    if mlm:
        return C, max(1, n_layers // 2)
    return (C // heads) * max(1, (2 * heads) // 3), max(1, -(-2 * n_layers // 3))


def has_mlm_head(model) -> bool:
    return type(model).__name__ in ("BertForMaskedLM", "DistilBertForMaskedLM")


def student_config(tcfg, n_layers: int, mlm: bool) -> DistilBertConfig:
    if isinstance(tcfg, DistilBertConfig):
        return tcfg.replace(n_layers=n_layers, architectures=None)
    if not isinstance(tcfg, BertConfig):
        raise ValueError(f"teacher: expected a BERT or DistilBERT model, got a {type(tcfg).__name__} config")
    if abs(tcfg.layer_norm_eps - DistilBertConfig.layer_norm_eps) > 0:
        raise ValueError(f"teacher: layer_norm_eps {tcfg.layer_norm_eps} differs from DistilBERT's fixed 1e-12: "
                         "the student could not reproduce the teacher's layers")
    return DistilBertConfig(vocab_size=tcfg.vocab_size, max_position_embeddings=tcfg.max_position_embeddings,
                            n_layers=n_layers, n_heads=tcfg.num_attention_heads, dim=tcfg.hidden_size,
                            hidden_dim=tcfg.intermediate_size, dropout=tcfg.hidden_dropout_prob,
                            attention_dropout=tcfg.attention_probs_dropout_prob,
                            initializer_range=tcfg.initializer_range, pad_token_id=tcfg.pad_token_id,
                            tie_word_embeddings=tcfg.tie_word_embeddings)


def student_state(teacher, layers: Sequence[int]) -> tuple[DistilBertConfig, dict[str, np.ndarray], bool]:
    """(student config, student state dict in DistilBERT names, mlm?) copied from the teacher."""
    mlm = has_mlm_head(teacher)
    tcfg = teacher.config
    t = {n: np.array(a, dtype=np.float32) for n, a in teacher.state_dict().items()}  # copies
    n_teacher = tcfg.num_hidden_layers
    if any(not 0 <= i < n_teacher for i in layers):
        raise ValueError(f"layers: teacher layer indices must lie in [0, {n_teacher}), got {list(layers)}")
    cfg = student_config(tcfg, len(layers), mlm)
    s: dict[str, np.ndarray] = {}
    base = "distilbert." if mlm else ""
    if isinstance(tcfg, DistilBertConfig):
        tb = "distilbert." if mlm else ""
        for n, a in t.items():
            if n.startswith(tb + "transformer.layer."):
                continue
            s[base + n[len(tb):] if n.startswith(tb) else n] = a
        for i, j in enumerate(layers):
            prefix = f"{tb}transformer.layer.{j}."
            for n, a in t.items():
                if n.startswith(prefix):
                    s[f"{base}transformer.layer.{i}.{n[len(prefix):]}"] = a
        return cfg, s, mlm
    tb = "bert." if (mlm or any(n.startswith("bert.") for n in t)) else ""
    emb = tb + "embeddings."
    s[base + "embeddings.word_embeddings.weight"] = t[emb + "word_embeddings.weight"]
    # x = LN(word + type[0] + pos): fold type row 0 into the position table, which the student adds to every token
    s[base + "embeddings.position_embeddings.weight"] = (t[emb + "position_embeddings.weight"]
                                                        + t[emb + "token_type_embeddings.weight"][0][None, :])
    s[base + "embeddings.LayerNorm.weight"] = t[emb + "LayerNorm.weight"]
    s[base + "embeddings.LayerNorm.bias"] = t[emb + "LayerNorm.bias"]
    for i, j in enumerate(layers):
        for bert_name, distil_name in LAYER_MAP.items():
            for kind in ("weight", "bias"):
                s[f"{base}transformer.layer.{i}.{distil_name}.{kind}"] = t[f"{tb}encoder.layer.{j}.{bert_name}.{kind}"]
    if mlm:
        for bert_name, distil_name in MLM_HEAD_MAP.items():
            for kind in ("weight", "bias"):
                s[f"{distil_name}.{kind}"] = t[f"{bert_name}.{kind}"]
        s["vocab_projector.bias"] = t["cls.predictions.bias"]
    return cfg, s, mlm


def make_student(teacher, layers: Sequence[int] | None = None, n_layers: int | None = None,
                 basis: np.ndarray | None = None, num_heads: int | None = None, intermediate_size: int | None = None):
    """A DistilBERT student initialised from the teacher (see the module docstring). Eval mode.

    basis: an orthonormal (C, H) basis of the teacher's hidden space (minidistil.train.narrow.principal_basis): the
    student is H wide, every copied weight projected onto it and the heads and FFN neurons cut as
    minidistil.train.narrow says (num_heads, intermediate_size: default the teacher's head width and FFN ratio)."""
    from minidistil.models.distilbert import DistilBertForMaskedLM, DistilBertModel
    n_teacher = teacher.config.num_hidden_layers
    if layers is None:
        layers = default_layer_map(n_teacher, n_layers or max(1, n_teacher // 2), mlm=has_mlm_head(teacher))
    cfg, state, mlm = student_state(teacher, layers)
    if basis is not None or num_heads is not None or intermediate_size is not None:
        from minidistil.train.narrow import project_state, student_shape
        if cfg.sinusoidal_pos_embds:
            raise ValueError("teacher: a fixed sinusoidal position table cannot be projected to a narrower width")
        U = np.eye(cfg.dim) if basis is None else np.asarray(basis)
        if U.ndim != 2 or U.shape[0] != cfg.dim:
            raise ValueError(f"basis: expected ({cfg.dim}, H), got {U.shape}")
        H, heads, F = student_shape(cfg.dim, cfg.n_heads, cfg.hidden_dim, U.shape[1], num_heads, intermediate_size)
        state = project_state(state, cfg.dim, cfg.n_heads, U, heads, F, prefix="distilbert." if mlm else "")
        cfg = cfg.replace(dim=H, n_heads=heads, hidden_dim=F)
    cls = DistilBertForMaskedLM if mlm else DistilBertModel
    student = cls(cfg)
    student.load_state_dict(state, strict=True)
    return student.eval()


# ----------------------------------------------------------------------------------------------------------------
# 2. the loss


@dataclass
class LossWeights:
    alpha_ce: float = 5.0        # KL between softened MLM distributions (x T^2)
    alpha_mlm: float = 2.0       # cross-entropy on the masked tokens
    alpha_cos: float = 1.0       # 1 - cos between last hidden states
    alpha_mse: float = 0.0       # MSE between last hidden states
    alpha_pool_cos: float = 0.0  # 1 - cos between mean-pooled embeddings
    alpha_pool_mse: float = 0.0  # MSE between mean-pooled embeddings
    alpha_sim: float = 0.0       # KL between the in-batch similarity rows of the pooled embeddings (x tau^2)
    alpha_layers: float = 0.0    # 1 - cos between the earlier hidden states and the teacher's (layer_map's)
    temperature: float = 2.0
    sim_temperature: float = 0.05  # tau of the similarity term (cosines lie in [-1, 1])
    kl_masked_only: bool = False  # KL over the masked positions only (DistilBERT: every real token)

    @classmethod
    def defaults(cls, mlm: bool) -> LossWeights:
        if mlm:
            return cls()
        return cls(alpha_ce=0.0, alpha_mlm=0.0, alpha_cos=1.0, alpha_mse=0.0, alpha_pool_cos=1.0, alpha_pool_mse=1.0)


def logit_rows(labels, attention_mask, w: LossWeights) -> np.ndarray:
    """(M,) int64, ascending: the flat positions b * T + t whose MLM logits the active terms read, for
    forward_outputs(..., logits_rows=) and distillation_loss(..., logits_rows=): the masked tokens
    (labels != -100) for alpha_mlm, every real token (attention_mask != 0) for alpha_ce, the masked ones only with
    kl_masked_only; padding never (a label on padding, which masking never makes, does not count here, where the
    loss over every position would count it). Empty when neither term is on (no logits at all). One row that no
    term counts when the terms are on but select nothing: the head never runs on an empty batch, and the terms
    are then 0 with zero gradient, as they are over every position."""
    if not (w.alpha_ce or w.alpha_mlm):
        return np.zeros(0, dtype=np.int64)
    if labels is None and (w.alpha_mlm or w.kl_masked_only):
        raise ValueError("labels: alpha_mlm and kl_masked_only need the MLM labels (-100 where nothing is masked)")
    real = np.asarray(attention_mask).reshape(-1) != 0                          # (B*T,)
    masked = None if labels is None else (np.asarray(labels).reshape(-1) != IGNORE_INDEX) & real
    need = np.zeros(real.shape, dtype=bool)
    if w.alpha_mlm:
        need |= masked
    if w.alpha_ce:
        need |= masked if w.kl_masked_only else real
    rows = np.flatnonzero(need).astype(np.int64)                                 # (M,)
    return rows if rows.size else np.zeros(1, dtype=np.int64)


def forward_outputs(model, input_ids, attention_mask, logits_rows=None, every_layer: bool = False
                    ) -> tuple[Tensor | None, Tensor | tuple[Tensor, ...]]:
    """(MLM logits or None, last hidden states (B, T, C)) of a BERT / DistilBERT model. The logits are (B, T, V),
    every position, by default; with logits_rows (from logit_rows, on the host or already on the model's device)
    they are (M, V) at those rows only, and None when it is empty. every_layer: the second item is the tuple of
    every hidden state instead, (B, T, C) each, the embedding output first and the last hidden states last."""
    if has_mlm_head(model) and (logits_rows is None or tuple(logits_rows.shape)[0]):
        out = model(input_ids, attention_mask, output_hidden_states=True, logits_rows=logits_rows)
        return out.logits, (out.hidden_states if every_layer else out.hidden_states[-1])
    out = encoder_of(model)(input_ids, attention_mask, output_hidden_states=every_layer)
    return None, (out.hidden_states if every_layer else out.last_hidden_state)


def encoder_of(model):
    """The encoder (embeddings and layers) of a BERT / DistilBERT model, with or without an MLM head."""
    return getattr(model, model.base_model_prefix) if has_mlm_head(model) else model


def word_embeddings(model):
    """The word-embedding matrix (V, C) Parameter of a BERT / DistilBERT model, with or without a head."""
    return encoder_of(model).embeddings.word_embeddings.weight


def layer_pairs(layers: Sequence[int]) -> list[tuple[int, int]]:
    """(student, teacher) indices into the two models' hidden_states tuples for the layer-wise term: the embedding
    outputs (0, 0), then student layer l's output (l + 1) with that of the teacher layer it copies
    (layers[l] + 1), for every student layer but the last (the last is the alpha_cos term's)."""
    return [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(layers[:-1])]


def _teacher_array(t):
    """The teacher's output as a C-contiguous float32 array, left where it is (numpy, or numba.cuda device)."""
    a = t.data if isinstance(t, Tensor) else t
    return a if _cuda.is_device_array(a) else np.ascontiguousarray(a, dtype=np.float32)


def distillation_loss(s_logits: Tensor | None, t_logits, s_hidden: Tensor, t_hidden, labels: np.ndarray | None,
                      attention_mask: np.ndarray, w: LossWeights, scale: dict[str, float] | None = None,
                      logits_rows: np.ndarray | None = None) -> tuple[Tensor, dict[str, float]]:
    """The weighted sum of the terms (a scalar Tensor) and each term's value (unweighted floats). `scale`: a
    factor per term on top of its alpha (an MPI rank's share of the global count, see minidistil.train.parallel).
    logits_rows: None when the logits are (B, T, V); the host array of logit_rows when they are (M, V) at those
    rows (the same values: each term reads its own rows). On a GPU, reading the terms as floats copies each back:
    distillation_loss_terms leaves them where they are."""
    total, terms = distillation_loss_terms(s_logits, t_logits, s_hidden, t_hidden, labels, attention_mask, w, scale,
                                           logits_rows)
    return total, {name: float(t.item()) for name, t in terms.items()}


def distillation_loss_terms(s_logits: Tensor | None, t_logits, s_hidden: Tensor, t_hidden, labels,
                            attention_mask: np.ndarray, w: LossWeights, scale: dict[str, float] | None = None,
                            logits_rows: np.ndarray | None = None, s_layers: Sequence[Tensor] = (),
                            t_layers: Sequence = ()) -> tuple[Tensor, dict[str, Tensor]]:
    """distillation_loss with each term left a scalar Tensor on its device (nothing is read back). s_layers,
    t_layers: the earlier hidden states of the layer-wise term, paired (layer_pairs), at one width, (B, T, C)
    each."""
    B, T, C = s_hidden.shape
    rows = np.ascontiguousarray(np.asarray(attention_mask).reshape(-1) != 0)    # (B*T,) real tokens
    t_hidden = _teacher_array(t_hidden)                                         # stays on the GPU when there
    terms: dict[str, Tensor] = {}
    if (w.alpha_ce or w.alpha_mlm) and s_logits is None:
        raise ValueError("alpha_ce / alpha_mlm: the MLM terms need a teacher and student with an MLM head")
    on_rows = logits_rows is not None and (w.alpha_ce or w.alpha_mlm)          # logits (M, V) at logits_rows
    if on_rows:
        at = np.asarray(logits_rows)                                            # (M,) flat positions
        if tuple(s_logits.shape) != (at.size, s_logits.shape[-1]):
            raise ValueError(f"logits_rows: {at.size} rows, but the student's logits have shape {s_logits.shape}")
        labels_at = None if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)[at]   # (M,)
        real_at = rows[at]                                                      # (M,) real tokens among them
    if _cuda.is_device_array(s_hidden.data) and ((w.alpha_ce and not on_rows) or w.alpha_cos or w.alpha_mse
                                                 or w.alpha_layers):
        rows = _cuda.to_device(rows)  # copied over once for the terms that read it
    if w.alpha_ce:
        V = s_logits.shape[-1]
        if on_rows:  # the KL's rows among the M: all of logit_rows' (no mask to copy) but its one uncounted row
            kl_rows = (labels_at != IGNORE_INDEX) if w.kl_masked_only else real_at     # (M,) host bool
            terms["ce"] = L.distill_kl(s_logits, _teacher_array(t_logits), w.temperature,
                                       None if kl_rows.all() else np.ascontiguousarray(kl_rows))
        else:
            kl_rows = (rows if not w.kl_masked_only
                       else np.ascontiguousarray(np.asarray(labels).reshape(-1) != IGNORE_INDEX))
            terms["ce"] = L.distill_kl(s_logits.reshape(B * T, V), _teacher_array(t_logits).reshape(B * T, V),
                                       w.temperature, kl_rows)
    if w.alpha_mlm:
        V = s_logits.shape[-1]
        terms["mlm"] = (L.cross_entropy(s_logits, labels_at) if on_rows else
                        L.cross_entropy(s_logits.reshape(B * T, V), np.asarray(labels, dtype=np.int64).reshape(-1)))
    sh = s_hidden.reshape(B * T, C)
    th = t_hidden.reshape(B * T, C)
    if w.alpha_cos:
        terms["cos"] = L.cosine_embedding_loss(sh, th, rows)
    if w.alpha_mse:
        terms["mse"] = L.mse(sh, th, rows)
    if w.alpha_layers:
        if not s_layers or len(s_layers) != len(t_layers):
            raise ValueError(f"alpha_layers: expected pairs of earlier hidden states, got {len(s_layers)} student "
                             f"and {len(t_layers)} teacher states")
        parts = [L.cosine_embedding_loss(s.reshape(B * T, s.shape[-1]),
                                         _teacher_array(t).reshape(B * T, s.shape[-1]), rows)
                 for s, t in zip(s_layers, t_layers, strict=True)]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        terms["layers"] = total * (1.0 / len(parts))                             # the mean over the pairs
    if w.alpha_pool_cos or w.alpha_pool_mse or w.alpha_sim:
        sp = F.mean_pool(s_hidden, attention_mask)                               # (B, C)
        tp = (F.mean_pool(Tensor(t_hidden), attention_mask).data if _cuda.is_device_array(t_hidden)  # (B, C)
              else np.ascontiguousarray(F.mean_pool(t_hidden, attention_mask)))
        if w.alpha_pool_cos:
            terms["pool_cos"] = L.cosine_embedding_loss(sp, tp)
        if w.alpha_pool_mse:
            terms["pool_mse"] = L.mse(sp, tp)
        if w.alpha_sim:
            terms["sim"] = L.similarity_kl(sp, tp, w.sim_temperature)
    alphas = {"ce": w.alpha_ce, "mlm": w.alpha_mlm, "cos": w.alpha_cos, "mse": w.alpha_mse,
              "pool_cos": w.alpha_pool_cos, "pool_mse": w.alpha_pool_mse, "sim": w.alpha_sim,
              "layers": w.alpha_layers}
    if not terms:
        raise ValueError("loss weights: every alpha is 0, nothing to learn")
    total = None
    for name, t in terms.items():
        part = t * (float(alphas[name]) * (scale[name] if scale else 1.0))
        total = part if total is None else total + part
    return total, terms


# ----------------------------------------------------------------------------------------------------------------
# 3. the run


@dataclass
class DistillConfig:
    teacher: str = DEFAULT_TEACHER     # a checkpoint folder or a name minidistil.io.loading.resolve knows
    out_dir: str = "student"
    student_layers: int | None = None  # None: default_student_shape's (half the depth with an MLM head)
    layer_map: list[int] | None = None  # teacher layer copied into each student layer (overrides student_layers)
    hidden_size: int | None = None     # student width H; None: default_student_shape's (the teacher's with an
    #                                    MLM head, two thirds of a sentence encoder's). Narrower: train.narrow
    num_heads: int | None = None       # None: H / the teacher's head width
    intermediate_size: int | None = None  # FFN width; None: the teacher's ratio to the hidden size
    width_loss: str = "pca"            # a narrow student's hidden/pooled terms: "pca" (teacher states x U) or
    #                                    "learned" (student states through a Linear H -> C trained with it, not saved)
    pca_texts: int = 256               # corpus sequences whose teacher hidden states give the basis U
    pca_weighting: str = "all"         # which hidden states give U and how they weigh (narrow.hidden_moment)
    freeze_embeddings: bool = False    # keep the word embeddings as copied (projected): no gradient, no update
    teacher_int8: bool | None = None   # the training targets from an int8 copy of the teacher (CPU only);
    #                                    None: where the CPU has the VNNI int8 kernel and the run is on the CPU
    random_words: float = 0.0          # share of each batch's sequences replaced by random vocabulary words
    corpus: list[str] | None = None    # files / folders / .jsonl; None: data.default_corpus() (general English)
    text_field: str = "text"
    held_out: float = 0.02             # share of documents kept for evaluation
    max_len: int | None = None         # tokens per sequence; None: 128 with an MLM head, 64 for a sentence encoder
    batch_size: int = 16
    grad_accum: int = 1
    steps: int | None = None           # total updates; None: as many as fit in time_budget
    time_budget: float = 15 * 60.0     # seconds of training (when steps is None)
    lr: float | None = None            # peak learning rate; None: 5e-4, or 1e-3 for a student narrower than
    #                                    its teacher (NARROW_LR: it starts further from the teacher)
    warmup: float = 0.05
    weight_decay: float = 0.01
    max_grad_norm: float = 5.0
    weights: LossWeights | None = None  # None: LossWeights.defaults(teacher has an MLM head)
    mask_smoothing: float = 0.7
    seed: int = 0
    checkpoint_every: int = 200        # steps between checkpoints (0: at the end only)
    resume: bool = False               # continue the run in out_dir (its state in out_dir.training)
    overwrite: bool = False            # start again in a folder that holds a run (its checkpoints and logs go)
    eval_texts: int = 512              # held-out texts for the label-free measures (mean cosine, similarity rho)
    progress: bool = True
    evaluate: bool = True
    device: str = "cpu"                # "cuda": teacher, student, gradients and AdamW state in GPU memory


# the range of each numeric setting, checked at parse time on the command line and when distill() starts
FIELD_TYPES = {"student_layers": POSITIVE_INT, "held_out": SHARE, "max_len": bounded(int, 10),
               "batch_size": POSITIVE_INT, "grad_accum": POSITIVE_INT, "steps": POSITIVE_INT, "time_budget": POSITIVE,
               "lr": POSITIVE, "warmup": SHARE, "weight_decay": NON_NEGATIVE, "max_grad_norm": POSITIVE,
               "mask_smoothing": NON_NEGATIVE, "seed": COUNT, "checkpoint_every": COUNT, "eval_texts": POSITIVE_INT,
               "hidden_size": POSITIVE_INT, "num_heads": POSITIVE_INT, "intermediate_size": POSITIVE_INT,
               "pca_texts": POSITIVE_INT, "random_words": SHARE}
LOSS_TERMS = ("loss", "ce", "mlm", "cos", "mse", "pool_cos", "pool_mse", "sim", "layers")   # the curves drawn and shown
LR, NARROW_LR = 5e-4, 1e-3     # the default peak learning rates (the README gives the runs that chose them)
PROVISIONAL_STEPS = 1_000_000  # the schedule's length before the first updates are timed: a slow start of warm-up


def _term_counts(labels, attention_mask, w: LossWeights, lo: int = 0, hi: int | None = None) -> dict[str, int]:
    """The positions each loss term averages over, in examples [lo, hi) of the batch."""
    real = int(np.count_nonzero(np.asarray(attention_mask)[lo:hi]))
    masked = 0 if labels is None else int(np.count_nonzero(np.asarray(labels)[lo:hi] != IGNORE_INDEX))
    examples = len(np.asarray(attention_mask)[lo:hi])
    return {"ce": masked if w.kl_masked_only else real, "mlm": masked, "cos": real, "mse": real,
            "pool_cos": examples, "pool_mse": examples, "layers": real}


def _load(teacher, tokenizer):
    from minidistil.io.loading import from_pretrained, resolve
    from minidistil.io.tokenizer import Tokenizer
    if isinstance(teacher, (str, Path)):
        folder = resolve(teacher)
        model = from_pretrained(folder)
        if getattr(model, "quantization_config", None) is not None:
            raise ValueError(f"teacher: {folder} is an int8 checkpoint (minidistil quantize); the student starts "
                             "from the teacher's float32 weights: distil from the float32 checkpoint")
        tokenizer = tokenizer or Tokenizer.from_pretrained(folder)
        return model, tokenizer, str(folder)
    if tokenizer is None:
        raise ValueError("tokenizer: required when the teacher is given as a model object")
    if not isinstance(tokenizer, Tokenizer) and hasattr(tokenizer, "to_str"):  # a bare tokenizers.Tokenizer
        tokenizer = Tokenizer(tokenizer)
    return teacher, tokenizer, type(teacher).__name__


def _corpus(cfg: DistillConfig):
    docs = data.default_corpus() if not cfg.corpus else data.read_corpus(cfg.corpus, cfg.text_field)
    return data.split_held_out(docs, cfg.held_out)


def distill(teacher=DEFAULT_TEACHER, out_dir="student", *, tokenizer=None, config: DistillConfig | None = None,
            **overrides) -> dict:
    """Run a distillation; returns the final report (also written to out_dir/report.json).

    teacher: a checkpoint folder / name (loaded with minidistil.io.loading), or a model object (then `tokenizer` is
    required). Any DistillConfig field may be passed as a keyword (e.g. steps=100, batch_size=8). The student
    goes to out_dir and its training state to out_dir.training (see the module docstring); a folder that holds a
    run is refused unless resume=True or overwrite=True, and one that another run is using is refused.
    """
    t_begin = time.perf_counter()
    cfg = config or DistillConfig()
    cfg = DistillConfig(**{**asdict(cfg), **overrides, "out_dir": str(out_dir),
                           "teacher": teacher if isinstance(teacher, (str, Path)) else cfg.teacher})
    if isinstance(cfg.weights, dict):
        cfg.weights = LossWeights(**cfg.weights)
    check_fields(cfg, FIELD_TYPES)
    say = functools.partial(print, flush=True)  # set-up lines and the final report; --no-progress hides the bar only
    cfg.device = check_device(cfg.device)  # before any work: no GPU -> a clear RuntimeError now
    if cfg.teacher_int8 is None:   # the int8 forward is the faster one only where the VNNI kernel runs
        cfg.teacher_int8 = cfg.device == "cpu" and int8_kernel() == "vnni"
    elif cfg.teacher_int8 and cfg.device != "cpu":
        raise ValueError("--teacher-int8: the int8 teacher runs on the CPU only; on the GPU leave it out")
    from minidistil.train.runchecks import check_output
    check_output(cfg.out_dir, teacher=teacher if isinstance(teacher, (str, Path)) else None, corpus=cfg.corpus)
    refusal = "--device cuda: data parallelism on MPI runs on the CPU only" if cfg.device != "cpu" else None
    with open_run(cfg, say, mpi_refusal=refusal) as (world, run, say):
        cfg.evaluate = cfg.evaluate and world.writer  # rank 0 prints, logs, saves and evaluates
        return _distill(teacher, tokenizer, cfg, run, say, t_begin)


@dataclass
class _Job:
    """What one distillation works with, set up by _models and _data; the loop and the report read it."""
    teacher: Any                       # the teacher model (eval mode)
    student: Any                       # the student, its layers copied from the teacher's
    tokenizer: Any
    teacher_name: str                  # the checkpoint folder or name (or "<model>")
    mlm: bool                          # the teacher has an MLM head: masked inputs and the logit terms
    layers: list                       # teacher layers copied into the student
    weights: LossWeights
    eval_len: int                      # tokens per text in the evaluations
    sts_init: dict | None = None       # the student's STS Spearman before training, per split
    special: Any = None                # data.special_ids of the tokenizer
    batches: Any = None                # data.Batches over the training sequences
    mask_weights: Any = None           # masking.selection_weights from the corpus' token counts
    held_texts: list = field(default_factory=list)   # held-out texts for the final comparison
    seqs: list = field(default_factory=list)         # the training sequences (their digest names the run)
    teacher_dim: int = 0               # the teacher's hidden size C
    narrow: dict = field(default_factory=dict)       # a narrower student's basis and maps (_narrow_init)
    s_map: Any = None                  # the loss's width maps: student states -> C ("learned"), teacher -> H ("pca")
    t_map: Any = None
    targets: Any = None                # the model whose outputs the student learns: the teacher or its int8 copy
    words: Any = None                  # data.word_ids of the tokenizer, for random_words


def _distill(teacher, tokenizer, cfg: DistillConfig, run: Run, say, t_begin: float) -> dict:
    """Set up, train, save, report: each step is one function below."""
    job = _models(teacher, tokenizer, cfg, say)
    if cfg.lr is None:
        cfg.lr = NARROW_LR if (cfg.hidden_size or job.teacher_dim) < job.teacher_dim else LR
    _data(job, cfg, say)
    _student(job, cfg, say)
    # the student's parameters and, with a learned width map, the map's (training only: checkpointed, not saved)
    named = list(job.student.named_parameters())
    if cfg.freeze_embeddings:   # every token keeps its copied vector, the ones the corpus never shows included
        for _, p in named:
            if p is word_embeddings(job.student):
                p.requires_grad = False
        named = [(n, p) for n, p in named if p.requires_grad]
    if job.s_map is not None:
        named += [(WIDTH_MAP + n, p) for n, p in job.s_map.named_parameters()]
    opt = AdamW(named, lr=cfg.lr, weight_decay=cfg.weight_decay)
    world = parallel.world()
    from minidistil.train.runchecks import distill_identity
    run.expect(**distill_identity(cfg, job.teacher, job.teacher_name, job.layers, job.seqs))   # --resume: same run
    state = resume(run, world, dict(named), opt, job.batches) or RunState()
    if cfg.steps is not None:
        state.total_steps = int(cfg.steps)
    models_to(cfg.device, say, job.teacher, job.student, job.s_map, job.t_map)
    job.targets = job.teacher
    if cfg.teacher_int8:  # the student was copied from the float32 weights; only the targets come from int8
        from minidistil.io.quantization import quantize
        job.targets = quantize(job.teacher, embeddings=False)
        say("targets: from the teacher's int8 copy (its Linear layers on int8 kernels; embeddings float32)")

    def save():
        model = job.student.state_dict()
        if job.s_map is not None:
            model.update({WIDTH_MAP + n: p.numpy() for n, p in job.s_map.named_parameters()})  # as state_dict
        run.save(state.step, model=model, optimizer=opt.state_dict(), data=job.batches.state(), state=state,
                 config=cfg)

    setup_seconds = time.perf_counter() - t_begin
    planned, lr, plan = _train(job, cfg, run, world, opt, state, save)
    if state.step == 0:   # nothing learnt: no model written, no checkpoint
        raise RunError(f"the time budget ({cfg.time_budget:.3g} s) ended before the first update; give more time")
    if run.saved is None or run.saved[0] != state.step:
        save()
    job.student.eval()
    if not run.writer:
        return {}
    return _finish(job, cfg, run, state, planned, lr, plan, setup_seconds, t_begin, say)


def _models(teacher, tokenizer, cfg: DistillConfig, say) -> _Job:
    """The teacher, the layers and the shape of its student (checked before any work), the loss weights."""
    teacher_model, tokenizer, teacher_name = _load(teacher, tokenizer)
    teacher_model.eval()
    mlm = has_mlm_head(teacher_model)
    n_teacher = teacher_model.config.num_hidden_layers
    cfg.max_len = cfg.max_len or (128 if mlm else 64)  # a sentence encoder's sentences are short: no padding
    tc = teacher_model.config
    C, heads, F_ = ((tc.hidden_size, tc.num_attention_heads, tc.intermediate_size) if isinstance(tc, BertConfig)
                    else (tc.dim, tc.n_heads, tc.hidden_dim))
    H_default, n_default = default_student_shape(C, heads, n_teacher, mlm)
    layers = cfg.layer_map or default_layer_map(n_teacher, cfg.student_layers or n_default, mlm=mlm)
    if cfg.hidden_size is None and H_default != C:
        cfg.hidden_size = H_default
    if cfg.hidden_size is not None or cfg.num_heads is not None or cfg.intermediate_size is not None:
        from minidistil.train.narrow import student_shape
        student_shape(C, heads, F_, cfg.hidden_size or C, cfg.num_heads, cfg.intermediate_size)  # before any work
    w = cfg.weights or LossWeights.defaults(mlm)
    if not mlm:
        say(f"teacher {teacher_name} has no MLM head: the student learns from the hidden-state terms only "
            f"(cos {w.alpha_cos}, mse {w.alpha_mse}, pooled cos {w.alpha_pool_cos}, pooled mse {w.alpha_pool_mse}"
            f"{f', earlier layers {w.alpha_layers}' if w.alpha_layers else ''}), "
            f"on unmasked text")
        if w.alpha_ce or w.alpha_mlm:
            raise ValueError("alpha_ce / alpha_mlm: this teacher has no MLM head; set them to 0")
    eval_len = min(E.EVAL_MAX_LEN, teacher_model.config.max_position_embeddings)
    return _Job(teacher_model, None, tokenizer, teacher_name, mlm, layers, w, eval_len, teacher_dim=C)


def _student(job: _Job, cfg: DistillConfig, say) -> None:
    """The student made from the teacher (projected onto the teacher's principal directions when narrower), and
    its quality before training (make_student is deterministic, so a resumed run gets the same)."""
    job.narrow = _narrow_init(job.teacher, cfg, job.teacher_dim, job.seqs, job.special.pad, say)
    job.student = make_student(job.teacher, job.layers, basis=job.narrow.get("basis"), num_heads=cfg.num_heads,
                               intermediate_size=cfg.intermediate_size)
    job.s_map, job.t_map = job.narrow.get("maps", (None, None))
    say(f"student: {len(job.layers)} layers copied from teacher layers {list(job.layers)}")
    if "basis" in job.narrow:
        student, probe = job.student, data.pad_batch(job.narrow["probe"], job.special.pad)
        job.narrow["init_cos"] = projected_agreement(job.teacher, student, job.narrow["basis"], job.layers, *probe)
        say(f"student: {student.config.dim} wide ({student.config.n_heads} heads, FFN {student.config.hidden_dim}); "
            f"the teacher's {job.teacher_dim}-wide hidden states keep {100 * job.narrow['energy']:.1f}% of their "
            f"energy in the basis; first forward against the teacher's projected states, mean cosine per layer "
            f"{', '.join(f'{c:.3f}' for c in job.narrow['init_cos'])}")
    job.sts_init = ({split: E.sts_spearman(E.model_encoder(job.student), job.tokenizer, split, max_len=job.eval_len)
                     for split in E.STS_SETS} if cfg.evaluate else None)


def _data(job: _Job, cfg: DistillConfig, say) -> None:
    """The corpus cut into training sequences and batches, the masking weights, the held-out texts."""
    job.special = data.special_ids(job.tokenizer)
    job.words = data.word_ids(job.tokenizer) if cfg.random_words else None
    train_docs, held_docs = _corpus(cfg)
    seqs = data.make_sequences(train_docs, job.tokenizer, cfg.max_len)
    job.held_texts = E.sample_texts(held_docs, cfg.eval_texts, seed=cfg.seed)
    job.batches = data.Batches(seqs, cfg.batch_size, job.special.pad, seed=cfg.seed)
    job.seqs = seqs
    counts = data.token_counts(seqs, job.special.vocab_size)
    job.mask_weights = selection_weights(counts, job.special.vocab_size, cfg.mask_smoothing)
    say(f"corpus: {len(train_docs)} documents -> {len(seqs)} sequences of <= {cfg.max_len} tokens "
        f"({len(held_docs)} documents held out)")


def _train(job: _Job, cfg: DistillConfig, run: Run, world, opt, state: RunState, save):
    """The updates, until cfg.steps or the time budget: returns (planned updates, last learning rate, the budget's
    plan or None). Checkpoints every cfg.checkpoint_every updates.

    On the CPU each step's loss, terms and gradient norm are read as it ends, and a non-finite one stops the run
    before its update. On the GPU they stay device scalars and a step never waits for the GPU: StepRows reads them
    every READ_EVERY steps, before each checkpoint and at the end (metrics.jsonl still gets one line per step), so
    a divergence is found at that read, naming its step; the update of a step whose gradient norm is not finite
    was skipped on the device (clipping and AdamW decide there), so the parameters are not corrupted by it."""
    progress = _Progress(cfg, state)
    t_start = time.perf_counter()
    rows = StepRows(run, READ_EVERY, detail=lambda r: f" ({ {k: r[k] for k in LOSS_TERMS[1:] if k in r} })",
                    show=lambda r: progress.update(r, state.seconds + time.perf_counter() - t_start,
                                                   state.total_steps))
    plan = BudgetPlan(cfg.time_budget) if cfg.steps is None else None
    job.student.train()
    lr, planned, complete = None, state.total_steps, False
    try:
        while True:
            elapsed = state.seconds + time.perf_counter() - t_start
            if plan is not None:  # re-plan: the updates done plus those the time left still holds
                left = world.bcast(plan.steps_left(elapsed))     # rank 0's clock decides for every rank
                if left is not None:
                    state.total_steps = state.step + left
                if left == 0:
                    break
            elif state.step >= state.total_steps:
                break
            planned = state.total_steps
            lr = LinearWarmupDecay(cfg.lr, planned or PROVISIONAL_STEPS, cfg.warmup)(state.step)
            t_step = time.perf_counter()
            losses, terms_seen, n_tokens = [], {}, 0
            for micro in range(cfg.grad_accum):
                value, terms, tokens = _micro_step(job, cfg, run, world, state.step, micro)
                n_tokens += tokens
                losses.append(value)
                for k, v in terms.items():
                    terms_seen.setdefault(k, []).append(v)
            norm = update(run, world, opt, state.step, cfg.max_grad_norm, lr)   # the global batch's gradient
            state.step += 1
            state.tokens += n_tokens
            # each value a list of the micro-batches' (floats, or device scalars on the GPU): their mean is read
            rows.add({"step": state.step, "loss": losses, **terms_seen, "lr": lr, "grad_norm": norm,
                      "tokens": state.tokens})
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                rows.flush()  # the log holds every step saved, and a diverged step stops the run before it
                state.seconds += time.perf_counter() - t_start
                t_start = time.perf_counter()
                save()
            if plan is not None:
                plan.record(time.perf_counter() - t_step)
        rows.flush()
        complete = schedule_complete(state.step, planned)
    finally:
        progress.close(complete)
    state.seconds += time.perf_counter() - t_start
    return planned, lr, plan


def _micro_step(job: _Job, cfg: DistillConfig, run: Run, world, step: int, micro: int):
    """One micro-batch: mask, both forwards, the loss, its backward (scaled by 1 / grad_accum). Returns the global
    loss, its terms and the batch's token count."""
    input_ids, attention_mask = job.batches.next()          # the global batch (B, T), on every rank
    if cfg.random_words:    # the last rows: random whole words of the vocabulary (data.with_random_words)
        input_ids, attention_mask = data.with_random_words(
            input_ids, attention_mask, cfg.random_words, job.words, job.special,
            np.random.default_rng(step_seed(cfg.seed + 2, step, micro)))
    n_tokens = int(attention_mask.sum())
    rng = np.random.default_rng(step_seed(cfg.seed, step, micro))
    if job.mlm:
        inputs, labels = mask_tokens(input_ids, attention_mask, rng, job.special, weights=job.mask_weights)
    else:
        inputs, labels = input_ids, None
    scale = None
    lo, hi = world.shard(len(inputs))                   # this rank's examples [lo, hi)
    if world.size > 1:  # each term: this rank's partial sum over the GLOBAL count
        every, mine = (_term_counts(labels, attention_mask, job.weights, a, b) for a, b in ((0, None), (lo, hi)))
        scale = {k: mine[k] / max(every[k], 1) for k in every}
        inputs, attention_mask = inputs[lo:hi], attention_mask[lo:hi]
        labels = None if labels is None else labels[lo:hi]
    F.manual_seed(step_seed(cfg.seed + 1, step, micro), first_example=lo)  # dropout masks
    # the MLM logits only at the rows their terms read (M of the B*T), copied to the GPU once for both models
    rows = logit_rows(labels, attention_mask, job.weights) if job.mlm else None       # (M,)
    rows_on = to_device_of(rows, job.student) if rows is not None and rows.size else rows
    every = bool(job.weights.alpha_layers)             # the layer-wise term: every hidden state of both
    pairs = layer_pairs(job.layers) if every else []
    with no_grad():
        t_logits, t_states = forward_outputs(job.targets, inputs, attention_mask, logits_rows=rows_on,
                                             every_layer=every)
        t_logits = None if t_logits is None else t_logits.data                       # (M, V), left on its device
        t_map = (lambda h: h) if job.t_map is None else job.t_map
        t_hidden = t_map(t_states[-1] if every else t_states).data                   # (B, T, C or H)
        t_layers = [t_map(t_states[j]).data for _, j in pairs]                       # (B, T, C or H) each
    s_logits, s_states = forward_outputs(job.student, inputs, attention_mask, logits_rows=rows_on, every_layer=every)
    s_map = (lambda h: h) if job.s_map is None else job.s_map
    s_hidden = s_map(s_states[-1] if every else s_states)                           # (B, T, C)
    s_layers = [s_map(s_states[i]) for i, _ in pairs]
    loss, terms = distillation_loss_terms(s_logits, t_logits, s_hidden, t_hidden, labels, attention_mask,
                                          job.weights, scale, logits_rows=rows, s_layers=s_layers,
                                          t_layers=t_layers)
    if _cuda.is_device_array(loss.data):  # on the GPU: left there, read when the loop logs (StepRows)
        value, terms = loss.data, {name: t.data for name, t in terms.items()}
    else:
        value, terms = float(loss.item()), {name: float(t.item()) for name, t in terms.items()}
        if world.size > 1:  # the global loss and terms: the sums of the ranks' shares
            names = list(terms)
            total = world.sum([value] + [terms[k] * scale[k] for k in names])
            value, terms = float(total[0]), dict(zip(names, map(float, total[1:]), strict=True))
        run.check_step(step + 1, loss=value, detail=f" ({terms})")
    (loss * (1.0 / cfg.grad_accum)).backward()
    return value, terms, n_tokens


def _finish(job: _Job, cfg: DistillConfig, run: Run, state: RunState, planned, lr, plan, setup_seconds: float,
            t_begin: float, say) -> dict:
    """The output folder (the student, the sentence-transformers files, the loss curve), the comparison with the
    teacher, and the report."""
    t_after = time.perf_counter()
    out = run.out
    from minidistil.io.loading import save_pretrained
    save_pretrained(job.student, out, tokenizer=job.tokenizer)
    if Path(job.teacher_name).is_dir():
        write_sentence_transformers_files(job.teacher_name, out, job.student.config.dim)
    for m in (job.s_map, job.t_map):  # the maps of the final comparison's mean cosine, read on the host
        if m is not None:
            m.to("cpu")
    curve = plot_curves(run.metrics, out / "loss_curve.png", LOSS_TERMS, "distillation losses", say)
    schedule = schedule_summary(state.step, planned, lr, cfg.lr,
                                "" if plan is None else "the time budget ran out before the planned updates")
    report = {"teacher": job.teacher_name, "student_dir": str(out), "layers": list(job.layers), "steps": state.step,
              "teacher_int8": cfg.teacher_int8, "lr": cfg.lr,
              "train_seconds": round(state.seconds, 1), "tokens": state.tokens, "mlm": job.mlm,
              "weights": asdict(job.weights), "loss_curve": curve, "schedule": schedule,
              "state_dir": str(run.state_dir), "time_budget_seconds": None if plan is None else cfg.time_budget,
              "setup_seconds": round(setup_seconds, 1), "teacher_dim": job.teacher_dim,
              "student_dim": job.student.config.dim, "student_heads": job.student.config.n_heads,
              "student_ffn": job.student.config.hidden_dim,
              "student_file_bytes": (out / "model.safetensors").stat().st_size}
    teacher_file = Path(job.teacher_name) / "model.safetensors"
    if teacher_file.is_file():
        report["teacher_file_bytes"] = teacher_file.stat().st_size
    if "basis" in job.narrow:
        report.update(width_loss=cfg.width_loss, pca_texts=len(job.narrow["probe"]), pca_energy=job.narrow["energy"],
                      init_projected_cos=job.narrow["init_cos"])
    if cfg.evaluate:
        report.update(compare(job.teacher, job.student, job.tokenizer, job.held_texts, job.batches, job.eval_len,
                              align=_aligners(job.s_map, job.t_map)))
        for split, rho in job.sts_init.items():
            report[f"sts_{split}_student_init"] = rho
            report[f"sts_{split}_kept_init"] = rho / report[f"sts_{split}_teacher"]
    report["eval_seconds"] = round(time.perf_counter() - t_after, 1)   # saving, the curve and the comparison
    report["total_seconds"] = round(time.perf_counter() - t_begin, 1)
    run.write_report(report)
    say(format_report(report))
    return report


WIDTH_MAP = "width_map."  # checkpoint names of the learned width map's parameters (never in the saved model)


def _narrow_init(teacher, cfg: DistillConfig, C: int, seqs, pad_id: int, say) -> dict:
    """For a student narrower than the teacher: {"basis": U (C, H), "energy": the share of the hidden states'
    second moment in U's directions, "probe": the sequences it was computed on, "maps": the loss's width maps}.
    For a student of the teacher's width: {} (with --num-heads / --intermediate-size only, heads and neurons are
    cut and the hidden space is kept as it is)."""
    from minidistil.train.narrow import (BASIS_WEIGHTINGS, WIDTH_LOSSES, hidden_moment, principal_basis,
                                         sample_sequences, width_maps)
    if cfg.width_loss not in WIDTH_LOSSES:
        raise ValueError(f"width_loss: expected one of {', '.join(WIDTH_LOSSES)}, got {cfg.width_loss!r}")
    if cfg.pca_weighting not in BASIS_WEIGHTINGS:
        raise ValueError(f"pca_weighting: expected one of {', '.join(BASIS_WEIGHTINGS)}, got {cfg.pca_weighting!r}")
    if cfg.hidden_size is None or cfg.hidden_size == C:
        return {}
    if cfg.hidden_size > C:
        raise ValueError(f"--hidden-size: expected 1 .. {C} (the teacher's hidden size), got {cfg.hidden_size}")
    probe = sample_sequences(seqs, cfg.pca_texts, seed=cfg.seed)
    t0 = time.perf_counter()
    U, evals = principal_basis(hidden_moment(teacher, probe, pad_id, weighting=cfg.pca_weighting))
    U = U[:, :cfg.hidden_size]
    energy = float(evals[:cfg.hidden_size].sum() / evals.sum())
    which = {"all": "every layer", "equal": "every layer, each counted the same", "last": "the last layer"}
    say(f"basis: the {cfg.hidden_size} leading principal directions of the teacher's hidden states "
        f"({len(probe)} sequences, {which[cfg.pca_weighting]}; {time.perf_counter() - t0:.1f} s)")
    return {"basis": U, "energy": energy, "probe": probe, "maps": width_maps(U, cfg.width_loss)}


def _aligners(s_map, t_map):
    """(student, teacher) functions that bring pooled embeddings to one width for the mean cosine: the maps the
    loss used (None: the identity)."""
    def as_fn(m):
        if m is None:
            return None
        W = m.weight.numpy()
        b = None if m.bias is None else m.bias.numpy()
        return lambda e: e @ W.T + (0 if b is None else b)
    return as_fn(s_map), as_fn(t_map)


ST_MODULES = {"Transformer": "", "Pooling": "1_Pooling", "Normalize": "2_Normalize"}


def write_sentence_transformers_files(teacher_dir: str | Path, student_dir: str | Path, dim: int) -> list[str]:
    """Make the student folder a sentence-transformers model when the teacher folder is one (it has modules.json):
    modules.json (Transformer -> Pooling -> Normalize when the teacher normalises), 1_Pooling/config.json with
    MEAN pooling (the pooling every embedding term of the distillation is computed on, whatever the teacher
    used), sentence_bert_config.json (the teacher's max_seq_length and casing) and
    config_sentence_transformers.json. Returns the files written ([] for a plain teacher)."""
    from minidistil.core.files import atomic_write
    teacher_dir, student_dir = Path(teacher_dir), Path(student_dir)
    if not (teacher_dir / "modules.json").is_file():
        return []
    from minidistil.core.files import read_json, read_json_object   # bounded reads; an error names the file
    listed = read_json(teacher_dir / "modules.json")
    if not isinstance(listed, list) or not all(isinstance(m, dict) and isinstance(m.get("type", ""), str)
                                               for m in listed):
        raise ValueError(f"{teacher_dir / 'modules.json'}: expected a list of objects with a string 'type'")
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in listed]
    kinds = ["Transformer", "Pooling"] + (["Normalize"] if "Normalize" in kinds else [])
    modules = [{"idx": i, "name": str(i), "path": ST_MODULES[k], "type": f"sentence_transformers.models.{k}"}
               for i, k in enumerate(kinds)]
    pooling = {"word_embedding_dimension": int(dim), "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False}
    st_config = {"max_seq_length": 256, "do_lower_case": False}
    if (teacher_dir / "sentence_bert_config.json").is_file():
        st_config.update(read_json_object(teacher_dir / "sentence_bert_config.json"))
    versions = {"__version__": {}}
    if (teacher_dir / "config_sentence_transformers.json").is_file():
        versions = read_json_object(teacher_dir / "config_sentence_transformers.json")
    files = {"modules.json": modules, "1_Pooling/config.json": pooling, "sentence_bert_config.json": st_config,
             "config_sentence_transformers.json": versions}
    for name, obj in files.items():
        (student_dir / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(student_dir / name, json.dumps(obj, indent=2) + "\n")
    if "Normalize" in kinds:
        (student_dir / "2_Normalize").mkdir(exist_ok=True)  # the Normalize module has no parameters
    return sorted(files)


class _Progress:
    """A tqdm bar (step, loss terms, tokens/s, time left) whose length follows the planned number of updates and
    which ends at 100% when the run ends normally; nothing when progress is off."""

    def __init__(self, cfg: DistillConfig, state: RunState):
        self.cfg, self.bar = cfg, None
        if cfg.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=state.total_steps or None, initial=state.step, unit="step", dynamic_ncols=True)

    def update(self, row: dict, elapsed: float, total: int):
        if self.bar is None:
            return
        if total:
            self.bar.total = total
        left = (self.cfg.time_budget - elapsed) if self.cfg.steps is None else None
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in LOSS_TERMS}
                             | {"tok/s": f"{row['tokens'] / max(elapsed, 1e-9):.0f}"}
                             | ({"left": f"{left:.0f}s"} if left is not None else {}), refresh=False)
        self.bar.update(1)

    def close(self, complete: bool):
        if self.bar is None:
            return
        if complete:  # the schedule ended where the plan did: the bar shows it whole
            self.bar.total = self.bar.n
            self.bar.refresh()
        self.bar.close()


def compare(teacher, student, tokenizer, held_texts: Sequence[str], batches: data.Batches,
            max_len: int = E.EVAL_MAX_LEN, align=(None, None)) -> dict:
    """Teacher beside student: layers, parameters, forward time on the same batch; the STS Spearman of each on the
    test set and the development set and the share the student keeps; on held-out text, the mean cosine of their
    sentence embeddings and the Spearman of their similarities over random pairs (evaluation's module doc).
    align: (student, teacher) maps of the hidden states (linear, None: the identity) that bring a narrow student's
    and the teacher's embeddings to one width for the mean cosine (the similarities need none)."""
    longest = sorted(batches.seqs, key=len)[-batches.batch_size:]  # a full-length batch
    input_ids, attention_mask = data.pad_batch(longest, batches.pad_id)

    def timed(model):
        model.eval()
        with no_grad():
            forward_outputs(model, input_ids, attention_mask)  # warm-up (JIT compilation)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                forward_outputs(model, input_ids, attention_mask)
                times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1e3)

    def encoder(model):
        def enc(ids, mask):
            with no_grad():
                return forward_outputs(model, ids, mask)[1].numpy()
        return enc

    t_enc, s_enc = encoder(teacher), encoder(student)

    def aligned(enc, fn):  # mean pooling is linear: mapping the states maps the pooled embedding
        return enc if fn is None else (lambda ids, mask: fn(enc(ids, mask)).astype(np.float32))
    r = {"teacher_layers": teacher.config.num_hidden_layers, "student_layers": student.config.n_layers,
         "teacher_params": teacher.num_parameters(), "student_params": student.num_parameters(),
         "forward_batch": list(input_ids.shape), "teacher_forward_ms": timed(teacher),
         "student_forward_ms": timed(student)}
    for split in E.STS_SETS:
        r[f"sts_{split}_pairs"] = len(E.load_sts_pairs(split))
        r[f"sts_{split}_teacher"] = E.sts_spearman(t_enc, tokenizer, split, max_len=max_len)
        r[f"sts_{split}_student"] = E.sts_spearman(s_enc, tokenizer, split, max_len=max_len)
        r[f"sts_{split}_kept"] = r[f"sts_{split}_student"] / r[f"sts_{split}_teacher"]
    r["held_out_texts"] = len(held_texts)
    if len(held_texts) >= 2:
        r["held_out_mean_cosine"] = E.embedding_agreement(aligned(s_enc, align[0]), aligned(t_enc, align[1]),
                                                          tokenizer, held_texts, max_len=max_len)
        r["held_out_pairs"] = E.SIMILARITY_PAIRS
        r["held_out_similarity_spearman"] = E.similarity_agreement(s_enc, t_enc, tokenizer, held_texts,
                                                                   max_len=max_len)
    return r


def format_report(r: dict) -> str:
    lines = [f"student written to {r['student_dir']} after {r['steps']} steps ({r['train_seconds']} s, "
             f"{r['tokens']} tokens); loss curve: {r['loss_curve'] or 'not drawn'}"]
    if "schedule" in r:
        budget = (f" (the budget: {r['time_budget_seconds']:.0f} s, which counts the updates and checkpoints only)"
                  if r.get("time_budget_seconds") else "")
        lines += [schedule_text(r["schedule"]),
                  f"time: set-up {r['setup_seconds']} s, training {r['train_seconds']} s{budget}, saving and "
                  f"evaluation {r.get('eval_seconds', 0)} s; {r.get('total_seconds', 0)} s in all",
                  f"training state (for --resume; not part of the model): {r['state_dir']}"]
    if "teacher_params" not in r:
        return "\n".join(lines)

    def sts(split):
        init = (f" ({100 * r[f'sts_{split}_kept_init']:.1f}% before distillation)"
                if f"sts_{split}_kept_init" in r else "")
        return (f"{'STS Spearman, ' + split + ' set':24}{r[f'sts_{split}_teacher']:>12.3f}"
                f"{r[f'sts_{split}_student']:>12.3f}   student keeps {100 * r[f'sts_{split}_kept']:.1f}%{init}")

    lines += [
        f"{'':24}{'teacher':>12}{'student':>12}",
        f"{'layers':24}{r['teacher_layers']:>12}{r['student_layers']:>12}",
        f"{'parameters':24}{r['teacher_params']:>12,}{r['student_params']:>12,}"
        f"   ({100 * r['student_params'] / r['teacher_params']:.1f}%)",
    ]
    if "student_dim" in r:
        lines.append(f"{'hidden size':24}{r['teacher_dim']:>12}{r['student_dim']:>12}   (embedding size; "
                     f"{r['student_heads']} heads, FFN {r['student_ffn']})")
    if "student_file_bytes" in r:
        teacher_mb = f"{r['teacher_file_bytes'] / 1e6:.1f}" if "teacher_file_bytes" in r else "-"
        lines.append(f"{'model.safetensors, MB':24}{teacher_mb:>12}{r['student_file_bytes'] / 1e6:>12.1f}")
    lines += [
        f"{'forward ms ' + 'x'.join(map(str, r['forward_batch'])):24}{r['teacher_forward_ms']:>12.1f}"
        f"{r['student_forward_ms']:>12.1f}   ({r['teacher_forward_ms'] / r['student_forward_ms']:.2f}x faster)",
        sts("test"),
        sts("dev"),
        f"(test set: sts_test_pairs.tsv, {r['sts_test_pairs']} pairs, never used to choose settings; dev set: "
        f"sts_pairs.tsv, {r['sts_dev_pairs']} pairs, the settings were chosen on it)",
    ]
    if "held_out_mean_cosine" in r:
        lines.append(f"held-out text ({r['held_out_texts']} texts): mean cosine of student and teacher embeddings "
                     f"{r['held_out_mean_cosine']:.3f}; Spearman of their similarities over {r['held_out_pairs']} "
                     f"random pairs {r['held_out_similarity_spearman']:.3f}")
        if "width_loss" in r:
            lines[-1] += (" (the cosine at the student's width: the teacher's embeddings projected onto the basis"
                          if r["width_loss"] == "pca" else
                          " (the cosine at the teacher's width: the student's through the learned map")
            lines[-1] += ", as in training)"
    return "\n".join(lines)
