"""The code's style, as a test, so that the README's test command is all CI runs: `ruff check .` with the rules of
[tool.ruff] in pyproject.toml (the test extra pins ruff's minor version, so a new rule cannot fail CI by surprise)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing(oracle):
    oracle("ruff")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
