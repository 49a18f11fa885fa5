"""Students narrower than their teacher: the shape, the teacher's principal directions, and the projected copy.

A narrow student has hidden size H < C (the teacher's). It starts from the teacher, projected:

1. The basis. The teacher's hidden states (every layer's output and the embedding output, real tokens of a few
   hundred corpus sequences) give the second-moment matrix M = sum x^T x (C x C, float64); its H leading
   eigenvectors are an orthonormal basis U (C x H) of the hidden space. The moment is NOT centred: the student
   must carry the states themselves, mean included (BERT's hidden states have a large mean along a few
   directions), and U keeps the share of their energy that the eigenvalues say (the report gives it).

2. The projected copy. The student's residual stream holds z = x U. Every copied weight is mapped so that it
   reads and writes z instead of x (W is (out x in) as in PyTorch, y = x W^T + b):
       both sides in the hidden space (the MLM head's vocab_transform)   W' = U^T W U,  b' = U^T b
         (an approximation more: its output passes through GELU, which acts on the teacher's coordinates)
       only the input (query, key, value, FFN lin1)                      W' = W U,      b' = b
       only the output (attention out_lin, FFN lin2)                     W' = U^T W,    b' = U^T b
       embeddings (word, and position with token-type row 0 folded in)   E' = E U
   Attention heads and FFN neurons are cut, not projected (softmax and GELU act on their own coordinates): the
   kept ones are those that write the most into the projected space, scored by the Frobenius norm of the head's
   projected value-output circuit ||(U^T Wo_h)(Wv_h U)|| (what the head adds to z per unit of attention), and for
   a neuron i by ||W1_i U|| * ||U^T W2[:, i]||. The kept ones stay in the teacher's order. A head narrower than the
   teacher's keeps its query/key dimensions with the largest ||Wq_d U|| * ||Wk_d U|| and its value dimensions
   with the largest ||U^T Wo_d|| * ||Wv_d U||; its query is scaled by sqrt(D'/D) so that the scores of the kept
   dimensions are divided by sqrt(D) as the teacher's are, not by the student's sqrt(D').

3. Layer norm is NOT exact after projection. The teacher normalises x over its C coordinates,
   LN(x) = g * (x - mean(x)) / std(x) + b, the student z = x U over H coordinates; the two means are taken along
   different directions (1_C against U 1_H) and the gain g is diagonal in the teacher's coordinates, not in U's.
   When U holds most of x - mean(x), ||z - mean(z)|| ~ ||x - mean(x)||, so the student's normalised vector is
   sqrt(H / C) times the projection of the teacher's; the rule used is
       g' = sqrt(C / H) * diag(U^T diag(g) U) = sqrt(C / H) * (U * U)^T g,    b' = U^T b,
   the diagonal of the projected gain, rescaled. `projected_agreement` measures how close the first forward
   gets (the report gives the cosine per layer; tests/test_narrow.py compares it with a random init).

The basis is recomputed when a run resumes (the same sequences and teacher give the same U; the parameters come
from the checkpoint). The learned projection of the loss (student width -> teacher width, trained with the
student, never saved) and the fixed one (the teacher's states projected by U) are made by `width_maps`;
minidistil.train.distill uses them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from minidistil.train import data
from minidistil.core.autograd import no_grad

# DistilBERT names (after "transformer.layer.i.") of the Linear layers, by the side(s) that touch the hidden space
READS_HIDDEN = ("attention.q_lin", "attention.k_lin", "attention.v_lin", "ffn.lin1")
WRITES_HIDDEN = ("attention.out_lin", "ffn.lin2")
LAYER_NORMS = ("sa_layer_norm", "output_layer_norm")
WIDTH_LOSSES = ("pca", "learned")
BASIS_WEIGHTINGS = ("all", "equal", "last")


def student_shape(dim: int, n_heads: int, hidden_dim: int, hidden_size: int, num_heads: int | None = None,
                  intermediate_size: int | None = None) -> tuple[int, int, int]:
    """(H, heads, F) of a student of hidden size H cut from a teacher of (dim, n_heads, hidden_dim). By default the
    teacher's head width D is kept (heads = H / D) and its FFN ratio (F = H * hidden_dim / dim). Raises ValueError
    naming the flag when the shape cannot be cut from the teacher."""
    D = dim // n_heads
    if not 1 <= hidden_size <= dim:
        raise ValueError(f"--hidden-size: expected 1 .. {dim} (the teacher's hidden size), got {hidden_size}")
    if num_heads is None:
        if hidden_size % D:
            raise ValueError(f"--hidden-size {hidden_size}: not a multiple of the teacher's head width {D}; give "
                             f"--num-heads (a divisor of {hidden_size} with heads of at most {D})")
        num_heads = hidden_size // D
    if hidden_size % num_heads:
        raise ValueError(f"--num-heads {num_heads}: does not divide --hidden-size {hidden_size}")
    if num_heads > n_heads or hidden_size // num_heads > D:
        raise ValueError(f"--num-heads {num_heads}: the student's heads are cut from the teacher's {n_heads} heads "
                         f"of width {D}: expected at most {n_heads} heads of width at most {D}, got "
                         f"{num_heads} of width {hidden_size // num_heads}")
    F = intermediate_size if intermediate_size is not None else max(1, round(hidden_size * hidden_dim / dim))
    if not 1 <= F <= hidden_dim:
        raise ValueError(f"--intermediate-size: expected 1 .. {hidden_dim} (the teacher's), got {F}")
    return hidden_size, num_heads, F


def hidden_moment(teacher, seqs: Sequence[np.ndarray], pad_id: int, batch_size: int = 16,
                  weighting: str = "all") -> np.ndarray:
    """The second moment of the teacher's hidden states over the real tokens of `seqs`, (C, C) float64, M = sum of
    x^T x over the states `weighting` names:
      "all":   every hidden state (the embedding output and each layer's), summed as they are: the layers whose
               states are largest weigh most;
      "equal": every hidden state, each state's moment scaled to unit trace first, so each counts the same;
      "last":  the last hidden states only, those the sentence embedding is pooled from.
    The teacher runs in eval mode under no_grad."""
    if weighting not in BASIS_WEIGHTINGS:
        raise ValueError(f"--pca-weighting: expected one of {', '.join(BASIS_WEIGHTINGS)}, got {weighting!r}")
    C = teacher.config.hidden_size if hasattr(teacher.config, "hidden_size") else teacher.config.dim
    per_state = None
    teacher.eval()
    with no_grad():
        for lo in range(0, len(seqs), batch_size):
            ids, mask = data.pad_batch(seqs[lo:lo + batch_size], pad_id)
            states = teacher(ids, mask, output_hidden_states=True).hidden_states
            per_state = per_state or [np.zeros((C, C)) for _ in states]
            for M, h in zip(per_state, states, strict=True):
                X = np.asarray(h.numpy(), dtype=np.float64)[mask.astype(bool)]      # (tokens, C)
                M += X.T @ X
    if weighting == "last":
        return per_state[-1]
    if weighting == "equal":
        return sum(M / max(np.trace(M), np.finfo(np.float64).tiny) for M in per_state)
    return sum(per_state)


def principal_basis(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U (C, C) eigenvectors of M as columns, largest eigenvalue first; eigenvalues). Each column's sign is fixed
    (its largest-magnitude entry positive) so that the same M gives the same U."""
    evals, evecs = np.linalg.eigh(M)
    order = np.argsort(evals)[::-1]
    evals, U = evals[order], evecs[:, order]
    U *= np.where(U[np.abs(U).argmax(axis=0), np.arange(U.shape[1])] < 0, -1.0, 1.0)
    return U, evals


def sample_sequences(seqs: Sequence[np.ndarray], n: int, seed: int = 0) -> list[np.ndarray]:
    """Up to n sequences drawn without replacement (the same for the same seed), in corpus order."""
    n = min(n, len(seqs))
    pick = np.sort(np.random.default_rng(seed).choice(len(seqs), size=n, replace=False))
    return [seqs[i] for i in pick]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, in increasing index order (ties to the lower index)."""
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def project_layer_norm(g: np.ndarray, b: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rule of the module docstring (3): g' = sqrt(C / H) (U * U)^T g, b' = U^T b."""
    C, H = U.shape
    return np.sqrt(C / H) * ((U * U).T @ g), U.T @ b


def project_state(state: dict[str, np.ndarray], dim: int, n_heads: int, U: np.ndarray, num_heads: int,
                  hidden_dim: int, prefix: str = "") -> dict[str, np.ndarray]:
    """The teacher-width DistilBERT state dict `state` (its layers already picked) projected onto U (C x H) with
    `num_heads` heads and an FFN of `hidden_dim`, by the rules of the module docstring. float32 out; the products
    are taken in float64. `prefix`: "distilbert." for a model with an MLM head."""
    U = np.asarray(U, dtype=np.float64)
    C, H = U.shape
    D, Dp = dim // n_heads, H // num_heads
    s64 = {n: np.asarray(a, dtype=np.float64) for n, a in state.items()}
    out: dict[str, np.ndarray] = {}
    emb = prefix + "embeddings."
    for n, a in s64.items():
        if not n.startswith(prefix + "transformer.layer."):
            if n in (emb + "word_embeddings.weight", emb + "position_embeddings.weight"):
                out[n] = a @ U                                                      # (V or P, H)
            elif n == emb + "LayerNorm.weight" or n == "vocab_layer_norm.weight":
                base = n[:-len("weight")]
                out[base + "weight"], out[base + "bias"] = project_layer_norm(a, s64[base + "bias"], U)
            elif n == "vocab_transform.weight":
                out[n] = U.T @ a @ U                                                # (H, H)
            elif n == "vocab_transform.bias":
                out[n] = U.T @ a
            elif n not in out:
                out[n] = a                                                          # vocab_projector.bias: V wide
    layers = sorted({int(n[len(prefix + "transformer.layer."):].split(".")[0]) for n in s64
                     if n.startswith(prefix + "transformer.layer.")})
    for i in layers:
        p = f"{prefix}transformer.layer.{i}."
        W = {k: s64[p + k + ".weight"] for k in READS_HIDDEN + WRITES_HIDDEN}
        bias = {k: s64[p + k + ".bias"] for k in READS_HIDDEN + WRITES_HIDDEN}
        Wq, Wk, Wv = (W[k] @ U for k in READS_HIDDEN[:3])                            # (C, H) each: heads x D rows
        Wo = U.T @ W["attention.out_lin"]                                           # (H, C): C = heads x D columns
        ov = [np.linalg.norm(Wo[:, h * D:(h + 1) * D] @ Wv[h * D:(h + 1) * D]) for h in range(n_heads)]
        qk_rows, v_rows = [], []
        for h in _top(np.array(ov), num_heads):
            r = np.arange(h * D, (h + 1) * D)
            qk_rows.append(r[_top(np.linalg.norm(Wq[r], axis=1) * np.linalg.norm(Wk[r], axis=1), Dp)])
            v_rows.append(r[_top(np.linalg.norm(Wo[:, r], axis=0) * np.linalg.norm(Wv[r], axis=1), Dp)])
        qk, vr = np.concatenate(qk_rows), np.concatenate(v_rows)                     # (H,) each
        q_scale = np.sqrt(Dp / D)
        out[p + "attention.q_lin.weight"] = Wq[qk] * q_scale
        out[p + "attention.q_lin.bias"] = bias["attention.q_lin"][qk] * q_scale
        out[p + "attention.k_lin.weight"] = Wk[qk]
        out[p + "attention.k_lin.bias"] = bias["attention.k_lin"][qk]
        out[p + "attention.v_lin.weight"] = Wv[vr]
        out[p + "attention.v_lin.bias"] = bias["attention.v_lin"][vr]
        out[p + "attention.out_lin.weight"] = Wo[:, vr]                             # (H, H)
        out[p + "attention.out_lin.bias"] = U.T @ bias["attention.out_lin"]
        W1, W2 = W["ffn.lin1"] @ U, U.T @ W["ffn.lin2"]                             # (F, H), (H, F)
        keep = _top(np.linalg.norm(W1, axis=1) * np.linalg.norm(W2, axis=0), hidden_dim)
        out[p + "ffn.lin1.weight"], out[p + "ffn.lin1.bias"] = W1[keep], bias["ffn.lin1"][keep]
        out[p + "ffn.lin2.weight"], out[p + "ffn.lin2.bias"] = W2[:, keep], U.T @ bias["ffn.lin2"]
        for ln in LAYER_NORMS:
            out[p + ln + ".weight"], out[p + ln + ".bias"] = project_layer_norm(s64[p + ln + ".weight"],
                                                                                s64[p + ln + ".bias"], U)
    return {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in out.items()}


def projected_agreement(teacher, student, U: np.ndarray, layers: Sequence[int], input_ids, attention_mask
                        ) -> list[float]:
    """How close the student's forward is to the teacher's projected one: for the embedding output and each
    student layer i (teacher layer layers[i]), the mean over real tokens of cos(student state, teacher state U)."""
    rows = np.asarray(attention_mask).astype(bool)
    U = np.asarray(U, dtype=np.float32)
    with no_grad():
        th = teacher(input_ids, attention_mask, output_hidden_states=True).hidden_states
        sh = student(input_ids, attention_mask, output_hidden_states=True).hidden_states
    pairs = [(0, 0)] + [(j + 1, i + 1) for i, j in enumerate(layers)]
    cos = []
    for tj, si in pairs:
        t = (th[tj].numpy() @ U)[rows].astype(np.float64)                           # (tokens, H)
        s = sh[si].numpy()[rows].astype(np.float64)
        cos.append(float(np.mean(np.sum(t * s, 1) / (np.linalg.norm(t, axis=1) * np.linalg.norm(s, axis=1)))))
    return cos


def width_maps(U: np.ndarray, how: str):
    """The training-only maps of the hidden-state and pooled loss terms between a student of width H and a teacher
    of width C, as (student map, teacher map), each an nn.Linear or None:
      "pca":     the teacher's states are projected by U (Linear C -> H, weight U^T, fixed: no gradient);
      "learned": the student's states are mapped to the teacher's width by a Linear H -> C with a bias, trained
                 with the student (its weight starts at U, the inverse of the initialisation's projection, its
                 bias at 0). It is part of the training state, never of the saved model."""
    from minidistil.core.nn import Linear
    U = np.asarray(U, dtype=np.float32)
    C, H = U.shape
    if how == "pca":
        t = Linear(C, H, bias=False)
        t.weight.data[...] = U.T
        t.weight.requires_grad = False
        return None, t
    if how == "learned":
        s = Linear(H, C, bias=True)
        s.weight.data[...] = U
        return s, None
    raise ValueError(f"--width-loss: expected one of {', '.join(WIDTH_LOSSES)}, got {how!r}")
