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
import tempfile
from collections.abc import Callable
from pathlib import Path


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


# ----------------------------------------------------------------------------------------------------------------
# writing


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status), else set and
    restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def named_os_error(e: OSError, path: str | os.PathLike) -> OSError:
    """`e` with the file it concerns: a write that fails (a full disk) reports no file name of its own."""
    if e.filename is not None and not str(e.filename).endswith(".tmp"):
        return e
    return OSError(e.errno, e.strerror or str(e), str(path))  # OSError(errno, ...) picks the matching subclass


def atomic_write(path: str | os.PathLike, write: Callable[[object], None] | bytes | str) -> Path:
    """Write a file atomically: temporary file in the same folder, flush + fsync, then os.replace.

    `write` is the bytes / text to write, or a function that receives the open binary file. The file gets the
    permissions a plain open() would give it (0666 less the umask; the temporary file starts as 0600). An OSError
    (a full disk, a read-only folder) names `path`; the file that was there before is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise named_os_error(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            if callable(write):
                write(f)
            else:
                f.write(write.encode("utf-8") if isinstance(write, str) else write)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise named_os_error(e, path) from None
        raise
    try:  # make the rename itself durable (not possible on every OS / filesystem)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path
