"""BERT (Devlin et al., 2018): the Post-LN Transformer encoder, module for module as Hugging Face names it, so a
`transformers` checkpoint loads by name.

    x = LN(word[ids] + type[token_type_ids] + pos[0..T-1])                  embeddings
    for each layer:
        a = LN(x + Wo · MultiHeadAttention(Wq x, Wk x, Wv x, mask))         attention.self / attention.output
        x = LN(a + W2 · gelu(W1 a + b1))                                    intermediate / output
    pooler = tanh(Wp x[:, 0] + bp)                                          the [CLS] token

Dropout (p = hidden_dropout_prob) follows the embeddings, the attention output projection and the FFN output, and
dropout with p = attention_probs_dropout_prob on the attention probabilities (inside the attention kernel, its mask
regenerated from a seed in backward), in training mode only.

Shapes: B batch, T tokens, C hidden_size, H heads, D = C / H, F intermediate_size, V vocab_size, K labels.
Inputs are numpy integer arrays; every output is a Tensor.
"""
from __future__ import annotations

import numpy as np

from minidistil.core import functional as F
from minidistil.core import losses
from minidistil.core.autograd import Tensor
from minidistil.core.config import BertConfig
from minidistil.kernels import _checks
from minidistil.core.nn import (Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, Parameter, PreTrainedModel,
                           Tanh, check_input_ids, extend_mask, labels_at, position_ids, stack_linears,
                           take_logit_rows, to_device_of)
from minidistil.core.outputs import (BaseModelOutputWithPooling, MaskedLMOutput, MultipleChoiceModelOutput,
                                QuestionAnsweringModelOutput, SequenceClassifierOutput, TokenClassifierOutput)


class BertEmbeddings(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        C = config.hidden_size
        self.word_embeddings = Embedding(config.vocab_size, C, padding_idx=config.pad_token_id)  # (V, C)
        self.position_embeddings = Embedding(config.max_position_embeddings, C)                 # (512, C)
        self.token_type_embeddings = Embedding(config.type_vocab_size, C)                        # (2, C)
        self.LayerNorm = LayerNorm(C, config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.max_positions = config.max_position_embeddings

    def forward(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> Tensor:
        """input_ids, token_type_ids (B, T): checked by the caller (BertModel.forward); on the model's device."""
        B, T = tuple(input_ids.shape)
        pos = to_device_of(position_ids(B, T, self.max_positions), self)        # (B, T) 0..T-1, in range
        words = self.word_embeddings(input_ids, "input_ids", checked=True)      # (B, T, C)
        types = self.token_type_embeddings(token_type_ids, "token_type_ids", checked=True)  # (B, T, C)
        positions = self.position_embeddings(pos, checked=True)                 # (B, T, C)
        # LN(words + (types + positions)): adding the two small tables first makes a distilled student, whose
        # position table has token type 0 folded in, reproduce this sum bit for bit (see distill.py)
        x = self.LayerNorm(words, residual=types + positions)
        return self.dropout(x)


class BertSelfAttention(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        C = config.hidden_size
        self.n_heads = config.num_attention_heads
        self.query = Linear(C, C)
        self.key = Linear(C, C)
        self.value = Linear(C, C)
        stack_linears(self.query, self.key, self.value)                         # one (3C, C) weight underneath
        self.attention_dropout = config.attention_probs_dropout_prob

    def forward(self, x: Tensor, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        # q, k, v = query(x), key(x), value(x) (B, T, C) each, as one GEMM; then attention over the H heads
        return F.projected_attention(x, (self.query.weight, self.key.weight, self.value.weight),
                                     (self.query.bias, self.key.bias, self.value.bias), mask, self.n_heads,
                                     self.attention_dropout, self.training)  # (B, T, C), probs (B, H, T, T)


class BertSelfOutput(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)), residual=x)          # LN(x + Wo h)  (B, T, C)


class BertAttention(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: Tensor, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        h, probs = self.self(x, mask)
        return self.output(h, x), probs


class BertIntermediate(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        h = F.linear(x, self.dense.weight)                                      # (B, T, F) = x W1^T
        return F.bias_gelu(h, self.dense.bias)                                  # gelu(h + b1), one fused pass


class BertOutput(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, h: Tensor, a: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)), residual=a)          # LN(a + W2 h)  (B, T, C)


class BertLayer(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: Tensor, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        a, probs = self.attention(x, mask)                                      # (B, T, C)
        return self.output(self.intermediate(a), a), probs                      # (B, T, C)


class BertEncoder(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])


class BertPooler(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.activation = Tanh()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.dense(x[:, 0]))                             # (B, C) from the [CLS] token


class BertPreTrainedModel(PreTrainedModel):
    config_class = BertConfig
    base_model_prefix = "bert"


class BertModel(BertPreTrainedModel):
    """The bare encoder: last_hidden_state (B, T, C) and pooler_output (B, C)."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> BaseModelOutputWithPooling:
        cfg = self.config
        input_ids = check_input_ids(input_ids, cfg.vocab_size)                  # (B, T)
        B, T = input_ids.shape
        mask = extend_mask(attention_mask, (B, T))                              # (B, T) 1 = token, 0 = padding
        if token_type_ids is None:
            token_type_ids = np.zeros((B, T), dtype=np.int64)
        token_type_ids = np.asarray(token_type_ids)
        if token_type_ids.shape != (B, T):
            raise ValueError(f"token_type_ids: expected shape {(B, T)} (that of input_ids), got "
                             f"{token_type_ids.shape}")
        _checks.check_ids("token_type_ids", token_type_ids, cfg.type_vocab_size)
        token_type_ids = np.ascontiguousarray(token_type_ids, dtype=np.int64)
        # on a GPU, ids, token types and mask go to the device here, once per batch; the kernels use them in place
        input_ids, token_type_ids, mask = (to_device_of(a, self) for a in (input_ids, token_type_ids, mask))

        x = self.embeddings(input_ids, token_type_ids)                          # (B, T, C)
        hidden_states, attentions = [x], []
        for layer in self.encoder.layer:
            x, probs = layer(x, mask)                                           # (B, T, C), (B, H, T, T)
            if output_hidden_states:
                hidden_states.append(x)
            if output_attentions:  # kept only when asked: at T = 512 the 6 layers' probs are 600 MB
                attentions.append(probs)
        pooled = self.pooler(x) if self.pooler is not None else None            # (B, C)
        return BaseModelOutputWithPooling(
            last_hidden_state=x, pooler_output=pooled,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None)


# ---- heads ----------------------------------------------------------------------------------------------------

class BertPredictionHeadTransform(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        h = F.bias_gelu(F.linear(x, self.dense.weight), self.dense.bias)        # gelu(W x + b)  (B, T, C)
        return self.LayerNorm(h)


class BertLMPredictionHead(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = Linear(config.hidden_size, config.vocab_size)            # weight tied to word_embeddings
        self.bias = Parameter(np.zeros(config.vocab_size, dtype=np.float32))   # decoder.bias is this one

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x))                                  # (B, T, V) = h E^T + bias


class BertOnlyMLMHead(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictions(x)


def _hidden(out):
    return dict(hidden_states=out.hidden_states, attentions=out.attentions)


class BertForMaskedLM(BertPreTrainedModel):
    """Masked language modelling: logits (B, T, V); loss = cross entropy over the labels != -100.

    logits_rows (not in transformers; for training and distillation): (M,) flat indices b * T + t of the positions
    whose logits a loss reads: the head runs on those M rows only, logits are (M, V) and the loss is over labels
    at those rows. The default, None, computes every position, as transformers does."""

    tied_weights = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                    "cls.predictions.decoder.bias": "cls.predictions.bias"}

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.tie_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=False, output_attentions=False, logits_rows=None) -> MaskedLMOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions)
        x = out.last_hidden_state                                               # (B, T, C)
        if logits_rows is not None:
            x = take_logit_rows(x, logits_rows, self)                           # (M, C) x at the rows asked for
        logits = self.cls(x)                                                    # (B, T, V) or (M, V)
        loss = None
        if labels is not None:
            V = self.config.vocab_size
            targets = (np.asarray(labels, dtype=np.int64).reshape(-1) if logits_rows is None
                       else labels_at(labels, logits_rows))                     # (B*T,) or (M,)
            loss = losses.cross_entropy(logits.reshape(-1, V), targets)
        return MaskedLMOutput(loss=loss, logits=logits, **_hidden(out))


class BertForSequenceClassification(BertPreTrainedModel):
    """logits (B, K) = W dropout(pooler_output) + b; the loss follows config.problem_type (HF's rule)."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(p)
        self.classifier = Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=False, output_attentions=False) -> SequenceClassifierOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions)
        logits = self.classifier(self.dropout(out.pooler_output))              # (B, K)
        loss = None
        if labels is not None:
            loss = losses.sequence_classification_loss(logits, labels, self.config.problem_type)
        return SequenceClassifierOutput(loss=loss, logits=logits, **_hidden(out))


class BertForTokenClassification(BertPreTrainedModel):
    """logits (B, T, K) per token; loss = cross entropy over labels != -100."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(p)
        self.classifier = Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=False, output_attentions=False) -> TokenClassifierOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions)
        logits = self.classifier(self.dropout(out.last_hidden_state))          # (B, T, K)
        loss = None
        if labels is not None:
            K = self.config.num_labels
            loss = losses.cross_entropy(logits.reshape(-1, K), np.asarray(labels, dtype=np.int64).reshape(-1))
        return TokenClassifierOutput(loss=loss, logits=logits, **_hidden(out))


class BertForQuestionAnswering(BertPreTrainedModel):
    """Extractive QA: start_logits, end_logits (B, T); loss = (CE(start) + CE(end)) / 2."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"config.num_labels: question answering needs 2 (start, end), got {config.num_labels}")
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = Linear(config.hidden_size, 2)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None,
                end_positions=None, output_hidden_states=False, output_attentions=False):
        out = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions)
        logits = self.qa_outputs(out.last_hidden_state)                         # (B, T, 2)
        start_logits, end_logits = logits[:, :, 0], logits[:, :, 1]             # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = losses.span_loss(start_logits, end_logits, start_positions, end_positions)
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                            **_hidden(out))


class BertForMultipleChoice(BertPreTrainedModel):
    """input_ids (B, K, T): each choice encoded on its own; logits (B, K) = W pooler_output + b."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(p)
        self.classifier = Linear(config.hidden_size, 1)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=False, output_attentions=False) -> MultipleChoiceModelOutput:
        ids = np.asarray(input_ids)
        if ids.ndim != 3:
            raise ValueError(f"input_ids: expected (batch, choices, tokens), got shape {ids.shape}")
        B, K, T = ids.shape
        flat = lambda a: None if a is None else np.asarray(a).reshape(B * K, T)  # noqa: E731
        out = self.bert(flat(ids), flat(attention_mask), flat(token_type_ids), output_hidden_states,
                        output_attentions)
        logits = self.classifier(self.dropout(out.pooler_output)).reshape(B, K)  # (B*K, 1) -> (B, K)
        loss = None
        if labels is not None:
            loss = losses.cross_entropy(logits, np.asarray(labels, dtype=np.int64).reshape(-1))
        return MultipleChoiceModelOutput(loss=loss, logits=logits, **_hidden(out))
