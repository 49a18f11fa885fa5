"""Reading what a user hands over (text files, standard input, JSON files, arguments) with one-line errors.

Every error is a ValueError that names the file (or "<stdin>", "argument 2", ...) and where in it the problem is:
    notes.txt: not UTF-8 text (byte 0xff at offset 1234)
    config.json: not valid JSON (Expecting ',' delimiter: line 3 column 5 (char 31))
    config.json: expected a JSON object {...}, got a list
Python decodes undecodable command-line arguments (and, in its UTF-8 mode, standard input) into lone surrogates
("\udcff" for the byte 0xff); `check_unicode` finds those and names the byte they stand for.
"""
from __future__ import annotations

import json
import os


def brief(value, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters: for error messages about input that can be of any length."""
    r = repr(value)
    return r if len(r) <= limit else r[:limit - 3] + "..."


def decode_utf8(raw: bytes, name: str) -> str:
    """raw as UTF-8 text (a leading byte-order mark dropped); a ValueError naming `name` and the byte offset."""
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        return str(memoryview(raw)[bom:], "utf-8")
    except UnicodeDecodeError as e:
        at = bom + e.start
        raise ValueError(f"{name}: not UTF-8 text (byte 0x{raw[at]:02x} at offset {at}); save it as UTF-8") from None


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of file `path` (OSError when it cannot be read, ValueError when it is not UTF-8)."""
    with open(path, "rb") as f:
        return decode_utf8(f.read(), str(path))


def check_unicode(text: str, name: str) -> str:
    """`text` if it can be written as UTF-8; else a ValueError naming the lone surrogate and its position."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        c = ord(text[e.start])
        byte = f" (the undecodable byte 0x{c - 0xDC00:02x})" if 0xDC80 <= c <= 0xDCFF else ""
        raise ValueError(f"{name}: not valid text: a lone surrogate U+{c:04X}{byte} at character {e.start}") from None
    return text


def read_json(path: str | os.PathLike):
    """The JSON value in file `path`; a ValueError naming the file when it is not UTF-8 or not JSON."""
    text = read_text(path)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object {...} in file `path`; a ValueError naming the file when it is not UTF-8, not JSON, or not
    an object."""
    d = read_json(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object {{...}}, got a {type(d).__name__}")
    return d
