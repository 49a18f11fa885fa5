"""Exercise wordpiece: BERT's WordPiece on one word (greedy longest match first, `##` continuations, the whole word
[UNK] when a piece cannot be matched or the word is too long), checked against the `tokenizers` library's WordPiece
model (the Rust implementation Hugging Face's BERT tokenizers run), on a small vocabulary.
"""
from minidistil.grading.engine import CaseOver, Exercise, Session

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "una", "##aff", "##able", "##a", "##ff", "##f",
         "token", "##ization", "##iz", "##ation", "t", "o", "k", "e", "n", "##o", "##k", "##e", "##n", "a", "##b",
         "distil", "##l", "##ation", "caf", "##é", "x", "##x", "##xx", "##xxx"]

# (label, word, max_chars)
CASES = [
    ("a word in the vocabulary: 'token'", "token", 100),
    ("two pieces: 'tokenization'", "tokenization", 100),
    ("longest match first: 'unaffable'", "unaffable", 100),
    ("a continuation that needs the longest piece: 'xxxxxxx'", "xxxxxxx", 100),
    ("a piece with no match makes the WHOLE word [UNK]: 'tokenq'", "tokenq", 100),
    ("no first piece at all: 'qtoken'", "qtoken", 100),
    ("a non-ASCII continuation: 'café'", "café", 100),
    ("exactly max_chars long (5) is kept: 'token'", "token", 5),
    ("exactly max_chars long (8) is still split: 'distillx'", "distillx", 8),
    ("longer than max_chars (8): [UNK]: 'distillation'", "distillation", 8),
]


def _truth(word, max_chars):
    from tokenizers.models import WordPiece
    model = WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]", max_input_chars_per_word=max_chars)
    return [t.value for t in model.tokenize(word)]


def _greedy(word, vocab, max_chars, *, shortest=False, prefix="##", partial_unk=False, limit_ge=False,
            no_limit=False):
    """WordPiece with one deliberate difference (for the hints)."""
    if not no_limit and (len(word) >= max_chars if limit_ge else len(word) > max_chars):
        return ["[UNK]"]
    pieces, start = [], 0
    while start < len(word):
        ends = range(start + 1, len(word) + 1) if shortest else range(len(word), start, -1)
        for end in ends:
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                break
        else:
            if partial_unk:
                return pieces + ["[UNK]"]
            return ["[UNK]"]
        pieces.append(piece)
        start = end
    return pieces


def run(s: Session):
    vocab = {t: i for i, t in enumerate(VOCAB)}
    for label, word, max_chars in CASES:
        expected = _truth(word, max_chars)
        variants = {
            "match the LONGEST piece first: try word[start:end] with end from len(word) down, not up":
                dict(shortest=True),
            "continuation pieces (not at the start of the word) are looked up with the '##' prefix":
                dict(prefix=""),
            "when a piece cannot be matched, the WHOLE word becomes ['[UNK]'], not the pieces so far + [UNK]":
                dict(partial_unk=True),
            "a word LONGER than max_chars is [UNK] (len(word) > max_chars); a word of exactly max_chars is split":
                dict(limit_ge=True),
            "a word longer than max_chars (100 by default) becomes ['[UNK]'] without trying to split it":
                dict(no_limit=True),
        }
        with s.case(label):
            got = s.call("wordpiece", word, dict(vocab), "[UNK]", max_chars)
            if not isinstance(got, list) or not all(isinstance(p, str) for p in got):
                s.check.fail(f"expected a list of str, got {type(got).__name__}",
                             "return the pieces as a list of strings, e.g. ['token', '##ization']",
                             where="return value")
                raise CaseOver
            if got == expected:
                continue
            s.check.fail(f"wordpiece({word!r}, max_chars={max_chars}) = {got}, expected {expected}",
                         where="return value")
            # a hint only when exactly one known mistake gives this output: where two coincide (both turn
            # 'tokenization' into ['[UNK]']) the output cannot say which slip it was, and another case will
            same = [hint for hint, kw in variants.items() if _greedy(word, vocab, max_chars, **kw) == got]
            if len(same) == 1:
                s.check.hints.append(same[0])


EXERCISE = Exercise("wordpiece", "WordPiece on one word: greedy longest match first, ## continuations, [UNK]",
                    ("wordpiece",), run)
