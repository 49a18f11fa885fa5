"""The mainline's layers (README, "Map of the code"): apps (and grading) -> train -> io -> models -> core -> kernels.

A module imports only from its own layer and the ones below, counting imports inside functions; no import cycle
between minidistil's modules; kernels/ imports nothing of the mainline. Checked twice: by import-linter's `layers`
contract (pyproject.toml, `lint-imports` in CI) and by this file's own walk over every module's syntax tree, and
both are shown to fail on a planted upward import.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RANK = {"kernels": 0, "core": 1, "models": 2, "io": 3, "train": 4, "apps": 5, "grading": 5}


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package under `root`: dotted name -> file (kernels/ through its link, as shipped)."""
    out = {}
    walk = os.walk(root / "minidistil", followlinks=True)
    files = [Path(d) / f for d, _, fs in walk for f in fs if f.endswith(".py")]
    for path in sorted(files):
        rel = path.relative_to(root).with_suffix("")
        if {"exercises", "tutorials", "__pycache__"} & set(rel.parts):   # data shipped in the package, not code
            continue
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The minidistil modules `name` imports anywhere in its file (module level, functions, classes)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` the module mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]        # minidistil.kernels.linear.X -> the module that defines X
            if t and t.startswith("minidistil") and t != name:
                found.add(t)
    return found


def layer(name: str) -> str | None:
    """The layer of a module; None for the package's front door (minidistil/__init__.py, the entry shims)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANK) else None


def check(root: Path) -> list[str]:
    """Every upward import and every import cycle in the package under `root`, as lines of text."""
    known = modules(root)
    graph = {n: imports(n, p, known) for n, p in known.items()}
    problems = []
    for n, deps in graph.items():
        ln = layer(n)
        if ln is None:
            continue
        for d in sorted(deps):
            ld = layer(d)
            # the front door (the package's __init__: exports, version) is the top: only apps may import it
            front = ld is None and RANK[ln] < RANK["apps"]
            if front or (ld is not None and RANK[ld] > RANK[ln]) or (ln == "kernels" and ld != "kernels"):
                problems.append(f"upward import: {n} ({ln}) imports {d} ({ld or 'the package front door'})")
    # cycles: strongly connected components of more than one module (iterative Tarjan)
    index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    scc = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        scc.append(w)
                        if w == v:
                            break
                    if len(scc) > 1:
                        sccs.append(sorted(scc))
    problems += [f"import cycle: {' <-> '.join(c)}" for c in sccs]
    return problems


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter's contract from pyproject.toml, on the package under `root`."""
    exe = shutil.which("lint-imports") or pytest.fail("lint-imports is not installed (pip install import-linter: "
                                                       "it is in the test extra)")
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([exe, "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def planted_copy(tmp_path: Path) -> Path:
    """The package copied to tmp_path (kernels/ resolved), with one upward import inside a function of core/nn.py."""
    shutil.copytree(ROOT / "minidistil", tmp_path / "minidistil", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "exercises", "resources"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    nn = tmp_path / "minidistil" / "core" / "nn.py"
    nn.write_text(nn.read_text(encoding="utf-8") + "\n\ndef _planted():\n    from minidistil.apps import cli\n"
                  "    return cli\n", encoding="utf-8")
    return tmp_path


def test_the_folders_are_the_layers():
    names = modules(ROOT)
    flat = [n for n in names if n.count(".") == 1 and layer(n) is None]
    assert set(flat) <= {"minidistil.distill", "minidistil.gpu_check"}, f"modules outside a layer: {flat}"
    for lay in ("core", "models", "io", "train", "apps"):
        assert any(n.startswith(f"minidistil.{lay}.") for n in names), lay


def test_no_upward_import_and_no_cycle():
    assert check(ROOT) == []


def test_the_check_fails_on_a_planted_upward_import_and_cycle(tmp_path):
    root = planted_copy(tmp_path)
    problems = check(root)
    assert "upward import: minidistil.core.nn (core) imports minidistil.apps.cli (apps)" in problems
    loss = root / "minidistil" / "core" / "losses.py"                 # a cycle inside one layer: losses <-> optim
    loss.write_text(loss.read_text(encoding="utf-8") + "\n\ndef _planted():\n    from minidistil.core import optim\n"
                    "    return optim\n", encoding="utf-8")
    optim = root / "minidistil" / "core" / "optim.py"
    optim.write_text(optim.read_text(encoding="utf-8") + "\n\ndef _planted():\n    from minidistil.core import losses"
                     "\n    return losses\n", encoding="utf-8")
    assert any(p.startswith("import cycle:") and "minidistil.core.losses" in p and "minidistil.core.optim" in p
               for p in check(root))


def test_kernels_never_import_the_mainline(tmp_path):
    root = planted_copy(tmp_path)
    gelu = root / "minidistil" / "kernels" / "gelu.py"
    gelu.write_text(gelu.read_text(encoding="utf-8") + "\n\ndef _planted():\n    import minidistil.core.nn\n",
                    encoding="utf-8")
    assert any(p.startswith("upward import: minidistil.kernels.gelu (kernels)") for p in check(root))


def test_the_import_linter_contract_passes():
    res = lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "layers" in res.stdout and "KEPT" in res.stdout


def test_the_import_linter_contract_fails_on_a_planted_upward_import(tmp_path):
    res = lint_imports(planted_copy(tmp_path))
    assert res.returncode != 0 and "BROKEN" in res.stdout, res.stdout + res.stderr
    assert "minidistil.core.nn -> minidistil.apps.cli" in res.stdout, res.stdout


if __name__ == "__main__":
    print("\n".join(check(ROOT)) or "no upward import, no cycle")
    sys.exit(0)
