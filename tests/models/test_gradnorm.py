"""GradNorm (harmonizer_mode gradnorm), reward-only weights and the harmonizers' own optimizer."""

import pytest
import torch

from hwm.models.gradnorm import task_gradient_norms
from hwm.models.harmonizer import Harmonizer, check_harmonizer_precision, world_model_optimizers

TASKS = ("obs", "reward", "dynamics")


def _toy(
    scales: dict[str, float], offsets: dict[str, float], shared: torch.Tensor
) -> dict[str, torch.Tensor]:
    """L_i = c_i * sum(W) + b_i: a gradient of norm c_i * sqrt(dim W) whatever the loss's value."""
    return {t: scales[t] * shared.sum() + offsets[t] for t in TASKS}


def _run_gradnorm(
    scales: dict[str, float], offsets: list[dict[str, float]], alpha: float, steps: int = 3000
) -> Harmonizer:
    """Trains GradNorm's weights on the toy losses; ``offsets[0]`` gives L_i(0), the last ones the rest."""
    shared = torch.ones(4, requires_grad=True)
    h = Harmonizer(TASKS, mode="gradnorm", gradnorm_alpha=alpha)
    opt = torch.optim.Adam(h.parameters(), lr=0.01)
    for step in range(steps):
        losses = _toy(scales, offsets[min(step, len(offsets) - 1)], shared)
        norms = task_gradient_norms(losses, [shared])
        total, _ = h(losses, norms)
        opt.zero_grad()
        total.backward()
        opt.step()
    h(_toy(scales, offsets[-1], shared), task_gradient_norms(_toy(scales, offsets[-1], shared), [shared]))
    return h


def test_gradient_norms_are_each_tasks_own() -> None:
    shared = torch.ones(4, requires_grad=True)
    other = torch.ones(3, requires_grad=True)
    losses = {"obs": 3.0 * shared.sum() + other.sum(), "reward": 0.5 * shared.sum(), "dynamics": other.sum()}
    norms = task_gradient_norms(losses, [shared])
    assert norms["obs"].item() == pytest.approx(3.0 * 2.0)  # ||3 * 1_4|| = 6
    assert norms["reward"].item() == pytest.approx(1.0)
    assert norms["dynamics"].item() == 0.0  # does not reach the shared parameters
    assert task_gradient_norms({"continue": torch.zeros(())}, [shared])["continue"].item() == 0.0
    # The graph survives for the update's own backward pass.
    sum(losses.values()).backward()
    assert shared.grad is not None


def test_gradnorm_equalises_weighted_gradient_norms() -> None:
    # alpha = 0: the fixed point has w_i ||grad L_i|| equal for all tasks, with sum w = 3, i.e.
    # w_i = 3 (1/c_i) / sum_j (1/c_j); for c = (10, 0.5, 2): (0.2449, 4.898, 1.2245) / 2.1 ... exactly:
    scales = {"obs": 10.0, "reward": 0.5, "dynamics": 2.0}
    h = _run_gradnorm(scales, [dict.fromkeys(TASKS, 1.0)], alpha=0.0)
    inverse = {t: 1.0 / c for t, c in scales.items()}
    expected = {t: 3.0 * v / sum(inverse.values()) for t, v in inverse.items()}
    weights = h.weights()
    assert weights == pytest.approx(expected, rel=0.03)
    weighted = [weights[t] * scales[t] * 2.0 for t in TASKS]  # ||grad L_i|| = 2 c_i
    assert max(weighted) / min(weighted) == pytest.approx(1.0, abs=0.05)
    assert sum(weights.values()) == pytest.approx(3.0, rel=1e-5)


def test_gradnorm_alpha_favours_the_slower_task() -> None:
    # Equal gradient norms, but the reward loss has stayed at its start while the others halved: with alpha = 1,
    # w_i g_i is proportional to r_i = (L_i/L_i(0)) / mean: (0.5, 1, 0.5) / (2/3) -> weights (0.75, 1.5, 0.75).
    scales = dict.fromkeys(TASKS, 1.0)
    start = {"obs": 2.0, "reward": 2.0, "dynamics": 2.0}
    later = {"obs": 1.0, "reward": 2.0, "dynamics": 1.0}
    # The toy's loss values are offset + c * sum(W) = offset + 4: offsets give the values above.
    h = _run_gradnorm(
        scales, [{t: v - 4.0 for t, v in start.items()}, {t: v - 4.0 for t, v in later.items()}], 1.0
    )
    assert h.weights() == pytest.approx({"obs": 0.75, "reward": 1.5, "dynamics": 0.75}, rel=0.03)


def test_gradnorm_trains_the_weights_only_and_logs_its_state() -> None:
    shared = torch.ones(4, requires_grad=True)
    h = Harmonizer(TASKS, mode="gradnorm", gradnorm_alpha=0.0)
    with torch.no_grad():
        h.gradnorm_weights.copy_(torch.tensor([2.0, 0.5, 0.5]))
    losses = _toy({"obs": 1.0, "reward": 2.0, "dynamics": 3.0}, dict.fromkeys(TASKS, 0.0), shared)
    total, metrics = h(losses, task_gradient_norms(losses, [shared]))
    total.backward()
    # The model's gradient is that of sum_i w_i L_i (the weights sum to 3 already): 2*1 + 0.5*2 + 0.5*3.
    torch.testing.assert_close(shared.grad, torch.full((4,), 4.5))
    assert h.gradnorm_weights.grad is not None and h.gradnorm_weights.grad.abs().sum() > 0
    assert metrics["weight_reward"].item() == pytest.approx(0.5)
    assert metrics["grad_norm_dynamics"].item() == pytest.approx(6.0)
    assert metrics["weighted_grad_norm_obs"].item() == pytest.approx(4.0)
    assert {"gradnorm_loss", "sigma_obs", "target_grad_norm_reward"} <= set(metrics)


def test_gradnorm_needs_the_norms_and_renormalises() -> None:
    h = Harmonizer(TASKS, mode="gradnorm")
    assert h.needs_grad_norms and h.learnable
    losses = {t: torch.tensor(1.0) for t in TASKS}
    with pytest.raises(KeyError, match="gradient norm"):
        h(losses)
    with torch.no_grad():
        h.gradnorm_weights.copy_(torch.tensor([3.0, 2.0, 1.0]))
    h(losses, dict.fromkeys(TASKS, torch.tensor(1.0)))
    assert h.gradnorm_weights.sum().item() == pytest.approx(3.0)
    assert h.initial_losses.tolist() == [1.0, 1.0, 1.0]  # L_i(0), kept in the state dict
    assert "initial_losses" in h.state_dict()
    with pytest.raises(ValueError, match="gradnorm_alpha"):
        Harmonizer(TASKS, mode="gradnorm", gradnorm_alpha=-1.0)


def test_reward_only_weights_drop_the_observation_loss() -> None:
    h = Harmonizer(TASKS, mode="fixed", weights={"obs": 0.0})
    obs = torch.tensor(1000.0, requires_grad=True)
    total, metrics = h({"obs": obs, "reward": torch.tensor(0.5), "dynamics": torch.tensor(2.0)})
    assert total.item() == pytest.approx(2.5)
    total.backward()
    assert obs.grad is not None and obs.grad.item() == 0.0
    assert metrics["weight_obs"].item() == 0.0
    assert "sigma_obs" not in metrics  # no finite sigma for a dropped task
    assert h.weights() == {"obs": 0.0, "reward": 1.0, "dynamics": 1.0}


def test_harmonizer_optimizer_settings() -> None:
    model = torch.nn.Linear(3, 2)
    rect = Harmonizer(TASKS, mode="rectified")
    (adam,) = world_model_optimizers(model, rect, lr=1e-3, eps=1e-5, weight_decay=0.0)
    assert isinstance(adam, torch.optim.Adam) and len(adam.param_groups) == 1  # as before the setting
    assert any(p is rect.log_sigma for p in adam.param_groups[0]["params"])
    (adam,) = world_model_optimizers(model, rect, lr=1e-3, eps=1e-5, weight_decay=0.0, harmonizer_lr=0.1)
    assert [g["lr"] for g in adam.param_groups] == [1e-3, 0.1]
    adam, sgd = world_model_optimizers(
        model, rect, lr=1e-3, eps=1e-5, weight_decay=0.0, harmonizer_optimizer="sgd"
    )
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["params"] == [rect.log_sigma]
    assert sgd.param_groups[0]["lr"] == 1e-3 and all(
        p is not rect.log_sigma for p in adam.param_groups[0]["params"]
    )
    # Modes without parameters have nothing for SGD to step.
    (only,) = world_model_optimizers(
        model, Harmonizer(TASKS, mode="off"), lr=1e-3, eps=1e-5, weight_decay=0.0, harmonizer_optimizer="sgd"
    )
    assert isinstance(only, torch.optim.Adam)
    with pytest.raises(ValueError, match="sgd, not 'rmsprop'|adam, sgd"):
        world_model_optimizers(
            model, rect, lr=1e-3, eps=1e-5, weight_decay=0.0, harmonizer_optimizer="rmsprop"
        )  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="16-mixed"):
        check_harmonizer_precision("sgd", "16-mixed")
    check_harmonizer_precision("sgd", "bf16-mixed")


def test_sgd_steps_the_harmonizer_by_its_plain_gradient() -> None:
    model = torch.nn.Linear(1, 1)
    rect = Harmonizer(TASKS, mode="rectified")
    _, sgd = world_model_optimizers(
        model, rect, lr=1e-3, eps=1e-5, weight_decay=0.0, harmonizer_optimizer="sgd", harmonizer_lr=0.01
    )
    total, _ = rect({"obs": torch.tensor(100.0), "reward": torch.tensor(0.1), "dynamics": torch.tensor(1.0)})
    total.backward()
    sgd.step()
    # d/ds [L e^-s + log(1 + e^s)] at s = 0 is 0.5 - L.
    expected = -0.01 * (0.5 - torch.tensor([100.0, 0.1, 1.0]))
    torch.testing.assert_close(rect.log_sigma.detach(), expected)


def test_logged_weights_are_those_the_update_used() -> None:
    """The metrics are read after the optimizer step: they must be a copy, not the stepped parameter."""
    h = Harmonizer(TASKS, mode="gradnorm")
    opt = torch.optim.SGD(h.parameters(), lr=0.1)
    shared = torch.ones(4, requires_grad=True)
    losses = _toy({"obs": 5.0, "reward": 1.0, "dynamics": 1.0}, dict.fromkeys(TASKS, 0.0), shared)
    total, metrics = h(losses, task_gradient_norms(losses, [shared]))
    total.backward()
    opt.step()
    assert [metrics[f"weight_{t}"].item() for t in TASKS] == [1.0, 1.0, 1.0]
    assert h.gradnorm_weights.detach().tolist() != [1.0, 1.0, 1.0]
