"""benchmarks/harmonizer_learning.py (the harmonizer's effect on learning): the summary from exported study
runs and the learning benchmark's rectified seeds, on known numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import REPO_ROOT, load_script

learning = load_script(REPO_ROOT / "benchmarks" / "harmonizer_learning.py")


def _write_curve(folder: Path, seed: int, returns: dict[int, float]) -> None:
    (folder / f"seed{seed}").mkdir(parents=True)
    rows = "".join(f"{frames},1.0,{value}\n" for frames, value in returns.items())
    (folder / f"seed{seed}" / "curve.csv").write_text("frames,minutes,return\n" + rows)


def _write_run(out: Path, arm: str, seed: int, returns: dict[int, float]) -> None:
    (out / "runs").mkdir(parents=True, exist_ok=True)
    record = {"arm": arm, "seed": seed, "eval_return": [[f, v] for f, v in returns.items()]}
    (out / "runs" / f"{arm}-s{seed}.json").write_text(json.dumps(record))


def test_each_arm_is_read_at_the_last_evaluation_at_or_before_each_mark(tmp_path: Path) -> None:
    bench, out = tmp_path / "learning", tmp_path / "out"
    for seed in range(3):  # the rectified seeds ran past the study's frames: they are cut there
        marks = {96_032: 500.0 + seed, 100_032: 600.0, 196_032: 900.0 + seed, 200_032: 1.0, 500_000: 2.0}
        _write_curve(bench, seed, marks)
    for seed in range(3):
        _write_run(out, "off", seed, {100_000: 300.0 + 10 * seed, 200_000: 700.0 + 10 * seed})
    _write_run(out, "unrectified", 0, {100_000: 100.0, 150_000: 150.0})  # stopped before 200k

    summary = learning.build_summary(out, bench, [100_000, 200_000])
    at100, at200 = summary["at_frames"]["100000"], summary["at_frames"]["200000"]
    assert at100["rectified"]["seeds"] == {"0": 500.0, "1": 501.0, "2": 502.0}
    assert at200["rectified"]["seeds"] == {"0": 900.0, "1": 901.0, "2": 902.0}
    assert at200["off"]["seeds"] == {"0": 700.0, "1": 710.0, "2": 720.0}
    assert at200["off"]["n"] == 3 and at200["off"]["iqm"] == pytest.approx(710.0)
    low, high = at200["off"]["ci"]
    assert 700.0 <= low <= 710.0 <= high <= 720.0
    # A run that did not get to a mark counts there as missing, not as its last value.
    assert at200["unrectified"] == {"seeds": {"0": None}, "n": 0, "iqm": None, "ci": None}
    assert at100["unrectified"]["iqm"] == 100.0 and at100["unrectified"]["ci"] == [None, None]
    table = (out / "table.md").read_text()
    assert (
        "| unrectified | 0 | 100 | – |" in table
        and "| off | 310 [300, 320] (3) | 710 [700, 720] (3) |" in table
    )
    assert (out / "curves.png").stat().st_size > 0


def test_summarize_without_exported_runs_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="run `export` first"):
        learning.build_summary(tmp_path, tmp_path, [100_000])


def test_the_harmonizers_sgd_optimizer_is_its_own_arm() -> None:
    assert learning.arm_of({"model.harmonizer_mode": "rectified", "model.harmonizer_optimizer": "sgd"}) == (
        "rectified+sgd"
    )
    assert learning.arm_of({"model.harmonizer_mode": "off", "model.harmonizer_optimizer": "adam"}) == "off"
