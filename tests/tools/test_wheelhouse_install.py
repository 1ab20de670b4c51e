"""The wheelhouse built for this machine's Python installs into a fresh venv with pip --no-index, and the
self-check runs from it in CPU mode (slow: the build downloads ~60 MB, the four CPU runs take minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tool_loader import TOOLS, node_like_venv

pytestmark = pytest.mark.slow


@pytest.mark.timeout(2400)  # a build and an install from the package index, then four CPU runs
def test_wheelhouse_installs_offline_and_self_checks_on_cpu(tmp_path: Path) -> None:
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheelhouse = tmp_path / "wheelhouse"
    build = subprocess.run(
        [
            sys.executable,
            str(TOOLS / "wheelhouse.py"),
            "build",
            "--python",
            python_version,
            "--out",
            str(wheelhouse),
            "--check-torch",
            "2.13.0",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert "MiB" in build.stdout and not list(wheelhouse.glob("mlflow*"))
    # A node: torch and Lightning (with what they require) preinstalled, nothing else, no PYTHONPATH.
    python = node_like_venv(tmp_path / "node", ["lightning"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "selfcheck.jsonl"
    check = subprocess.run(
        [str(python), str(wheelhouse / "gpu_selfcheck.py"), "--cpu", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == 4 and all(r["device"] == "cpu" and r["updates"] >= 2 for r in results)
    assert {c for r in results for c in r["config"] if c in ("32-true", "bf16-mixed")} == {
        "32-true",
        "bf16-mixed",
    }
    where = subprocess.run(
        [str(python), "-c", "import hwm, importlib.util as u; print(hwm.__file__, u.find_spec('mlflow'))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(tmp_path / "node" / "venv") in where and where.strip().endswith("None")
