"""tools/gpu_selfcheck.py: the runs it plans, what it refuses with exit status 2, and one real CPU run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tool_loader import TOOLS, load_tool

sc = load_tool("gpu_selfcheck")
wh = load_tool("wheelhouse")


def test_gpu_plan_is_cheetah_v2_and_v3_s_in_fp32_and_bf16() -> None:
    runs = sc.plan(cpu=False, updates=10, warmup=3)
    assert [(r.name, r.precision) for r in runs] == [
        ("dmc_cheetah", "32-true"),
        ("dmc_cheetah", "bf16-mixed"),
        ("dreamerv3_S", "32-true"),
        ("dreamerv3_S", "bf16-mixed"),
    ]
    v3 = runs[2].argv
    assert v3[:2] == ["--config", "conf/dmc_cheetah_v3.yaml"]
    assert v3[v3.index("--trainer.accelerator") + 1] == "gpu" and v3[v3.index("--updates") + 1] == "10"
    assert [r.precision for r in sc.plan(cpu=False, updates=1, warmup=1, bf16=False)] == ["32-true"] * 2
    cpu = sc.plan(cpu=True, updates=2, warmup=1)
    assert all(r.argv[r.argv.index("--trainer.accelerator") + 1] == "cpu" for r in cpu)
    assert cpu[2].argv[:4] == ["--config", "conf/tiny.yaml", "--config", "conf/tiny_v3.yaml"]


def test_gpu_mode_without_cuda_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(TOOLS / "gpu_selfcheck.py"), "--no-install", "--wheelhouse", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_selfcheck: error: torch ")
    assert "--cpu" in lines[0] and ("CPU-only build" in lines[0] or "sees no GPU" in lines[0])
    assert not list(tmp_path.iterdir())


def _manifest(tmp_path: Path, **changes: object) -> Path:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest = {"python": here, "assumed_installed": ["torch", "lightning"], **changes}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_check_python_refuses_another_python_or_a_missing_assumed_package(tmp_path: Path) -> None:
    with pytest.raises(sc.SelfCheckError, match="no manifest.json"):
        sc.check_python(tmp_path)
    assert sc.check_python(_manifest(tmp_path))["assumed_installed"] == ["torch", "lightning"]
    with pytest.raises(sc.SelfCheckError, match=r"for CPython 2\.7, .* rebuild with --python"):
        sc.check_python(_manifest(tmp_path, python="2.7"))
    with pytest.raises(sc.SelfCheckError, match="no-such-dist is not installed"):
        sc.check_python(_manifest(tmp_path, assumed_installed=["torch", "no-such-dist"]))


def test_runs_past_the_budget_are_reported_not_started(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.jsonl"
    assert sc.self_check(sc.plan(cpu=True, updates=1, warmup=1), tmp_path, out, budget_s=0) == 1
    assert out.read_text() == ""
    assert capsys.readouterr().out.count("FAILED: not started") == 4


# Slow: a real fit; tests/tools/test_wheelhouse_install.py (slow) also runs the whole CPU self-check.
@pytest.mark.slow
@pytest.mark.covers_alone
def test_one_cpu_run_writes_throughputs_json_line(tmp_path: Path) -> None:
    """The self-check's run of throughput.py from a wheelhouse's layout (installed from it: the slow test)."""
    for dest, src in wh.SELFCHECK_FILES.items():
        (tmp_path / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(wh.ROOT / src, tmp_path / dest)
    run = sc.plan(cpu=True, updates=1, warmup=1)[0]
    out = tmp_path / "selfcheck.jsonl"
    assert sc.self_check([run], tmp_path, out, budget_s=300) == 0
    (line,) = out.read_text().splitlines()
    result = json.loads(line)
    assert result["device"] == "cpu" and result["updates"] >= 1 and result["updates_per_s"] > 0
    assert result["config"][:2] == ["--config", "conf/tiny.yaml"] and "32-true" in result["config"]
