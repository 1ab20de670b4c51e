"""Mixed precision and multi-process training (DDP over gloo on CPU) on the tiny preset."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from helpers import REPO_ROOT, TINY_CONFIG, LoggedRun, fit_and_load, load_script

DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


def _last(workdir: Path) -> dict:
    (run_dir,) = [p for p in (workdir / "checkpoints").iterdir() if p.is_dir()]
    return torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)


def _fingerprints(run: LoggedRun) -> list[str]:
    run.run = run.client.get_run(run.run_id)
    return run.run.data.tags["ddp.param_fingerprints"].split(",")


# bf16 on the V2 base takes the same mixed-precision paths as V3's (float32 islands, unscale before clip).
@pytest.mark.parametrize("base", [pytest.param("dreamerv2", marks=pytest.mark.slow), "dreamerv3"])
def test_bf16_mixed_fit_has_finite_losses(fit_tiny, base: str) -> None:
    run = fit_tiny("--trainer.precision", "bf16-mixed", "--model.base", base)
    assert run.run.data.params["trainer.precision"] == "bf16-mixed"
    losses = {k: v for k, v in run.run.data.metrics.items() if k.startswith("loss/")}
    assert {"loss/obs", "loss/reward", "loss/dynamics", "loss/actor", "loss/critic"} <= losses.keys()
    assert all(math.isfinite(v) for v in losses.values()), losses


@pytest.mark.slow  # model.compile is opt-in (off by default) and costs a minute of compiling on a CPU
@pytest.mark.covers_alone
def test_compiled_fit_trains_and_checkpoints_like_eager(fit_tiny, tmp_path: Path) -> None:
    run = fit_tiny("--model.compile", "true", "--model.base", "dreamerv3", "--data.total_frames", "240")
    assert run.run.data.params["model.compile"] == "True"
    losses = {k: v for k, v in run.run.data.metrics.items() if k.startswith("loss/")}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    # Compiled in place: the checkpoint has the same keys as an eager run's (no torch.compile wrappers),
    # so a run can be resumed with compile switched on or off.
    from hwm.cli.fit import build_cli

    keys = set(_last(tmp_path)["state_dict"])
    eager = build_cli(
        ["--config", str(TINY_CONFIG), "--model.base", "dreamerv3", "--trainer.logger", "false"]
    )
    assert keys == set(eager.model.state_dict())
    assert not any("_orig_mod" in k for k in keys)


def test_ddp_two_processes_then_resume(tmp_path: Path, mlflow_db_template: Path) -> None:
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    run = fit_and_load(tmp_path, ["--config", str(TINY_CONFIG), *DDP], timeout=400)
    prints = _fingerprints(run)
    assert len(prints) == 2 and prints[0] == prints[1]  # harmonizers included: every parameter, bitwise
    first = _last(tmp_path)
    data = first["ReplayDataModule"]
    # The budget and the train ratio count both processes: 400 frames = 100 agent steps in all, 60 of
    # them after the prefill, each update replaying 2 batches of 32 steps at train ratio 32 -> 30 updates.
    assert data["counters"]["env_frames"] == 400
    assert first["hwm"]["updates"] == 30
    assert len(data["ranks"]) == 2
    writes = [r["replay"]["write_count"] for r in data["ranks"]]
    # Each process holds its own 50 steps, plus the reset observation of each of its 3 episodes (20 steps each).
    assert writes == [53, 53]
    files = {c["file"].split("/")[1] for r in data["ranks"] for c in r["replay"]["chunks"]}
    assert files == {"rank0", "rank1"}

    # Resume under DDP (the checkpoint's config carries the strategy) with a larger budget.
    resumed = fit_and_load(
        tmp_path,
        ["--config", str(TINY_CONFIG), "--ckpt_path", "last", "--data.total_frames", "480"],
        timeout=400,
    )
    assert resumed.run_id == run.run_id
    final = _last(tmp_path)
    assert final["ReplayDataModule"]["counters"]["env_frames"] == 480
    assert final["hwm"]["updates"] == 40
    # 10 more steps each: the episode in flight at the checkpoint (mid-episode) continued, nothing restarted.
    assert [r["replay"]["write_count"] for r in final["ReplayDataModule"]["ranks"]] == [63, 63]
    prints = _fingerprints(resumed)
    assert prints[0] == prints[1]
    for key in resumed.run.data.metrics:
        steps = [m.step for m in resumed.client.get_metric_history(resumed.run_id, key)]
        assert all(a < b for a, b in zip(steps, steps[1:], strict=False)), key


def test_time_split_is_logged(tiny_run: LoggedRun) -> None:
    metrics = tiny_run.run.data.metrics
    for part in ("collect", "replay", "world_model", "harmonizer", "actor_critic"):
        assert metrics[f"time/{part}_ms"] >= 0.0, part
    assert metrics["time/world_model_ms"] > metrics["time/harmonizer_ms"]


def test_throughput_benchmark_reports_one_json_line(tmp_path: Path, monkeypatch, capsys) -> None:
    import json

    throughput = load_script(REPO_ROOT / "benchmarks" / "throughput.py")

    monkeypatch.chdir(tmp_path)
    assert (
        throughput.main(
            ["--config", str(TINY_CONFIG), "--updates", "5", "--warmup", "2", "--threads", "1", "--profile"]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["updates"] >= 5 and result["updates_per_s"] > 0 and result["env_frames_per_s"] > 0
    assert {"collect", "replay", "world_model", "actor_critic", "harmonizer"} <= result["split_ms"].keys()
    assert 0 <= result["harmonizer_share"] < 1
    profile = result["profile"]  # the last warm-up update, profiled
    assert 0 < profile["dense_s"] <= profile["aten_s"] <= profile["wall_s"]
    assert 0 < profile["dense_share"] < 1 and "aten::mm" in profile["top_ops_s"]
