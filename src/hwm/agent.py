"""The top-level LightningModule: orchestrates world model, harmonizer and actor-critic; the only one that logs."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import MLFlowLogger
from tensordict import TensorDictBase
from torch import Tensor, nn

from hwm.envs.common import EnvInfo
from hwm.models import presets
from hwm.models.actor_critic import ActorCritic
from hwm.models.gradnorm import task_gradient_norms
from hwm.models.harmonizer import (
    Harmonizer,
    HarmonizerMode,
    HarmonizerOptimizer,
    check_harmonizer_precision,
    world_model_optimizers,
)
from hwm.models.policy import DreamerPolicy
from hwm.models.presets import Base, Size
from hwm.models.world_model import WorldModel
from hwm.training.distributed import average_gradients, disable_ddp_reducer, gather_fingerprints
from hwm.training.frame_log import FrameLog
from hwm.training.media import log_media
from hwm.training.nonfinite import NonFiniteGuard, finite
from hwm.training.stop import StopBoard
from hwm.training.stream import MetricSink, Stream, unwired
from hwm.training.timing import Stopwatch


class HarmonyDreamAgent(L.LightningModule):
    """HarmonyDream on a DreamerV2 or DreamerV3 base, trained with manual optimization (three optimizers).

    The world model, the harmonizer and the actor-critic are LightningModules of their own, so each can be
    built, moved and tested alone; only this agent trains and logs. The data stream it learns from is handed
    in (:meth:`attach`, a :class:`~hwm.training.stream.Stream`): batches come down through the dataloader, counters, metrics and recorded episodes come up from the stream, and the stream collects
    with :meth:`policy` (docs/architecture.md draws the flow).

    Args:
        env_info: the env's facts (shapes, discrete actions); the CLI links it from the data module.
        base: ``dreamerv2`` or ``dreamerv3``: the default world-model and actor-critic classes and optimizer
            settings (the CLI sets them as defaults of the keys below, which still override them).
        size: DreamerV3 model size ``XS``, ``S``, ``M``, ``L``, ``XL`` for the default classes (null: the
            classes' own defaults).
        world_model: the world model class and its settings (``WorldModel(obs_shape, action_dim, ...)``);
            null: the base's class.
        actor_critic: the actor-critic class and its settings (``ActorCritic(feat_dim, action_dim, discrete)``);
            null: the base's class.
        harmonizer_mode: ``rectified`` (paper), ``unrectified``, ``gradnorm`` (GradNorm's gradient-norm
            balancing), ``fixed`` (the base's weights times ``harmonizer_weights``) or ``off`` (the base's
            weights).
        harmonizer_weights: constant per-task weights for ``fixed`` mode (obs, reward, dynamics); ``{obs: 0}``
            is a reward-only model.
        harmonizer_optimizer: how the learnable harmonizers are stepped: ``adam`` (inside the world-model
            optimizer, as the paper) or ``sgd`` (an optimizer of their own; not with ``16-mixed``).
        harmonizer_lr: the harmonizers' learning rate (null: ``model_lr``).
        gradnorm_alpha: GradNorm's asymmetry (0: equal weighted gradient norms).
        continue_scale: fixed weight of the continue loss, which is never harmonized.
        model_lr, actor_lr, critic_lr: Adam learning rates.
        eps, model_eps: Adam epsilon of the actor and critic, and of the world model (null: ``eps``).
        weight_decay: L2 weight decay of all three optimizers (Adam's, added to the gradients).
        grad_clip, model_grad_clip: gradient-norm clip of the actor and critic, and of the world model
            (null: ``grad_clip``).
        log_every: updates between metric logs.
        eval_sample: evaluation episodes act with sampled actions (DreamerV3's agent, whose Atari 100k scores
            the paper reports) instead of the actor's mode (DreamerV2's); null: the base's choice.
        compile: ``torch.compile`` the conv encoder and decoder and the imagination rollout (fuses their
            elementwise ops; costs about a minute of compiling at the start and whenever a new batch shape
            comes). Off by default: on CPU it gave no clear gain (docs/benchmarks.md, "Throughput and where
            the time goes"); meant for GPUs.
        max_nonfinite: an optimizer step whose loss or gradient is not finite is skipped (counted as
            ``nonfinite/<optimizer>_skipped``); this many skips of one optimizer in a row stop the run (exit
            status 3). Under ``16-mixed`` precision the grad scaler skips such steps itself.

    Optimizer settings left null take the base's (DreamerV2: lr 3e-4 / 8e-5 / 8e-5, eps 1e-5, weight decay
    1e-6, clip 100; DreamerV3: lr 1e-4 / 3e-5 / 3e-5, eps 1e-8 model and 1e-5 actor-critic, no weight decay,
    clip 1000 model and 100 actor-critic).
    """

    _policy: DreamerPolicy  # shares the networks above: set past nn.Module, so it is not a second copy

    def __init__(
        self,
        env_info: EnvInfo,
        *,
        base: Base = "dreamerv2",
        size: Size | None = None,
        world_model: Callable[[tuple[int, ...], int], WorldModel] | None = None,
        actor_critic: Callable[[int, int, bool], ActorCritic] | None = None,
        harmonizer_mode: HarmonizerMode = "rectified",
        harmonizer_weights: dict[str, float] | None = None,
        harmonizer_optimizer: HarmonizerOptimizer = "adam",
        harmonizer_lr: float | None = None,
        gradnorm_alpha: float = 1.5,
        continue_scale: float = 1.0,
        model_lr: float | None = None,
        actor_lr: float | None = None,
        critic_lr: float | None = None,
        eps: float | None = None,
        model_eps: float | None = None,
        weight_decay: float | None = None,
        grad_clip: float | None = None,
        model_grad_clip: float | None = None,
        log_every: int = 50,
        eval_sample: bool | None = None,
        compile: bool = False,
        max_nonfinite: int = 50,
    ) -> None:
        super().__init__()
        presets.check(base, size)
        self.automatic_optimization = False
        self.base, self.size = base, size
        wm_size, ac_size = presets.size_options(size)
        wm_cls, ac_cls = presets.CLASSES[base]
        obs_shape, action_dim = tuple(env_info.obs_shape), env_info.action_dim
        self.world_model = (
            world_model(obs_shape, action_dim) if world_model else wm_cls(obs_shape, action_dim, **wm_size)
        )
        feat_dim = self.world_model.rssm.feat_dim
        self.actor_critic = (
            actor_critic(feat_dim, action_dim, env_info.discrete)
            if actor_critic
            else ac_cls(feat_dim, action_dim, env_info.discrete, **ac_size)
        )
        if self.world_model.base != base:
            raise ValueError(
                f"model.base is {base!r} but model.world_model is a {self.world_model.base} world model "
                f"({type(self.world_model).__name__}); drop its class_path or pick model.base "
                f"{self.world_model.base!r}"
            )
        if compile:
            # In place, so state_dict keys (and checkpoints) are the same as uncompiled. dynamic=False: one
            # specialised graph per batch shape (training, acting, evaluating).
            for module in (self.world_model.encoder, self.world_model.decoder):
                module.compile(dynamic=False)
            self.actor_critic.compile_imagination()
        self.harmonizer = Harmonizer(
            self.world_model.HARMONIZED,
            mode=harmonizer_mode,
            weights=harmonizer_weights,
            regularizer_scales=self.world_model.regularizer_scales,
            gradnorm_alpha=gradnorm_alpha,
        )
        self.harmonizer_optimizer, self.harmonizer_lr = harmonizer_optimizer, harmonizer_lr
        self.eval_sample = presets.EVAL_SAMPLE[base] if eval_sample is None else eval_sample
        self.continue_scale = continue_scale
        optim = presets.optimizer_settings(
            base,
            model_lr=model_lr,
            actor_lr=actor_lr,
            critic_lr=critic_lr,
            eps=eps,
            model_eps=model_eps,
            weight_decay=weight_decay,
            grad_clip=grad_clip,
            model_grad_clip=model_grad_clip,
        )
        self.model_lr, self.actor_lr, self.critic_lr = (
            optim["model_lr"],
            optim["actor_lr"],
            optim["critic_lr"],
        )
        self.eps, self.model_eps, self.weight_decay = optim["eps"], optim["model_eps"], optim["weight_decay"]
        self.grad_clip, self.model_grad_clip = optim["grad_clip"], optim["model_grad_clip"]
        self.log_every = max(1, log_every)
        self.frame_log = FrameLog()
        self.timer = Stopwatch()
        self._timed_updates = 0
        self._grad_norms: dict[str, Tensor] = {}
        self._stepping = "model"
        self._stream: Stream = unwired("HarmonyDreamAgent", "the data stream")
        self._sink: MetricSink = unwired("HarmonyDreamAgent", "the metric buffer")
        self.nonfinite = NonFiniteGuard(max_nonfinite)
        object.__setattr__(
            self, "_policy", DreamerPolicy(self.world_model, self.actor_critic, eval_sample=self.eval_sample)
        )

    # -- wiring -------------------------------------------------------------------------------------------
    def attach(self, stream: Stream, stops: StopBoard, sink: MetricSink) -> None:
        """The data stream whose counters, metrics and recorded episodes this agent logs; where a run of
        non-finite updates files its stop; what metrics are written to (a buffer that outlives
        tracking-server outages and sends them to the logger)."""
        self._stream, self._sink = stream, sink
        self.nonfinite.attach(stops)

    def resume_logging_after(self, step: int) -> None:
        """A resumed run's tracking store already has every step up to ``step``: those are not logged again."""
        self.frame_log.skip_until(step)

    @property
    def updates(self) -> int:
        """Completed updates (world model + actor-critic); the actor-critic's counter is the one record."""
        return int(self.actor_critic.updates)

    @property
    def bar_metrics(self) -> Mapping[str, float]:
        """The latest training and evaluation returns, for the progress bar."""
        return self.frame_log.bar_metrics

    def policy(self) -> DreamerPolicy:
        return self._policy

    # -- training -----------------------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        def adam(params: list[nn.Parameter], lr: float, eps: float) -> torch.optim.Optimizer:
            # L2 weight decay added to the gradient, as the world model's (world_model_optimizers).
            return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=self.weight_decay)

        check_harmonizer_precision(self.harmonizer_optimizer, str(self.trainer.precision))
        model, *harmonizer = world_model_optimizers(
            self.world_model,
            self.harmonizer,
            lr=self.model_lr,
            eps=self.model_eps,
            weight_decay=self.weight_decay,
            harmonizer_optimizer=self.harmonizer_optimizer,
            harmonizer_lr=self.harmonizer_lr,
        )
        return [
            model,
            adam(list(self.actor_critic.actor.parameters()), self.actor_lr, self.eps),
            adam(list(self.actor_critic.critic.parameters()), self.critic_lr, self.eps),
            *harmonizer,  # SGD: the harmonizers' own optimizer, stepped with the world model's
        ]

    def training_step(self, dataloader_iter: Iterator[tuple[TensorDictBase, int, int]]) -> None:
        # Pulling the batch here (instead of Lightning prefetching the next one) keeps the data stream
        # exactly one batch ahead of nothing: a checkpoint after this update is a clean cut.
        batch = next(dataloader_iter)[0]
        # Lightning re-arms DDP's reducer around every step; three backward passes need it off.
        disable_ddp_reducer(self.trainer.strategy.model)
        optimizers = self.optimizers()
        assert isinstance(optimizers, list), "configure_optimizers() returns three or four"
        model_opt, actor_opt, critic_opt, *harmonizer_opt = optimizers

        with self.timer("world_model"):
            losses, posterior, wm_metrics = self.world_model.loss(batch)
            with self.timer("harmonizer"):
                inputs = self._harmonizer_inputs(losses)
                norms = None
                if self.harmonizer.needs_grad_norms:
                    tasks = {t: inputs[t] for t in self.harmonizer.tasks}
                    norms = task_gradient_norms(tasks, self.world_model.shared_parameters())
                harmonized, harmony_metrics = self.harmonizer(inputs, norms)
            model_loss = harmonized + self.continue_scale * losses["continue"]
            self._step(model_opt, model_loss, "model", *harmonizer_opt)

        with self.timer("actor_critic"):
            ac_losses, ac_metrics = self.actor_critic.loss(self.world_model, posterior)
            # One backward per optimizer: under 16-mixed every step updates the grad scaler, so gradients
            # of a shared backward would be unscaled with two different scales.
            self._step(actor_opt, ac_losses["actor"], "actor")
            self._step(critic_opt, ac_losses["critic"], "critic")
            self.actor_critic.after_update()
        self._timed_updates += 1

        data_metrics = self._stream.pop_metrics()
        self._log_media()
        if self.updates % self.log_every == 0 or data_metrics:
            metrics: dict[str, Any] = {f"loss/{k}": v for k, v in losses.items()}
            metrics["loss/model_total"] = model_loss
            metrics.update({f"loss/{k}": v for k, v in ac_losses.items()})
            metrics.update({f"harmonizer/{k}": v for k, v in harmony_metrics.items()})
            metrics.update({f"world_model/{k}": v for k, v in wm_metrics.items()})
            metrics.update({f"actor_critic/{k}": v for k, v in ac_metrics.items()})
            metrics.update({f"grad_norm/{k}": v for k, v in self._grad_norms.items()})
            metrics.update(self.nonfinite.metrics())
            metrics.update(data_metrics)
            metrics.update(self._time_split())
            with self.timer("logging"):
                self._log(metrics)

    def _time_split(self) -> dict[str, float]:
        """Milliseconds per update in each section since the last log (the stream's sections included)."""
        seconds = self.timer.pop()
        seconds.update(self._stream.timer.pop())
        updates, self._timed_updates = max(self._timed_updates, 1), 0
        # The harmonizer's time is part of the world model's; logged on its own for its overhead.
        return {f"time/{name}_ms": 1000 * total / updates for name, total in seconds.items()}

    def _harmonizer_inputs(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """Learnable harmonizers see the tasks as the world model defines them; the fixed and off modes add
        the base's own weights (DreamerV3: dynamics 0.5 + representation 0.1, i.e. 0.6 on the normalised KL
        task), so that ``off`` is the plain base."""
        if self.harmonizer.learnable:
            return losses
        scales = self.world_model.task_scales
        return {k: v * scales.get(k, 1.0) for k, v in losses.items()}

    def _step(self, optimizer: Any, loss: Tensor, name: str, *also: Any) -> None:
        """One backward of ``loss``, then a step of ``optimizer`` and of ``also`` (the harmonizers' own
        optimizer, when they have one), or of none of them when the loss or a gradient is not finite."""
        optimizers = (optimizer, *also)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self._stepping = name
        # Under 16-mixed the gradients are still scaled here and the grad scaler skips non-finite steps
        # itself (lowering its scale): skipping before it would keep the scale too high forever.
        if not str(self.trainer.precision).startswith("16"):
            params = [
                p for opt in optimizers for group in opt.optimizer.param_groups for p in group["params"]
            ]
            ok = bool(finite(loss, params))  # one host sync per optimizer step
            if self.trainer.world_size > 1:  # every process skips, or none: their weights stay equal
                ok = self.trainer.strategy.reduce_boolean_decision(ok, all=True)
            self.nonfinite.record(name, ok, self.updates)
            if not ok:
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                return
        optimizer.step()
        for opt in also:
            self._stepping = "harmonizer"
            opt.step()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after unscaling fp16 gradients, so the clip sees their true norm.
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        average_gradients(params)  # DDP: the mean over processes, before clipping (a no-op otherwise)
        if params:
            limit = self.model_grad_clip if self._stepping == "model" else self.grad_clip
            # The harmonizers' own optimizer is not clipped (inside the world model's, they share its clip).
            limit = limit if limit > 0 and self._stepping != "harmonizer" else float("inf")
            self._grad_norms[self._stepping] = torch.nn.utils.clip_grad_norm_(params, limit)

    def on_train_epoch_end(self) -> None:
        # The stream's last metrics (the final evaluation) arrive after the last training step.
        pending = self._stream.pop_metrics()
        if pending:
            self._log(pending)
        self._log_media()
        # The run ends here, at its budget or stopped early: its last step goes out now. A stop's checkpoint
        # (taken before) carries it unwritten too; a resume writes only what the step gains after it.
        self.frame_log.flush(self._write)
        # The stream ends only when the frame budget is spent.
        self.trainer.should_stop = True

    def on_train_end(self) -> None:
        if self.trainer.world_size == 1:
            return
        # Same start (DDP broadcast), same averaged gradients, same optimizer states: same weights, bitwise.
        prints = gather_fingerprints(self)
        if self.trainer.is_global_zero and isinstance(self.logger, MLFlowLogger):
            self.logger.experiment.set_tag(self.logger.run_id, "ddp.param_fingerprints", ",".join(prints))
        if len(set(prints)) != 1:
            raise RuntimeError(f"DDP processes ended with different weights: {prints}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Metrics of the current step may still grow (e.g. a final evaluation at these frames): they travel
        # with the checkpoint unwritten, and a resume learns from the run whether they were written since.
        checkpoint["unlogged_metrics"] = self.frame_log.state_dict()
        checkpoint["nonfinite"] = self.nonfinite.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.frame_log.load_state_dict(checkpoint.get("unlogged_metrics", {"step": -1, "metrics": {}}))
        self.nonfinite.load_state_dict(checkpoint.get("nonfinite", {}))

    # -- logging ------------------------------------------------------------------------------------------
    def _log_media(self) -> None:
        """Renders the evaluation episodes the stream recorded as GIF artifacts under ``media/``."""
        recorded = self._stream.pop_media()
        logger = self.logger
        # Only MLflow takes files here; other loggers get the metrics alone.
        if not recorded or not isinstance(logger, MLFlowLogger) or not self.trainer.is_global_zero:
            return
        with torch.autocast(self.device.type, enabled=False):
            log_media(logger, self.world_model, recorded)

    def _log(self, metrics: dict[str, Any]) -> None:
        counters = self._stream.counters
        self.frame_log.add(
            metrics,
            frames=int(counters.get("env_frames", 0)),
            updates=self.updates,
            episodes=counters.get("episodes", 0),
            write=self._write,
        )

    def _write(self, metrics: dict[str, float], step: int) -> None:
        # Keyed by env frames, the x-axis papers use; Lightning's global_step counts optimizer steps.
        if self.trainer.is_global_zero:
            self._sink.write(metrics, step)
