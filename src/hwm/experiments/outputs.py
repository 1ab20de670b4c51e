"""What a comparison leaves behind (``hwm compare`` and ``--across-tasks`` alike): its files, and a summary
run in MLflow that holds them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hwm.experiments.runs import experiment_id, mlflow_client
from hwm.experiments.tracking import STUDY_TAG, SUMMARY_TAG


def write_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def log_summary(
    tracking_uri: str,
    experiment: str,
    files: Sequence[Path],
    *,
    metric: str,
    group_by: str,
    study: str | None,
) -> str:
    """Logs the comparison's files to a new summary run of the experiment (skipped by later comparisons)."""
    client = mlflow_client(tracking_uri)
    tags = {SUMMARY_TAG: "true", "compare.metric": metric, "compare.group_by": group_by}
    if study:
        tags[STUDY_TAG] = study
    name = f"compare {metric} by {group_by}" + (f" ({study})" if study else "")
    run = client.create_run(experiment_id(client, experiment), run_name=name, tags=tags)
    for path in files:
        client.log_artifact(run.info.run_id, str(path), artifact_path="compare")
    client.set_terminated(run.info.run_id)
    return run.info.run_id
