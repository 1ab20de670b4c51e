"""A tiny preset per suite (conf/tiny_atari.yaml, tiny_metaworld.yaml, tiny_distracted.yaml): each runs to
its end as shipped and logs the suite's score."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRESETS = {
    "tiny_atari": ("hwm-tiny-atari", "eval/human_normalized_score"),
    "tiny_metaworld": ("hwm-tiny-metaworld", "eval/success_rate"),
    "tiny_distracted": ("hwm-tiny-distracted", "eval/return"),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_suites_tiny_preset_runs_to_its_end(
    preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread_seeded: None
) -> None:
    import yaml
    from mlflow.tracking import MlflowClient

    from hwm.cli.main import main

    config = REPO / "conf" / f"{preset}.yaml"
    experiment, score = PRESETS[preset]
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # absolute: MLflow caches stores by URI
    args = ["fit", "--config", str(config), "--trainer.logger.init_args.tracking_uri", uri]
    assert main([*args, "--trainer.enable_progress_bar", "false"]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED" and score in run.data.metrics
    budget = yaml.safe_load(config.read_text())["data"]["total_frames"]
    assert run.data.metrics["progress/env_frames"] == budget and run.data.metrics["progress/updates"] > 0
