"""What a run records in MLflow before it trains: its resolved config (params and YAML) and its tags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.loggers import Logger, MLFlowLogger

from hwm.checkpoints.validate import IGNORED_KEYS, describe, flatten
from hwm.experiments.tracking import EXPERIMENT_KIND_TAG, source_tags


@dataclass(frozen=True)
class ResumeRecord:
    """What a resume adds to its run's record: which resume it is, from where, with which overrides."""

    number: int
    path: Path
    applied: list[tuple[str, Any, Any]]


def param_values(tree: Any) -> dict[str, Any]:
    """The config's leaves as MLflow params: lists as (truncated) text, which MLflow's params must be."""
    return {k: str(v)[:500] if isinstance(v, list) else v for k, v in flatten(tree).items()}


def log_run(
    logger: Logger | None,
    config: str,
    *,
    tags: dict[str, str],
    seed: int | None,
    resume: ResumeRecord | None = None,
) -> str | None:
    """Records the resolved config (params + ``config.yaml``) and tags; returns the MLflow run id, if any.

    On resume, params the run already has are left alone (MLflow params are write-once): the applied
    overrides go to a ``resume<N>.overrides`` tag and the config to ``config_resume<N>.yaml``.
    """
    if not isinstance(logger, MLFlowLogger):
        return None
    run_id = logger.run_id
    client = logger.experiment
    as_dict = {k: v for k, v in yaml.safe_load(config).items() if k not in IGNORED_KEYS}
    flat = {k: v for k, v in param_values(as_dict).items() if not k.startswith("trainer.logger")}
    if resume is None:
        logger.log_hyperparams(flat)
        client.log_text(run_id, config, "config.yaml")
        for key, value in {**tags, **source_tags(seed)}.items():
            client.set_tag(run_id, key, value)
        experiment = client.get_experiment(logger.experiment_id)
        if experiment.tags.get(EXPERIMENT_KIND_TAG[0]) != EXPERIMENT_KIND_TAG[1]:  # a study has set it
            client.set_experiment_tag(logger.experiment_id, *EXPERIMENT_KIND_TAG)
    else:
        existing = client.get_run(run_id).data.params
        logger.log_hyperparams({k: v for k, v in flat.items() if k not in existing})
        n = resume.number
        client.log_text(run_id, config, f"config_resume{n}.yaml")
        client.set_tag(run_id, "resumes", str(n))
        client.set_tag(run_id, f"resume{n}.from", str(resume.path))
        client.set_tag(run_id, f"resume{n}.overrides", describe(resume.applied, limit=50) or "none")
        client.update_run(run_id, status="RUNNING")
    return run_id
