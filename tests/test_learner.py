"""The world-model learner in-process: what it logs under each weighting, GradNorm without a continue head,
and the held-out errors it scores."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from fakes import RecordingStopBoard
from hwm.data.offline import OfflineDataModule
from hwm.learner import WorldModelLearner
from hwm.models.world_model import WorldModel

TINY = {"deter": 16, "hidden": 16, "stoch": 4, "classes": 4, "cnn_depth": 4, "mlp_units": 16, "mlp_layers": 1}


class Sink:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def write(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(s, m[key]) for s, m in self.rows if key in m]


def _fit(
    dataset: Path, updates: int = 6, continue_head: bool = False, **model: object
) -> tuple[WorldModelLearner, Sink]:
    L.seed_everything(0, verbose=False)
    data = OfflineDataModule(
        dataset=str(dataset), heldout_episodes=2, total_updates=updates, eval_every=3, batch_size=4, seq_len=6
    )
    world_model = partial(WorldModel, continue_head=continue_head, **TINY)
    learner = WorldModelLearner(data.env_info, world_model=world_model, log_every=1, **model)  # type: ignore[arg-type]
    sink = Sink()
    learner.attach(stream=data, stops=RecordingStopBoard(), sink=sink)
    data.attach_scorer(learner)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(learner, datamodule=data)
    assert data.stream_finished and learner.updates == updates
    return learner, sink


@pytest.mark.usefixtures("one_torch_thread_seeded")
def test_weightings_log_the_weights_they_claim(episode_dataset: Path) -> None:
    cases = {
        "reward_only": ({"harmonizer_mode": "fixed", "harmonizer_weights": {"obs": 0.0}}, (0.0, 1.0, 1.0)),
        "fixed_r10": ({"harmonizer_mode": "fixed", "harmonizer_weights": {"reward": 10.0}}, (1.0, 10.0, 1.0)),
        "off": ({"harmonizer_mode": "off"}, (1.0, 1.0, 1.0)),
    }
    for name, (settings, weights) in cases.items():
        _, sink = _fit(episode_dataset, **settings)
        for task, weight in zip(("obs", "reward", "dynamics"), weights, strict=True):
            logged = [v for _, v in sink.series(f"harmonizer/weight_{task}")]
            assert len(logged) == 6 and logged == pytest.approx([weight] * 6), (name, task, logged)


@pytest.mark.usefixtures("one_torch_thread_seeded")
def test_reward_only_never_trains_the_decoder(episode_dataset: Path) -> None:
    L.seed_everything(0, verbose=False)
    before = WorldModelLearner(
        OfflineDataModule(dataset=str(episode_dataset), heldout_episodes=2, seq_len=6).env_info,
        world_model=partial(WorldModel, continue_head=False, **TINY),
    )
    start = {k: v.clone() for k, v in before.world_model.decoder.state_dict().items()}
    learner, _ = _fit(
        episode_dataset, harmonizer_mode="fixed", harmonizer_weights={"obs": 0.0}, weight_decay=0.0
    )
    # Same seed, same initial weights; Adam moves nothing that gets no gradient.
    after = learner.world_model.decoder.state_dict()
    assert all(torch.equal(start[k], after[k]) for k in start)


@pytest.mark.usefixtures("one_torch_thread_seeded")
def test_gradnorm_and_learnable_modes_without_a_continue_head(episode_dataset: Path) -> None:
    for mode in ("gradnorm", "rectified", "unrectified"):
        _, sink = _fit(episode_dataset, harmonizer_mode=mode, harmonizer_lr=0.05)
        weights = [v for _, v in sink.series("harmonizer/weight_reward")]
        assert weights[0] == pytest.approx(1.0) and weights[-1] != pytest.approx(1.0), (mode, weights)
        # Only GradNorm reads (and logs) the tasks' gradient norms; the continue loss is not a task.
        norms = {k for _, m in sink.rows for k in m if k.startswith("harmonizer/grad_norm_")}
        expected = {f"harmonizer/grad_norm_{t}" for t in ("obs", "reward", "dynamics")}
        assert norms == (expected if mode == "gradnorm" else set()), (mode, norms)


@pytest.mark.usefixtures("one_torch_thread_seeded")
def test_heldout_errors_are_logged_at_the_updates_they_were_measured(episode_dataset: Path) -> None:
    _, sink = _fit(episode_dataset, updates=7)
    assert [s for s, _ in sink.series("heldout/reward_mse")] == [0, 3, 6, 7]
    assert [s for s, _ in sink.series("loss/reward")] == list(range(1, 8))
    steps = [s for s, _ in sink.rows]
    assert steps == sorted(set(steps))  # one write per update: the held-out errors join that update's
