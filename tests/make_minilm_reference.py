"""Make tests/data/minilm_reference.npz: sentence embeddings of all-MiniLM-L6-v2 computed by sentence-transformers.

Run once (the dump is committed, so CI needs no sentence-transformers):

    minidistil fetch all-MiniLM-L6-v2
    python tests/make_minilm_reference.py            # needs sentence-transformers (and torch)

sentence-transformers runs the checkpoint as its modules.json says: Transformer (max_seq_length from
sentence_bert_config.json) -> mean Pooling over non-padding tokens (1_Pooling/config.json) -> L2 Normalize.
The dump holds the sentences, their token ids as transformers' tokenizer gives them, the embeddings (float32),
and the versions that made them. tests/test_minilm.py compares minidistil against it.
`--method transformers` computes the same pipeline with transformers + the documented pooling instead, for
machines where sentence-transformers cannot be installed without changing torch.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "data" / "minilm_reference.npz"

SENTENCES = [
    "The cat sits on the mat.",
    "A man is playing a guitar on the stage while the crowd sings along.",
    "Distillation trains a small student network to imitate a large teacher.",
    "",
    "Café déjà vu: naïve résumé, 東京, and emoji 🙂 tokens!",
    "Short.",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the fetched all-MiniLM-L6-v2)")
    ap.add_argument("--method", choices=["sentence-transformers", "transformers"], default="sentence-transformers")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from minidistil.io import hub
    model_dir = Path(args.model) if args.model else hub.fetch("all-MiniLM-L6-v2")

    import torch
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="np")
    if args.method == "sentence-transformers":
        import sentence_transformers
        st = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
        emb = st.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
        version = f"sentence-transformers {sentence_transformers.__version__}"
    else:
        model = transformers.AutoModel.from_pretrained(model_dir).eval()
        with torch.no_grad():
            h = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).last_hidden_state.numpy()
        m = enc["attention_mask"][..., None].astype(np.float32)
        emb = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        version = "transformers + mean pooling + L2 normalise"
    np.savez_compressed(
        args.out, sentences=np.array(SENTENCES), input_ids=enc["input_ids"].astype(np.int64),
        attention_mask=enc["attention_mask"].astype(np.int64), embeddings=np.asarray(emb, dtype=np.float32),
        made_by=np.array(f"{version}; transformers {transformers.__version__}; torch {torch.__version__}"))
    print(f"wrote {args.out}: {len(SENTENCES)} sentences, embeddings {emb.shape}, by {version}")


if __name__ == "__main__":
    main()
