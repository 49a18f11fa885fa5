"""Exercise: WordPiece, one word.     Grade it:  minidistil grade wordpiece FILE

BERT's tokenizer splits each word (already lower-cased and split at spaces and punctuation) into pieces of its
vocabulary, greedily, LONGEST MATCH FIRST:

    start at the first character; take the longest prefix word[start:end] that is in the vocabulary (try end from
    len(word) down to start + 1); a piece that does not start the word is looked up as "##" + word[start:end];
    append it, continue from end.

If at some position no piece matches, the WHOLE word becomes [unk] (not the pieces found so far plus [unk]).
A word longer than max_chars characters is [unk] without trying.
Example with a vocabulary holding "token" and "##ization":  "tokenization" -> ["token", "##ization"].
Chapter 06 (tutorials/06_tokenization.py, section 2) explains it: try it before you read that section's code.

Arguments: word (str), vocab (a dict token -> id: use `piece in vocab`), unk (str), max_chars (int).
Return a list of str. Do not modify vocab.
The grader compares your pieces with the `tokenizers` library's WordPiece (the Rust code Hugging Face runs).
"""


def wordpiece(word, vocab, unk="[UNK]", max_chars=100):
    """word -> its WordPiece pieces, a list of str."""
    raise NotImplementedError
