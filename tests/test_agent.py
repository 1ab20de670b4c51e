"""HarmonyDreamAgent's own update, run by a Lightning trainer on replayed batches: a step whose loss is not
finite is skipped by the agent (fp32, bf16) or by the grad scaler (16-mixed), counted and logged through the
metric buffer, and a run of them files a stop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from tensordict import TensorDict, TensorDictBase

from fakes import FakeStream, RecordingSink, RecordingStopBoard
from hwm.agent import HarmonyDreamAgent
from hwm.data.loader import stream_loader
from hwm.envs.common import EnvInfo
from hwm.models.actor_critic import ActorCritic
from hwm.models.world_model import WorldModel
from hwm.training.stop import EXIT_NONFINITE

B, T, A, OBS = 2, 6, 2, 5
ENV = EnvInfo(obs_shape=(OBS,), action_dim=A, discrete=False)
TINY_WM = dict(deter=16, hidden=16, stoch=4, classes=4, mlp_units=32, mlp_layers=1)

pytestmark = pytest.mark.usefixtures("one_torch_thread_seeded")


def _batch() -> TensorDict:
    is_first = torch.zeros(B, T, 1, dtype=torch.bool)
    is_first[:, 0] = True
    return TensorDict(
        {
            "observation": torch.randn(B, T, OBS),
            "action": torch.rand(B, T, A) * 2 - 1,
            "reward": torch.randn(B, T, 1),
            "is_first": is_first,
            "is_terminal": torch.zeros(B, T, 1, dtype=torch.bool),
        },
        batch_size=[B, T],
    )


def _agent(**kwargs: Any) -> HarmonyDreamAgent:
    return HarmonyDreamAgent(
        ENV,
        world_model=lambda obs, act: WorldModel(obs, act, **TINY_WM),
        actor_critic=lambda feat, act, discrete: ActorCritic(
            feat, act, discrete, units=16, layers=1, horizon=3
        ),
        log_every=1,
        **kwargs,
    )


class _Snapshots(L.Callback):
    """The world model's and the harmonizer's parameters after every update (update i at index i - 1)."""

    def __init__(self) -> None:
        self.after: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        assert isinstance(pl_module, HarmonyDreamAgent)
        if pl_module.updates == len(self.after):
            return  # the step that found the stream ended: no update
        params = {f"wm.{k}": v for k, v in pl_module.world_model.state_dict().items()}
        params.update({f"h.{k}": v for k, v in pl_module.harmonizer.state_dict().items()})
        self.after.append({k: v.detach().clone() for k, v in params.items()})


def _train(
    agent: HarmonyDreamAgent, updates: int, precision: str = "32-true"
) -> tuple[_Snapshots, RecordingSink, RecordingStopBoard]:
    """``updates`` updates of ``agent`` wired to a fake stream, as `hwm fit` wires the real one. ``16-mixed``:
    fp16 autocast with a grad scaler on the CPU (Lightning itself turns 16-mixed into bf16 there)."""
    stream, sink, stops = FakeStream(counters={"env_frames": 0}), RecordingSink(), RecordingStopBoard()
    agent.attach(stream=stream, stops=stops, sink=sink)
    batches = [_batch() for _ in range(updates)]

    def replayed() -> Iterator[TensorDictBase]:
        for batch in batches:
            stream.counters["env_frames"] += 4  # one collect per update, as tiny.yaml's stream does
            yield batch

    snapshots = _Snapshots()
    plugins: list[Any] = []
    if precision == "16-mixed":
        plugins.append(MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu")))
    trainer = L.Trainer(
        accelerator="cpu",
        precision=None if plugins else precision,  # type: ignore[arg-type]
        plugins=plugins,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[snapshots],
    )
    trainer.fit(agent, train_dataloaders=stream_loader(replayed, pin_memory=False))
    return snapshots, sink, stops


def _poison(monkeypatch: pytest.MonkeyPatch, calls: set[int]) -> None:
    """The world model's observation loss is NaN on the given calls of ``WorldModel.loss`` (from 0)."""
    original, count = WorldModel.loss, iter(range(10**9))

    def loss(self: WorldModel, batch: TensorDictBase) -> Any:
        losses, posterior, metrics = original(self, batch)
        if next(count) in calls:
            losses = {**losses, "obs": losses["obs"] * float("nan")}
        return losses, posterior, metrics

    monkeypatch.setattr(WorldModel, "loss", loss)


def _logged(sink: RecordingSink, key: str) -> list[float]:
    return [metrics[key] for _, metrics in sink.written if key in metrics]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_the_agent_skips_a_nonfinite_world_model_step_and_logs_the_count(
    monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    _poison(monkeypatch, {2})
    agent = _agent()
    snapshots, sink, stops = _train(agent, updates=4, precision=precision)
    after = snapshots.after
    assert len(after) == 4 and agent.updates == 4
    # Update 2 changed neither the world model nor the harmonizers; the updates around it did.
    assert all(torch.equal(after[1][k], after[2][k]) for k in after[1])
    assert not all(torch.equal(after[2][k], after[3][k]) for k in after[2])
    assert not all(torch.equal(after[0][k], after[1][k]) for k in after[0])
    assert all(torch.isfinite(v).all() for v in after[3].values() if v.is_floating_point())
    assert agent.nonfinite.skipped == {"model": 1}
    assert _logged(sink, "nonfinite/model_skipped")[-1] == 1.0  # through the metric buffer, by env frames
    assert [step for step, _ in sink.written] == sorted({step for step, _ in sink.written})
    assert stops.reasons == []


def test_a_run_of_nonfinite_steps_files_a_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    _poison(monkeypatch, set(range(1, 10**3)))
    agent = _agent(max_nonfinite=2)
    _, _, stops = _train(agent, updates=3)
    (reason,) = stops.reasons
    assert reason.status == EXIT_NONFINITE and not reason.checkpoint
    assert "2 model updates in a row had a non-finite loss or gradient" in reason.message


def test_under_16_mixed_the_grad_scaler_skips_the_step_and_lowers_its_scale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _poison(monkeypatch, {2})
    agent = _agent()
    snapshots, _, stops = _train(agent, updates=4, precision="16-mixed")
    after = snapshots.after
    assert all(torch.equal(after[1][k], after[2][k]) for k in after[1])  # the scaler skipped it
    assert not all(torch.equal(after[2][k], after[3][k]) for k in after[2])
    # The agent left the step to the scaler (whose scale a skip halves) and counted nothing itself.
    assert agent.nonfinite.skipped == {} and stops.reasons == []
    scaler = agent.trainer.precision_plugin.scaler  # type: ignore[attr-defined]
    assert scaler is not None and scaler.get_scale() < 2.0**16
