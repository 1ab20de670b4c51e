"""The top-level LightningModule of world-model training from a saved dataset: the world model and its
harmonizers alone (no actor-critic), trained and logged; the held-out errors the data module measures are
logged here too (only this module logs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lightning as L
import torch
from tensordict import TensorDictBase
from torch import Tensor

from hwm.envs.common import EnvInfo
from hwm.models import presets
from hwm.models.gradnorm import task_gradient_norms
from hwm.models.harmonizer import (
    Harmonizer,
    HarmonizerMode,
    HarmonizerOptimizer,
    check_harmonizer_precision,
    world_model_optimizers,
)
from hwm.models.losses import categorical_kl
from hwm.models.presets import Base, Size
from hwm.models.world_model import ACTION_KEY, IS_FIRST, REWARD_KEY, WorldModel
from hwm.training.nonfinite import NonFiniteGuard, finite
from hwm.training.stop import StopBoard
from hwm.training.stream import KL, OBS_ERROR, REWARD_ERROR, MetricSink, Stream, unwired
from hwm.training.timing import Stopwatch
from hwm.training.update_log import UpdateLog


class WorldModelLearner(L.LightningModule):
    """Trains a world model and its harmonizers on replayed batches of a fixed dataset; logs by update.

    Its world-model settings are the agent's (:class:`~hwm.agent.HarmonyDreamAgent`): the same base, size,
    world-model class, harmonizer modes and world-model optimizer, so a world model studied here is the one
    an online run trains.

    Args:
        env_info: the dataset's facts (observation shape, action size); the CLI links it from the data module.
        base: ``dreamerv2`` or ``dreamerv3``: the default world-model class and optimizer settings.
        size: DreamerV3 model size (null: the class's own defaults).
        world_model: the world model class and its settings; null: the base's class.
        harmonizer_mode: ``rectified`` (paper), ``unrectified``, ``gradnorm``, ``fixed`` (the base's weights
            times ``harmonizer_weights``) or ``off`` (the base's weights).
        harmonizer_weights: constant per-task weights for ``fixed`` mode; ``{obs: 0}`` is a reward-only model.
        harmonizer_optimizer: ``adam`` (inside the world-model optimizer) or ``sgd`` (their own).
        harmonizer_lr: the harmonizers' learning rate (null: ``model_lr``).
        gradnorm_alpha: GradNorm's asymmetry (0: equal weighted gradient norms).
        continue_scale: fixed weight of the continue loss, which is never harmonized.
        model_lr, model_eps, weight_decay, model_grad_clip: the world model's Adam (null: the base's).
        log_every: updates between logs of the training losses and weights (the held-out errors are logged
            whenever the data module measures them).
        max_nonfinite: this many skipped non-finite updates in a row stop the run (exit status 3).
    """

    updates_done: Tensor  # a buffer: completed updates, saved with the weights

    def __init__(
        self,
        env_info: EnvInfo,
        *,
        base: Base = "dreamerv2",
        size: Size | None = None,
        world_model: Callable[[tuple[int, ...], int], WorldModel] | None = None,
        harmonizer_mode: HarmonizerMode = "rectified",
        harmonizer_weights: dict[str, float] | None = None,
        harmonizer_optimizer: HarmonizerOptimizer = "adam",
        harmonizer_lr: float | None = None,
        gradnorm_alpha: float = 1.5,
        continue_scale: float = 1.0,
        model_lr: float | None = None,
        model_eps: float | None = None,
        weight_decay: float | None = None,
        model_grad_clip: float | None = None,
        log_every: int = 50,
        max_nonfinite: int = 50,
    ) -> None:
        super().__init__()
        presets.check(base, size)
        self.automatic_optimization = False
        self.base, self.size = base, size
        wm_size, _ = presets.size_options(size)
        wm_cls, _ = presets.CLASSES[base]
        obs_shape, action_dim = tuple(env_info.obs_shape), env_info.action_dim
        self.world_model = (
            world_model(obs_shape, action_dim) if world_model else wm_cls(obs_shape, action_dim, **wm_size)
        )
        if self.world_model.base != base:
            raise ValueError(
                f"model.base is {base!r} but model.world_model is a {self.world_model.base} world model "
                f"({type(self.world_model).__name__}); drop its class_path or pick model.base "
                f"{self.world_model.base!r}"
            )
        self.harmonizer = Harmonizer(
            self.world_model.HARMONIZED,
            mode=harmonizer_mode,
            weights=harmonizer_weights,
            regularizer_scales=self.world_model.regularizer_scales,
            gradnorm_alpha=gradnorm_alpha,
        )
        self.harmonizer_optimizer, self.harmonizer_lr = harmonizer_optimizer, harmonizer_lr
        self.continue_scale = continue_scale
        optim = presets.optimizer_settings(
            base,
            model_lr=model_lr,
            model_eps=model_eps,
            weight_decay=weight_decay,
            model_grad_clip=model_grad_clip,
            eps=None,
            grad_clip=None,
        )
        self.model_lr, self.model_eps = optim["model_lr"], optim["model_eps"]
        self.weight_decay, self.model_grad_clip = optim["weight_decay"], optim["model_grad_clip"]
        self.log_every = max(1, log_every)
        self.register_buffer("updates_done", torch.zeros((), dtype=torch.long))
        self.update_log = UpdateLog()
        self.timer = Stopwatch()
        self.nonfinite = NonFiniteGuard(max_nonfinite)
        self._grad_norm: Tensor | None = None
        self._timed_updates = 0  # updates at the last read of the timers
        self._stepping = "model"
        self._stream: Stream = unwired("WorldModelLearner", "the data stream")
        self._sink: MetricSink = unwired("WorldModelLearner", "the metric buffer")

    # -- wiring -------------------------------------------------------------------------------------------
    def attach(self, stream: Stream, stops: StopBoard, sink: MetricSink) -> None:
        """The data stream whose held-out errors and timings this learner logs; where a run of non-finite
        updates files its stop; what metrics are written to (the tracking buffer)."""
        self._stream, self._sink = stream, sink
        self.nonfinite.attach(stops)

    def resume_logging_after(self, step: int) -> None:
        """A resumed run's tracking store already has every update up to ``step``: not logged again."""
        self.update_log.skip_until(step)

    @property
    def updates(self) -> int:
        return int(self.updates_done)

    @property
    def bar_metrics(self) -> Mapping[str, float]:
        return self.update_log.latest

    # -- held-out errors ----------------------------------------------------------------------------------
    @torch.no_grad()
    def heldout_errors(self, batch: TensorDictBase) -> dict[str, Tensor]:
        """Per-step squared errors of the reward head's mean and of the decoder's mean (per observation
        element, in the decoder's target units: pixels in [-0.5, 0.5]) and the KL[q || p], each [B, T]."""
        wm = self.world_model
        # Scored in full precision whatever the training precision (the data module calls this from inside
        # the training step, under its autocast).
        with torch.autocast(self.device.type, enabled=False):
            obs = batch.get(wm.obs_key)
            action = batch.get(ACTION_KEY).to(torch.get_default_dtype())
            post = wm.rssm.observe(wm.encode(obs), action, batch.get(IS_FIRST))
            feat = wm.feat((post["deter"], post["stoch"]))
            reward = batch.get(REWARD_KEY).float().squeeze(-1)
            obs_error = (wm.decoder(feat).float() - wm.decoder_target(obs)).square()
            return {
                REWARD_ERROR: (wm.reward(feat) - reward).square(),
                OBS_ERROR: obs_error.flatten(2).mean(-1),
                KL: categorical_kl(post["post_logits"], post["prior_logits"]),
            }

    # -- training -----------------------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        check_harmonizer_precision(self.harmonizer_optimizer, str(self.trainer.precision))
        return world_model_optimizers(
            self.world_model,
            self.harmonizer,
            lr=self.model_lr,
            eps=self.model_eps,
            weight_decay=self.weight_decay,
            harmonizer_optimizer=self.harmonizer_optimizer,
            harmonizer_lr=self.harmonizer_lr,
        )

    def training_step(self, dataloader_iter: Iterator[tuple[TensorDictBase, int, int]]) -> None:
        # Pulled here, not prefetched: the stream then holds no batch at a checkpoint.
        batch = next(dataloader_iter)[0]
        self._log_stream()  # held-out errors measured before this update, at the updates done so far
        optimizers = self.optimizers()
        model_opt, *harmonizer_opt = optimizers if isinstance(optimizers, list) else [optimizers]
        with self.timer("world_model"):
            losses, _, wm_metrics = self.world_model.loss(batch)
            with self.timer("harmonizer"):
                inputs = losses if self.harmonizer.learnable else self._base_weighted(losses)
                norms = None
                if self.harmonizer.needs_grad_norms:
                    tasks = {t: inputs[t] for t in self.harmonizer.tasks}
                    norms = task_gradient_norms(tasks, self.world_model.shared_parameters())
                harmonized, harmony_metrics = self.harmonizer(inputs, norms)
            model_loss = harmonized + self.continue_scale * losses["continue"]
            self._step(model_loss, model_opt, *harmonizer_opt)
        self.updates_done += 1
        if self.updates % self.log_every == 0:
            metrics: dict[str, Any] = {f"loss/{k}": v for k, v in losses.items()}
            metrics["loss/model_total"] = model_loss
            metrics.update({f"harmonizer/{k}": v for k, v in harmony_metrics.items()})
            metrics.update({f"world_model/{k}": v for k, v in wm_metrics.items()})
            if self._grad_norm is not None:
                metrics["grad_norm/model"] = self._grad_norm
            metrics.update(self.nonfinite.metrics())
            seconds = self.timer.pop()
            seconds.update(self._stream.timer.pop())
            timed, self._timed_updates = max(self.updates - self._timed_updates, 1), self.updates
            metrics.update({f"time/{k}_ms": 1000 * v / timed for k, v in seconds.items()})
            self.update_log.add(metrics, self.updates, self._write)

    def _base_weighted(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """The fixed and off modes add the base's own weights, so that ``off`` is the plain base (as the
        agent does)."""
        scales = self.world_model.task_scales
        return {k: v * scales.get(k, 1.0) for k, v in losses.items()}

    def _step(self, loss: Tensor, optimizer: Any, *also: Any) -> None:
        """One backward, then a step of the world model's optimizer and of the harmonizers' own, if any;
        none when the loss or a gradient is not finite (counted, as the agent does)."""
        optimizers = (optimizer, *also)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self._stepping = "model"
        if not str(self.trainer.precision).startswith("16"):  # the grad scaler skips those itself
            params = [p for opt in optimizers for g in opt.optimizer.param_groups for p in g["params"]]
            ok = bool(finite(loss, params))
            self.nonfinite.record("model", ok, self.updates)
            if not ok:
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                return
        optimizer.step()
        for opt in also:
            self._stepping = "harmonizer"
            opt.step()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._stepping != "model":
            return  # the harmonizers' own optimizer is not clipped
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        limit = self.model_grad_clip if self.model_grad_clip > 0 else float("inf")
        self._grad_norm = torch.nn.utils.clip_grad_norm_(params, limit) if params else None

    def on_train_start(self) -> None:
        self._timed_updates = self.updates  # a resumed run's timers start now, not at update 0

    def on_train_epoch_end(self) -> None:
        self._log_stream()  # the final held-out evaluation comes after the last update
        if self._stream.stream_finished:
            self.update_log.flush(self._write)
        self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["unlogged_metrics"] = self.update_log.state_dict()
        checkpoint["nonfinite"] = self.nonfinite.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.update_log.load_state_dict(checkpoint.get("unlogged_metrics", {"step": -1, "metrics": {}}))
        self.nonfinite.load_state_dict(checkpoint.get("nonfinite", {}))

    # -- logging ------------------------------------------------------------------------------------------
    def _log_stream(self) -> None:
        metrics = self._stream.pop_metrics()
        if metrics:
            self.update_log.add(metrics, self.updates, self._write)

    def _write(self, metrics: dict[str, float], step: int) -> None:
        self._sink.write(metrics, step)
