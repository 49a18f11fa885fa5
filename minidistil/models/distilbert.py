"""DistilBERT (Sanh et al., 2019): BERT with half the layers, no token types and no pooler, module for module as
Hugging Face names it.

    x = LN(word[ids] + pos[0..T-1])                                         embeddings (eps 1e-12)
    for each layer:
        a = LN(x + out_lin · MultiHeadAttention(q_lin x, k_lin x, v_lin x))   attention, sa_layer_norm
        x = LN(a + lin2 · gelu(lin1 a))                                       ffn, output_layer_norm

Dropout (p = dropout) follows the embeddings and the FFN output, as in HF (there is none after out_lin), and
dropout with p = attention_dropout on the attention probabilities (inside the attention kernel), in training only.

Shapes: B batch, T tokens, C dim, H n_heads, D = C / H, F hidden_dim, V vocab_size, K labels.
"""
from __future__ import annotations

import numpy as np

from minidistil.core import functional as F
from minidistil.core import losses
from minidistil.core.autograd import Tensor
from minidistil.core.config import DistilBertConfig
from minidistil.core.nn import (Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, PreTrainedModel, ReLU,
                           check_input_ids, extend_mask, labels_at, position_ids, sinusoidal_table, stack_linears,
                           take_logit_rows, to_device_of)
from minidistil.core.outputs import (BaseModelOutput, MaskedLMOutput, MultipleChoiceModelOutput,
                                QuestionAnsweringModelOutput, SequenceClassifierOutput, TokenClassifierOutput)

EPS = DistilBertConfig.layer_norm_eps  # 1e-12, hard-coded in DistilBERT


class Embeddings(Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        C = config.dim
        self.word_embeddings = Embedding(config.vocab_size, C, padding_idx=config.pad_token_id)  # (V, C)
        self.position_embeddings = Embedding(config.max_position_embeddings, C)                 # (512, C)
        if config.sinusoidal_pos_embds:  # a fixed table: no gradient
            self.position_embeddings.weight.requires_grad = False
        self.LayerNorm = LayerNorm(C, EPS)
        self.dropout = Dropout(config.dropout)
        self.max_positions = config.max_position_embeddings

    def forward(self, input_ids: np.ndarray) -> Tensor:
        """input_ids (B, T): checked against the vocabulary by the caller; on the model's device."""
        B, T = tuple(input_ids.shape)
        pos = to_device_of(position_ids(B, T, self.max_positions), self)        # (B, T) 0..T-1, in range
        words = self.word_embeddings(input_ids, "input_ids", checked=True)      # (B, T, C)
        positions = self.position_embeddings(pos, checked=True)                 # (B, T, C)
        return self.dropout(self.LayerNorm(words, residual=positions))          # LN(words + positions)


class MultiHeadSelfAttention(Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        C = config.dim
        self.n_heads = config.n_heads
        self.q_lin = Linear(C, C)
        self.k_lin = Linear(C, C)
        self.v_lin = Linear(C, C)
        stack_linears(self.q_lin, self.k_lin, self.v_lin)                       # one (3C, C) weight underneath
        self.out_lin = Linear(C, C)
        self.attention_dropout = config.attention_dropout

    def forward(self, x: Tensor, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        # q, k, v = q_lin(x), k_lin(x), v_lin(x) (B, T, C) each, as one GEMM; then attention over the H heads
        h, probs = F.projected_attention(x, (self.q_lin.weight, self.k_lin.weight, self.v_lin.weight),
                                         (self.q_lin.bias, self.k_lin.bias, self.v_lin.bias), mask, self.n_heads,
                                         self.attention_dropout, self.training)   # (B, T, C), (B, H, T, T)
        return self.out_lin(h), probs                                           # (B, T, C)


class FFN(Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.lin1 = Linear(config.dim, config.hidden_dim)
        self.lin2 = Linear(config.hidden_dim, config.dim)
        self.dropout = Dropout(config.dropout)

    def forward(self, a: Tensor) -> Tensor:
        h = F.bias_gelu(F.linear(a, self.lin1.weight), self.lin1.bias)          # gelu(lin1 a)  (B, T, F)
        return self.dropout(self.lin2(h))                                       # (B, T, C)


class TransformerBlock(Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.attention = MultiHeadSelfAttention(config)
        self.sa_layer_norm = LayerNorm(config.dim, EPS)
        self.ffn = FFN(config)
        self.output_layer_norm = LayerNorm(config.dim, EPS)

    def forward(self, x: Tensor, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        h, probs = self.attention(x, mask)
        a = self.sa_layer_norm(h, residual=x)                                   # LN(x + attention)  (B, T, C)
        return self.output_layer_norm(self.ffn(a), residual=a), probs          # LN(a + ffn(a))     (B, T, C)


class Transformer(Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.layer = ModuleList([TransformerBlock(config) for _ in range(config.n_layers)])


class DistilBertPreTrainedModel(PreTrainedModel):
    config_class = DistilBertConfig
    base_model_prefix = "distilbert"

    def _init_more(self, rng):
        if self.config.sinusoidal_pos_embds:
            emb = self.get_submodule(self._embeddings_path())
            emb.position_embeddings.weight.data[...] = sinusoidal_table(self.config.max_position_embeddings,
                                                                        self.config.dim)

    def __call__(self, *args, token_type_ids=None, **kwargs):
        """token_type_ids are accepted and ignored (DistilBERT has no token types), as transformers' DistilBERT
        does, so that model(**tok(texts)) works with a BERT tokenizer's output."""
        return super().__call__(*args, **kwargs)

    def _embeddings_path(self) -> str:
        return "embeddings" if isinstance(self, DistilBertModel) else "distilbert.embeddings"


class DistilBertModel(DistilBertPreTrainedModel):
    """The bare encoder: last_hidden_state (B, T, C)."""

    def __init__(self, config: DistilBertConfig):
        super().__init__(config)
        self.embeddings = Embeddings(config)
        self.transformer = Transformer(config)

    def forward(self, input_ids, attention_mask=None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> BaseModelOutput:
        input_ids = check_input_ids(input_ids, self.config.vocab_size)          # (B, T)
        B, T = input_ids.shape
        mask = extend_mask(attention_mask, (B, T))                              # (B, T) 1 = token, 0 = padding
        # on a GPU, ids and mask go to the device here, once per batch; every layer's kernels use them in place
        input_ids, mask = to_device_of(input_ids, self), to_device_of(mask, self)
        x = self.embeddings(input_ids)                                          # (B, T, C)
        hidden_states, attentions = [x], []
        for layer in self.transformer.layer:
            x, probs = layer(x, mask)                                           # (B, T, C), (B, H, T, T)
            if output_hidden_states:
                hidden_states.append(x)
            if output_attentions:  # kept only when asked: at T = 512 the 6 layers' probs are 600 MB
                attentions.append(probs)
        return BaseModelOutput(last_hidden_state=x,
                               hidden_states=tuple(hidden_states) if output_hidden_states else None,
                               attentions=tuple(attentions) if output_attentions else None)


def _hidden(out):
    return dict(hidden_states=out.hidden_states, attentions=out.attentions)


class DistilBertForMaskedLM(DistilBertPreTrainedModel):
    """logits (B, T, V) = vocab_projector(LN(gelu(vocab_transform(x)))); the projector's weight is the word
    embedding table. loss = cross entropy over labels != -100.

    logits_rows (not in transformers; for training): (M,) flat indices b * T + t of the positions whose logits a
    loss reads (e.g. the masked ones): the head runs on those M rows of x only, logits are (M, V) and the loss is
    over labels at those rows. The default, None, computes every position, as transformers does."""

    tied_weights = {"vocab_projector.weight": "distilbert.embeddings.word_embeddings.weight"}

    def __init__(self, config: DistilBertConfig):
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.vocab_transform = Linear(config.dim, config.dim)
        self.vocab_layer_norm = LayerNorm(config.dim, EPS)
        self.vocab_projector = Linear(config.dim, config.vocab_size)
        self.tie_weights()

    def forward(self, input_ids, attention_mask=None, labels=None, output_hidden_states=False,
                output_attentions=False, logits_rows=None) -> MaskedLMOutput:
        out = self.distilbert(input_ids, attention_mask, output_hidden_states, output_attentions)
        x = out.last_hidden_state                                               # (B, T, C)
        if logits_rows is not None:
            x = take_logit_rows(x, logits_rows, self)                           # (M, C) x at the rows asked for
        h = F.bias_gelu(F.linear(x, self.vocab_transform.weight), self.vocab_transform.bias)
        logits = self.vocab_projector(self.vocab_layer_norm(h))                 # (B, T, V) or (M, V)
        loss = None
        if labels is not None:
            V = self.config.vocab_size
            targets = (np.asarray(labels, dtype=np.int64).reshape(-1) if logits_rows is None
                       else labels_at(labels, logits_rows))                     # (B*T,) or (M,)
            loss = losses.cross_entropy(logits.reshape(-1, V), targets)
        return MaskedLMOutput(loss=loss, logits=logits, **_hidden(out))


class DistilBertForSequenceClassification(DistilBertPreTrainedModel):
    """logits (B, K) = classifier(dropout(relu(pre_classifier(x[:, 0])))); loss as config.problem_type says."""

    def __init__(self, config: DistilBertConfig):
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.pre_classifier = Linear(config.dim, config.dim)
        self.classifier = Linear(config.dim, config.num_labels)
        self.dropout = Dropout(config.seq_classif_dropout)
        self.relu = ReLU()

    def forward(self, input_ids, attention_mask=None, labels=None, output_hidden_states=False,
                output_attentions=False) -> SequenceClassifierOutput:
        out = self.distilbert(input_ids, attention_mask, output_hidden_states, output_attentions)
        pooled = self.relu(self.pre_classifier(out.last_hidden_state[:, 0]))  # (B, C) from the [CLS] token
        logits = self.classifier(self.dropout(pooled))                          # (B, K)
        loss = None
        if labels is not None:
            loss = losses.sequence_classification_loss(logits, labels, self.config.problem_type)
        return SequenceClassifierOutput(loss=loss, logits=logits, **_hidden(out))


class DistilBertForTokenClassification(DistilBertPreTrainedModel):
    """logits (B, T, K) per token; loss = cross entropy over labels != -100."""

    def __init__(self, config: DistilBertConfig):
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.dropout = Dropout(config.dropout)
        self.classifier = Linear(config.dim, config.num_labels)

    def forward(self, input_ids, attention_mask=None, labels=None, output_hidden_states=False,
                output_attentions=False) -> TokenClassifierOutput:
        out = self.distilbert(input_ids, attention_mask, output_hidden_states, output_attentions)
        logits = self.classifier(self.dropout(out.last_hidden_state))          # (B, T, K)
        loss = None
        if labels is not None:
            K = self.config.num_labels
            loss = losses.cross_entropy(logits.reshape(-1, K), np.asarray(labels, dtype=np.int64).reshape(-1))
        return TokenClassifierOutput(loss=loss, logits=logits, **_hidden(out))


class DistilBertForQuestionAnswering(DistilBertPreTrainedModel):
    """start_logits, end_logits (B, T) = qa_outputs(dropout(x)); loss = (CE(start) + CE(end)) / 2."""

    def __init__(self, config: DistilBertConfig):
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"config.num_labels: question answering needs 2 (start, end), got {config.num_labels}")
        self.distilbert = DistilBertModel(config)
        self.qa_outputs = Linear(config.dim, 2)
        self.dropout = Dropout(config.qa_dropout)

    def forward(self, input_ids, attention_mask=None, start_positions=None, end_positions=None,
                output_hidden_states=False, output_attentions=False) -> QuestionAnsweringModelOutput:
        out = self.distilbert(input_ids, attention_mask, output_hidden_states, output_attentions)
        logits = self.qa_outputs(self.dropout(out.last_hidden_state))          # (B, T, 2)
        start_logits, end_logits = logits[:, :, 0], logits[:, :, 1]             # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = losses.span_loss(start_logits, end_logits, start_positions, end_positions)
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                            **_hidden(out))


class DistilBertForMultipleChoice(DistilBertPreTrainedModel):
    """input_ids (B, K, T); logits (B, K) = classifier(dropout(relu(pre_classifier(x[:, 0]))))."""

    def __init__(self, config: DistilBertConfig):
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.pre_classifier = Linear(config.dim, config.dim)
        self.classifier = Linear(config.dim, 1)
        self.dropout = Dropout(config.seq_classif_dropout)
        self.relu = ReLU()

    def forward(self, input_ids, attention_mask=None, labels=None, output_hidden_states=False,
                output_attentions=False) -> MultipleChoiceModelOutput:
        ids = np.asarray(input_ids)
        if ids.ndim != 3:
            raise ValueError(f"input_ids: expected (batch, choices, tokens), got shape {ids.shape}")
        B, K, T = ids.shape
        mask = None if attention_mask is None else np.asarray(attention_mask).reshape(B * K, T)
        out = self.distilbert(ids.reshape(B * K, T), mask, output_hidden_states, output_attentions)
        pooled = self.relu(self.pre_classifier(out.last_hidden_state[:, 0]))  # (B*K, C)
        logits = self.classifier(self.dropout(pooled)).reshape(B, K)           # (B*K, 1) -> (B, K)
        loss = None
        if labels is not None:
            loss = losses.cross_entropy(logits, np.asarray(labels, dtype=np.int64).reshape(-1))
        return MultipleChoiceModelOutput(loss=loss, logits=logits, **_hidden(out))
