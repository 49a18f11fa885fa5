"""`minidistil bench --scenarios encode_student`: what a user of a distilled student does with it, encoding short
sentences, in sentences per second.

The student: all-MiniLM-L6-v2 cut to its first 3 layers (MiniLM's shape: 384 wide, 12 heads, FFN 1536; the
initialisation `minidistil distill` gives a 3-layer student), saved as a sentence-transformers folder (mean
pooling, normalised), fetched once (`minidistil fetch all-MiniLM-L6-v2`). N_SENTENCES short sentences (6-14 words,
drawn from a fixed word list), batches of BATCH, each framework encoding all of them per step, tokenisation and
pooling included:
    minidistil            minidistil.apps.pipelines.SentenceEncoder on the folder (float32)
    minidistil-int8       the same encoder with minidistil.quantize's int8 model
    sentence-transformers SentenceTransformer(folder) on PyTorch, float32
    onnxruntime           the student's BertModel exported with torch.onnx, run by ONNX Runtime (float32), with
                          transformers' fast tokenizer and the same mean pooling and normalisation in NumPy
    onnxruntime-int8      the same after onnxruntime.quantization.quantize_dynamic (QInt8 weights)
Timed interleaved (one step of each in turn after a pause), medians; each framework's embeddings are compared with
minidistil float32's (the smallest cosine over the sentences).
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

import numpy as np

N_SENTENCES = 256
BATCH = 32
LAYERS = 3
_WORDS = ("the a cat dog model sentence small fast slow reads writes runs sees house tree river city night day "
          "green red old new bright quiet loud people student teacher book page word table chair window music "
          "plays sings walks near under over with without before after because while").split()


def sentences(n: int | None = None, seed: int = 0) -> list[str]:
    """n (default N_SENTENCES) short sentences of 6-14 words, the same for a given seed."""
    n = N_SENTENCES if n is None else n
    r = np.random.default_rng(seed)
    return [" ".join(r.choice(_WORDS, size=int(r.integers(6, 15)))).capitalize() + "." for _ in range(n)]


def make_student(folder: str, layers: int = LAYERS) -> str:
    """all-MiniLM-L6-v2's first `layers` layers as a sentence-transformers folder at `folder`."""
    import transformers as tf

    from minidistil.io.loading import resolve
    src = resolve("all-MiniLM-L6-v2")
    model = tf.BertModel.from_pretrained(str(src))
    model.encoder.layer = model.encoder.layer[:layers]
    model.config.num_hidden_layers = layers
    model.save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "modules.json",
                 "sentence_bert_config.json", "config_sentence_transformers.json"):
        if (src / name).exists():
            shutil.copy(src / name, os.path.join(folder, name))
    if (src / "1_Pooling").is_dir():
        shutil.copytree(src / "1_Pooling", os.path.join(folder, "1_Pooling"), dirs_exist_ok=True)
    return folder


def _ort_encoder(folder: str, onnx_path: str, texts: list[str]):
    import onnxruntime as ort
    import transformers as tf
    tok = tf.AutoTokenizer.from_pretrained(folder)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])

    def encode():
        out = []
        for i in range(0, len(texts), BATCH):
            enc = tok(texts[i:i + BATCH], padding=True, truncation=True, max_length=256, return_tensors="np")
            h = sess.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                                "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
            m = enc["attention_mask"][..., None].astype(np.float32)
            e = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)          # mean pooling
            out.append(e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out)
    return encode


def _export(folder: str, path: str) -> str:
    import warnings

    import torch
    import transformers as tf
    bert = tf.BertModel.from_pretrained(folder).eval()

    class Encoder(torch.nn.Module):  # keyword arguments: BertModel's positional ones are not (ids, mask)
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    model = Encoder().eval()
    ids = torch.ones((2, 16), dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, torch.ones_like(ids)), path, dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": {0: "B", 1: "T"}, "attention_mask": {0: "B", 1: "T"},
                                        "last_hidden_state": {0: "B", 1: "T"}})
    return path


def steps(folder: str, texts: list[str], frameworks, tmp: str) -> dict:
    """framework -> a zero-argument callable encoding all `texts` (those whose packages are installed)."""
    out = {}
    from minidistil.apps.pipelines import SentenceEncoder
    enc = SentenceEncoder.from_pretrained(folder)
    if "minidistil" in frameworks:
        out["minidistil"] = lambda: enc.encode(texts, batch_size=BATCH)
    if "minidistil-int8" in frameworks:
        from minidistil.io.quantization import quantize
        enc8 = SentenceEncoder(quantize(enc.model), enc.tokenizer, max_length=enc.max_length, pooling=enc.pooling,
                               normalize=enc.normalize)
        out["minidistil-int8"] = lambda: enc8.encode(texts, batch_size=BATCH)
    if "sentence-transformers" in frameworks:
        try:
            from sentence_transformers import SentenceTransformer
            st = SentenceTransformer(folder, device="cpu")
            out["sentence-transformers"] = lambda: st.encode(texts, batch_size=BATCH, normalize_embeddings=True)
        except ImportError:
            pass
    if any(f.startswith("onnxruntime") for f in frameworks):
        try:
            import onnxruntime.quantization as oq
        except ImportError:
            return out
        p32 = _export(folder, os.path.join(tmp, "student.onnx"))
        if "onnxruntime" in frameworks:
            out["onnxruntime"] = _ort_encoder(folder, p32, texts)
        if "onnxruntime-int8" in frameworks:
            p8 = os.path.join(tmp, "student-int8.onnx")
            oq.quantize_dynamic(p32, p8, weight_type=oq.QuantType.QInt8)
            out["onnxruntime-int8"] = _ort_encoder(folder, p8, texts)
    return out


FRAMEWORKS = ("minidistil", "minidistil-int8", "sentence-transformers", "onnxruntime", "onnxruntime-int8")


def run(frameworks=FRAMEWORKS, repeat: int = 5, warmup: int = 2, pause: float = 0.3, log=print) -> dict:
    """Time every framework's encoding of the sentences, interleaved; returns {framework: {"ms", "per_s",
    "min_cos"}} and logs one line each."""
    texts = sentences()
    tmp = tempfile.mkdtemp(prefix="minidistil-encode-")
    try:
        folder = make_student(os.path.join(tmp, "student"))
        fns = steps(folder, texts, frameworks, tmp)
        missing = [f for f in frameworks if f not in fns]
        for f in missing:
            log(f"skip {f}: not installed")
        embs = {}
        for f, fn in fns.items():
            for _ in range(max(1, warmup)):
                embs[f] = np.asarray(fn(), dtype=np.float64)
        times = {f: [] for f in fns}
        for _ in range(repeat):
            for f, fn in fns.items():
                time.sleep(pause)
                t0 = time.perf_counter()
                fn()
                times[f].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {}
    ref = embs.get("minidistil")
    for f, ts in times.items():
        ms = statistics.median(ts) * 1e3
        cos = None
        if ref is not None:
            a, b = embs[f], ref
            cos = float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())
        res[f] = {"ms": ms, "per_s": len(texts) / ms * 1e3, "min_cos": cos}
        base = res.get("minidistil", {}).get("per_s")
        log(f"encode_student  {f:22s} {ms:9.1f} ms  {res[f]['per_s']:8.0f} sentences/s"
            + (f"  x {res[f]['per_s'] / base:.2f}" if base else "")
            + (f"  min cosine to minidistil float32 {cos:.5f}" if cos is not None else ""))
    return res


if __name__ == "__main__":
    print(f"{N_SENTENCES} sentences, batch {BATCH}, a {LAYERS}-layer MiniLM student; load {os.getloadavg()}")
    run()
    print(f"load {os.getloadavg()}")
