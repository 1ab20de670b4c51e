"""`hwm compare --at-frames N`: each run's value at (the last step at or before) N, compared as the final
values are; the learning study reads its returns at 100k / 200k / 300k frames this way."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from hwm.experiments.compare import tables_at
from hwm.experiments.runs import RunCurve


def _run(name: str, group: str, values: list[float]) -> RunCurve:
    steps = np.arange(1, len(values) + 1) * 100
    return RunCurve(name, name, group, steps, np.array(values), int(steps[-1]))


def test_until_keeps_the_values_logged_by_then() -> None:
    run = _run("a", "g", [1.0, 2.0, 3.0])
    assert run.until(250).final == 2.0 and run.until(250).frames == 200
    assert run.until(300).final == 3.0 and run.until(10_000).final == 3.0
    with pytest.raises(ValueError, match="nothing at or before 50"):
        run.until(50)


def test_tables_at_frames(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = [_run(f"r{i}", "rectified", [i, 10 + i, 20 + i]) for i in range(4)]
    runs += [_run(f"o{i}", "off", [i, 2 * i, 3 * i]) for i in range(4)]
    args = argparse.Namespace(
        metric="eval/return",
        group_by="model.harmonizer_mode",
        reps=100,
        seed=0,
        out=str(tmp_path),
        at_frames=[200, 50],
    )
    files = tables_at(runs, args)
    assert [f.name for f in files] == ["summary_at_200.json"]
    summary = json.loads(files[0].read_text())
    iqm = {g["group"]: g["iqm"] for g in summary["groups"]}
    assert iqm == pytest.approx({"off": 3.0, "rectified": 11.5})  # the middle two of (0, 2, 4, 6), (10..13)
    out, err = capsys.readouterr()
    assert "at 200 (each run's last eval/return at or before it):" in out
    assert "at 50: no run logged eval/return that early" in err
