"""ruff over the package, its tests and scripts, with the rules in pyproject.toml ([tool.ruff]): pyflakes (unused
imports, undefined names), pycodestyle's errors and warnings, and lines of at most 140 characters."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    try:
        import ruff  # noqa: F401  (the dev extra installs it)
    except ImportError:
        if shutil.which("ruff") is None:
            pytest.fail("ruff is not installed: pip install -c constraints.txt -e '.[dev]'")
        return ["ruff"]
    return [sys.executable, "-m", "ruff"]


def test_ruff_finds_nothing():
    proc = subprocess.run([*_ruff(), "check", "--no-cache", "qtune", "tests", "scripts"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"ruff check qtune tests scripts:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"


def test_ruff_would_fail_on_an_overlong_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1  # " + "y" * 140 + "\n")
    proc = subprocess.run([*_ruff(), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "E501" in proc.stdout, proc.stdout
