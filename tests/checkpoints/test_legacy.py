"""A checkpoint written before hwm's package layout (flat modules: ``hwm.world_model.WorldModel``) resumes.

``tests/fixtures/legacy_run`` is the checkpoint folder of ``hwm fit --config conf/tiny.yaml`` made with the
flat layout (60 updates, 400 env frames); tests/fixtures/README.md names the commit and command.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from helpers import TINY_CONFIG, TINY_EXPERIMENT, run_hwm

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_run"


def test_a_checkpoint_of_the_flat_layout_resumes(tmp_path: Path) -> None:
    import mlflow

    old = torch.load(FIXTURE / "update-000000060.ckpt", map_location="cpu", weights_only=False)
    assert "hwm.world_model.WorldModel" in old["hwm"]["config"]  # the old class paths
    # Its MLflow run lived in a store that is not shipped: one like it, with a fresh run of that experiment.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment(TINY_EXPERIMENT))
    run_dir = tmp_path / "checkpoints" / run.info.run_id
    shutil.copytree(FIXTURE, run_dir, symlinks=True)
    old["hwm"]["run_id"] = run.info.run_id
    old["hwm"]["tracking_uri"] = uri
    torch.save(old, run_dir / "update-000000060.ckpt")

    args = ["fit", "--config", TINY_CONFIG, "--ckpt_path", run_dir, "--data.total_frames", "480"]
    args += ["--trainer.logger.init_args.tracking_uri", uri, "--trainer.enable_progress_bar", "false"]
    proc = run_hwm(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming MLflow run {run.info.run_id}" in proc.stderr

    final = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["ReplayDataModule"]["counters"]["env_frames"] == 480
    assert final["hwm"]["updates"] > 60
    assert "hwm.models.world_model.WorldModel" in final["hwm"]["config"]
    # The weights went on from the old ones: same names and shapes, new values.
    assert final["state_dict"].keys() == old["state_dict"].keys()
    assert any(not torch.equal(final["state_dict"][k], v) for k, v in old["state_dict"].items())
    history = client.get_metric_history(run.info.run_id, "progress/env_frames")
    assert max(m.step for m in history) == 480
