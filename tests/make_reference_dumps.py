"""Build tiny random `transformers` models and record what they compute, for the parity tests.

Run by hand (needs torch and transformers):   python tests/make_reference_dumps.py
It writes, for every model class minidistil implements, tests/data/tiny/<Class>/ holding
    config.json, model.safetensors    the checkpoint, as `save_pretrained` writes it
    reference.npz                      inputs, the weights w of the objective, the outputs and hidden states of
                                       transformers in eval mode, the loss with labels, and the gradient of
                                       sum(output * w) with respect to every parameter (keys "grad/<name>")
so that tests/test_models.py can check our models without torch. The same helpers build the models that the
torch-backed parity tests create on the fly (at a slightly larger size).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data" / "tiny"

BERT_ARCHS = ["BertModel", "BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification",
              "BertForQuestionAnswering", "BertForMultipleChoice"]
DISTILBERT_ARCHS = ["DistilBertModel", "DistilBertForMaskedLM", "DistilBertForSequenceClassification",
                    "DistilBertForTokenClassification", "DistilBertForQuestionAnswering",
                    "DistilBertForMultipleChoice"]
ARCHS = BERT_ARCHS + DISTILBERT_ARCHS

# the test size (vocab 99, width 32, 2 layers, 4 heads, FFN 37) and the smaller size of the committed dumps
TEST_SIZE = dict(vocab=99, width=32, layers=2, heads=4, ffn=37, positions=64)
DUMP_SIZE = dict(vocab=99, width=16, layers=2, heads=4, ffn=20, positions=16)


def num_labels_for(arch: str, problem_type: str | None) -> int:
    if arch.endswith("QuestionAnswering"):
        return 2
    if arch.endswith("SequenceClassification") and problem_type == "regression":
        return 1
    return 3


def hf_config(tf, arch: str, size=TEST_SIZE, problem_type: str | None = None):
    n_labels = num_labels_for(arch, problem_type)
    if arch.startswith("Bert"):
        cfg = tf.BertConfig(vocab_size=size["vocab"], hidden_size=size["width"], num_hidden_layers=size["layers"],
                            num_attention_heads=size["heads"], intermediate_size=size["ffn"],
                            max_position_embeddings=size["positions"], type_vocab_size=2, num_labels=n_labels,
                            problem_type=problem_type)
    else:
        cfg = tf.DistilBertConfig(vocab_size=size["vocab"], dim=size["width"], n_layers=size["layers"],
                                  n_heads=size["heads"], hidden_dim=size["ffn"],
                                  max_position_embeddings=size["positions"], num_labels=n_labels,
                                  problem_type=problem_type)
    cfg._attn_implementation = "eager"  # the plain softmax(QK^T)V path, and attentions can be returned
    return cfg


def build_hf(torch, tf, arch: str, size=TEST_SIZE, problem_type: str | None = None, seed: int = 0):
    """A random transformers model in eval mode. HF initialises biases to 0 and LayerNorm to (1, 0); we perturb
    every parameter so that a bias or a LayerNorm weight wired to the wrong place cannot go unnoticed."""
    torch.manual_seed(seed)
    model = getattr(tf, arch)(hf_config(tf, arch, size, problem_type)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def make_inputs(arch: str, vocab: int, seed: int = 0, problem_type: str | None = None) -> dict[str, np.ndarray]:
    """A padded batch: B=3 sequences of T=7 tokens, the 2nd with 2 padding tokens and the 3rd with 4 (multiple
    choice: 2 questions x 3 choices). Labels for the loss of each head (with some -100 for the token-level ones)."""
    rng = np.random.default_rng(seed)
    lead = (2, 3) if arch.endswith("MultipleChoice") else (3,)
    T = 7
    ids = rng.integers(1, vocab, (*lead, T))
    mask = np.ones((*lead, T), dtype=np.int64)
    flat_ids, flat_mask = ids.reshape(-1, T), mask.reshape(-1, T)
    for row in range(flat_ids.shape[0]):
        n_pad = [0, 2, 4][row % 3]
        if n_pad:
            flat_mask[row, T - n_pad:] = 0
            flat_ids[row, T - n_pad:] = 0  # the [PAD] id
    inputs = {"input_ids": ids, "attention_mask": mask}
    if arch.startswith("Bert"):
        tt = np.zeros((*lead, T), dtype=np.int64)
        tt[..., 4:] = 1  # the second segment
        inputs["token_type_ids"] = tt
    B = lead[0]
    k = num_labels_for(arch, problem_type)
    if arch.endswith("MaskedLM"):
        labels = rng.integers(0, vocab, (B, T))
        labels[rng.random((B, T)) < 0.4] = -100
        inputs["labels"] = labels
    elif arch.endswith("TokenClassification"):
        labels = rng.integers(0, k, (B, T))
        labels[mask == 0] = -100
        inputs["labels"] = labels
    elif arch.endswith("SequenceClassification"):
        if problem_type == "regression":
            inputs["labels"] = rng.standard_normal(B).astype(np.float32)
        elif problem_type == "multi_label_classification":
            inputs["labels"] = (rng.random((B, k)) < 0.5).astype(np.float32)
        else:
            inputs["labels"] = rng.integers(0, k, B)
    elif arch.endswith("MultipleChoice"):
        inputs["labels"] = rng.integers(0, lead[1], B)
    elif arch.endswith("QuestionAnswering"):
        inputs["start_positions"] = np.array([1, 3, 9])  # 9 > T: clamped to T and ignored, as in HF
        inputs["end_positions"] = np.array([2, 5, 2])
    return inputs


LABEL_KEYS = ("labels", "start_positions", "end_positions")


def output_names(arch: str) -> list[str]:
    """The outputs whose weighted sum is differentiated."""
    if arch == "BertModel":
        return ["last_hidden_state", "pooler_output"]
    if arch == "DistilBertModel":
        return ["last_hidden_state"]
    if arch.endswith("QuestionAnswering"):
        return ["start_logits", "end_logits"]
    return ["logits"]


def run_hf(torch, model, arch: str, inputs: dict, seed: int = 1) -> dict[str, np.ndarray]:
    """Outputs, hidden states, attentions, the loss, and the gradients of sum(out * w) and of the loss."""
    t = {k: torch.tensor(v) for k, v in inputs.items()}
    plain = {k: v for k, v in t.items() if k not in LABEL_KEYS}
    rec: dict[str, np.ndarray] = {f"input/{k}": v for k, v in inputs.items()}
    model.zero_grad()
    out = model(**plain, output_hidden_states=True, output_attentions=True)
    rng = np.random.default_rng(seed)
    objective = 0.0
    for name in output_names(arch):
        y = getattr(out, name)
        w = rng.standard_normal(tuple(y.shape)).astype(np.float32)
        rec[f"w/{name}"] = w
        rec[f"out/{name}"] = y.detach().numpy()
        objective = objective + (y * torch.tensor(w)).sum()
    for i, h in enumerate(out.hidden_states):
        rec[f"hidden/{i}"] = h.detach().numpy()
    for i, a in enumerate(out.attentions):
        rec[f"attention/{i}"] = a.detach().numpy()
    objective.backward()
    for name, p in model.named_parameters():
        rec[f"grad/{name}"] = np.zeros(tuple(p.shape), np.float32) if p.grad is None else p.grad.numpy().copy()
    if any(k in inputs for k in LABEL_KEYS):
        model.zero_grad()
        loss = model(**t).loss
        rec["loss"] = np.asarray(loss.item(), dtype=np.float64)
        loss.backward()
        for name, p in model.named_parameters():
            rec[f"loss_grad/{name}"] = (np.zeros(tuple(p.shape), np.float32) if p.grad is None
                                        else p.grad.numpy().copy())
    return rec


def main():
    import torch
    import transformers as tf
    for arch in ARCHS:
        folder = DATA / arch
        folder.mkdir(parents=True, exist_ok=True)
        model = build_hf(torch, tf, arch, DUMP_SIZE)
        model.save_pretrained(folder, safe_serialization=True)
        rec = run_hf(torch, model, arch, make_inputs(arch, DUMP_SIZE["vocab"]))
        rec = {k: v for k, v in rec.items() if not k.startswith("loss_grad/")}  # keep the dumps small
        np.savez_compressed(folder / "reference.npz", **rec)
        cfg = json.loads((folder / "config.json").read_text())
        print(f"{arch:<40} {sum(f.stat().st_size for f in folder.iterdir()) / 1e3:7.1f} kB  "
              f"(transformers {cfg.get('transformers_version')}, torch {torch.__version__})")
    total = sum(f.stat().st_size for f in DATA.rglob("*") if f.is_file())
    print(f"total {total / 1e3:.1f} kB in {DATA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
