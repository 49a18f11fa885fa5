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
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

MB = 2**20
TEXT_LIMIT = 64 * MB     # a text file a user names: --file, standard input, --context @FILE, a corpus file
JSON_LIMIT = 256 * MB    # a JSON data file (SQuAD's training set is 30-42 MB)
CONFIG_LIMIT = 16 * MB   # config.json and the other small JSON files of a checkpoint
DATA_LIMIT = 1024 * MB   # a table or CoNLL file, read line by line
LINE_LIMIT = 16 * MB     # one line of such a file
_PIECE = MB              # reads go in pieces of this size, so a file that never ends stops at its limit


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


def read_limited(f, limit: int, name: str) -> bytes:
    """At most `limit` bytes of the binary file object `f`, read in pieces; a ValueError naming `name` when there
    are more (a device such as /dev/zero, or a file too large to hold in memory)."""
    buf = bytearray()
    while True:
        piece = f.read(min(_PIECE, limit + 1 - len(buf)))
        if not piece:
            return bytes(buf)
        buf += piece
        if len(buf) > limit:
            raise ValueError(f"{name}: larger than the {limit / MB:g} MB this input may hold; give a smaller file")


def read_lines(path: str | os.PathLike, line_limit: int = LINE_LIMIT, limit: int = DATA_LIMIT):
    """Yield the lines of the UTF-8 text file `path`, each with its line ending (a leading byte-order mark
    dropped), reading one line at a time: a ValueError names the file and the line when a line is longer than
    `line_limit` bytes or the file longer than `limit`, and the byte offset when it is not UTF-8."""
    name = str(path)
    with open(path, "rb") as f:
        offset, lineno = 0, 0
        while True:
            raw = f.readline(line_limit + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > line_limit:
                raise ValueError(f"{name}: line {lineno} is longer than {line_limit / MB:g} MB (a binary file or a "
                                 "device?)")
            if offset + len(raw) > limit:
                raise ValueError(f"{name}: larger than the {limit / MB:g} MB this input may hold; split it")
            bom = 3 if offset == 0 and raw.startswith(b"\xef\xbb\xbf") else 0
            try:
                text = str(memoryview(raw)[bom:], "utf-8")
            except UnicodeDecodeError as e:
                at = offset + bom + e.start
                raise ValueError(f"{name}: not UTF-8 text (byte 0x{raw[bom + e.start]:02x} at offset {at}, line "
                                 f"{lineno}); save it as UTF-8") from None
            offset += len(raw)
            yield text


def read_text(path: str | os.PathLike, limit: int = TEXT_LIMIT) -> str:
    """The UTF-8 text of file `path`, at most `limit` bytes (OSError when it cannot be read, ValueError when it is
    larger or not UTF-8)."""
    with open(path, "rb") as f:
        return decode_utf8(read_limited(f, limit, str(path)), str(path))


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


def read_json(path: str | os.PathLike, limit: int = CONFIG_LIMIT):
    """The JSON value in file `path` (at most `limit` bytes); a ValueError naming the file when it is larger, not
    UTF-8 or not JSON."""
    text = read_text(path, limit)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_json_object(path: str | os.PathLike, limit: int = CONFIG_LIMIT) -> dict:
    """The JSON object {...} in file `path`; a ValueError naming the file when it is not UTF-8, not JSON, or not
    an object."""
    d = read_json(path, limit)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object {{...}}, got a {type(d).__name__}")
    return d


# ----------------------------------------------------------------------------------------------------------------
# where outputs may go: every writer (safetensors_io.atomic_write, the training runs' folders) asks here


def _kind(mode: int) -> str:
    return ("folder" if stat.S_ISDIR(mode) else "block device" if stat.S_ISBLK(mode) else "character device"
            if stat.S_ISCHR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
            else "special file")


def output_target(path: str | os.PathLike) -> tuple[Path, bool]:
    """Where a write to `path` lands: (the file, through) where `through` says it is written through, not replaced.

    A regular file or a name that does not exist yet: its real path (symbolic links resolved, so a link is left a
    link and its target is what gets replaced). A character device or a FIFO (/dev/null, /dev/stdout, a named
    pipe): written through, opened as it is. A folder, a block device or a socket: a ValueError, so nothing that is
    not a file of ours is ever replaced."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode                     # follows links, /proc/self/fd/N included
    except FileNotFoundError:
        return Path(os.path.realpath(p)), False       # a new file (at the target of a dangling link)
    if stat.S_ISREG(mode):
        return Path(os.path.realpath(p)), False
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return p, True
    raise ValueError(f"{p}: is a {_kind(mode)}, not a file: refusing to write over it; give a file name")


def check_replaceable(path: str | os.PathLike):
    """A ValueError unless `path` is absent or a regular file: checked again just before a replace."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: became a {_kind(mode)} while it was written: not replaced")


def _same_or_within(a: Path, b: Path) -> str | None:
    if a == b:
        return "is"
    if a in b.parents:
        return "contains"
    if b in a.parents:
        return "is inside"
    return None


def check_apart(out: str | os.PathLike, inputs: dict, flag: str = "--out"):
    """A ValueError when the output folder or file `out` is one of `inputs` ({what: path or None}), holds one, or
    lies inside one (real paths compared): an output never replaces an input, whatever the flags."""
    o = Path(os.path.realpath(out))
    for what, p in inputs.items():
        for one in ([p] if isinstance(p, (str, os.PathLike)) else list(p or [])):
            rel = _same_or_within(o, Path(os.path.realpath(one)))
            if rel:
                raise ValueError(f"{flag} {out}: {rel} the {what} {one}; an output never replaces an input, "
                                 "give another folder")
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

    Where it lands is output_target's answer: a symbolic link's target is replaced (the link stays), a character
    device or FIFO (/dev/null, /dev/stdout) is written through, anything else that is not a regular file is refused
    with a ValueError; os.replace never lands on something that is not a regular file.
    """
    path, through = output_target(path)
    if through:
        return _write_through(path, write)
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
        check_replaceable(path)
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


def _write_through(path: Path, write) -> Path:
    """Write into an existing character device or FIFO as it is (opened without creating or replacing)."""
    try:
        with os.fdopen(os.open(path, os.O_WRONLY), "wb") as f:
            if callable(write):
                write(f)
            else:
                f.write(write.encode("utf-8") if isinstance(write, str) else write)
    except OSError as e:
        raise named_os_error(e, path) from None
    return path
