import math

import pytest
import torch

from hwm.models.harmonizer import Harmonizer

TASKS = ("obs", "reward", "dynamics")


def _losses(values: dict[str, float]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in values.items()}


def _fit_sigma(mode: str, losses: dict[str, float], steps: int = 3000) -> dict[str, float]:
    h = Harmonizer(TASKS, mode=mode)
    # A short second-moment memory: the first gradients of a large L would otherwise stall Adam for long.
    opt = torch.optim.Adam(h.parameters(), lr=0.05, betas=(0.9, 0.99))
    for _ in range(steps):
        total, _ = h(_losses(losses))
        opt.zero_grad()
        total.backward()
        opt.step()
    return {t: 1.0 / w for t, w in h.weights().items()}


@pytest.mark.parametrize("loss", [0.002, 0.5, 3.0, 2000.0])
def test_rectified_optimum_matches_closed_form(loss: float) -> None:
    sigma = _fit_sigma("rectified", dict.fromkeys(TASKS, loss))
    expected = (loss + math.sqrt(loss**2 + 4 * loss)) / 2
    for task in TASKS:
        assert sigma[task] == pytest.approx(expected, rel=2e-3)


@pytest.mark.parametrize("loss", [0.05, 1.0, 40.0])
def test_unrectified_optimum_is_the_loss(loss: float) -> None:
    sigma = _fit_sigma("unrectified", dict.fromkeys(TASKS, loss))
    for task in TASKS:
        assert sigma[task] == pytest.approx(loss, rel=2e-3)


def test_rectified_keeps_small_loss_weight_bounded_unlike_unrectified() -> None:
    # The paper's motivating case: a tiny reward loss. Unrectified weight -> 1/L = 500, rectified ~ 22.
    rect = Harmonizer(TASKS, mode="rectified")
    with torch.no_grad():
        L = 0.002
        rect.log_sigma.fill_(math.log((L + math.sqrt(L * L + 4 * L)) / 2))
    assert rect.weights()["reward"] == pytest.approx(21.87, rel=1e-3)
    unrect = Harmonizer(TASKS, mode="unrectified")
    with torch.no_grad():
        unrect.log_sigma.fill_(math.log(L))
    assert unrect.weights()["reward"] == pytest.approx(500.0, rel=1e-4)


def test_values_at_initialisation() -> None:
    values = {"obs": 3.0, "reward": 0.5, "dynamics": 1.5}
    total, metrics = Harmonizer(TASKS, mode="rectified")(_losses(values))
    assert total.item() == pytest.approx(sum(values.values()) + 3 * math.log(2.0), rel=1e-6)
    assert metrics["weight_obs"].item() == pytest.approx(1.0)
    total, _ = Harmonizer(TASKS, mode="unrectified")(_losses(values))
    assert total.item() == pytest.approx(sum(values.values()), rel=1e-6)
    total, _ = Harmonizer(TASKS, mode="off")(_losses(values))
    assert total.item() == pytest.approx(sum(values.values()), rel=1e-6)
    fixed = Harmonizer(TASKS, mode="fixed", weights={"obs": 2.0, "dynamics": 0.1})
    total, metrics = fixed(_losses(values))
    assert total.item() == pytest.approx(2 * 3.0 + 0.5 + 0.1 * 1.5, rel=1e-6)
    assert fixed.weights() == pytest.approx({"obs": 2.0, "reward": 1.0, "dynamics": 0.1})
    assert metrics["sigma_dynamics"].item() == pytest.approx(10.0)


def test_gradient_of_s_is_the_analytic_one() -> None:
    h = Harmonizer(TASKS, mode="rectified")
    with torch.no_grad():
        h.log_sigma.copy_(torch.tensor([0.3, -1.0, 2.0]))
    values = {"obs": 5.0, "reward": 0.1, "dynamics": 2.0}
    total, _ = h(_losses(values))
    total.backward()
    s = torch.tensor([0.3, -1.0, 2.0])
    L = torch.tensor([5.0, 0.1, 2.0])
    expected = -L * torch.exp(-s) + torch.sigmoid(s)  # d/ds [L e^{-s} + log(1 + e^{s})]
    torch.testing.assert_close(h.log_sigma.grad, expected)


def test_fixed_and_off_have_no_parameters_and_extra_keys_are_ignored() -> None:
    for mode in ("fixed", "off"):
        assert list(Harmonizer(TASKS, mode=mode).parameters()) == []
    total, _ = Harmonizer(TASKS, mode="off")(
        _losses({"obs": 1.0, "reward": 1.0, "dynamics": 1.0, "continue": 9.0})
    )
    assert total.item() == pytest.approx(3.0)


def test_bad_input_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="rectified, unrectified, gradnorm, fixed, off"):
        Harmonizer(TASKS, mode="learned")
    with pytest.raises(ValueError, match="unknown tasks"):
        Harmonizer(TASKS, mode="fixed", weights={"image": 1.0})
    with pytest.raises(ValueError, match="only used in 'fixed'"):
        Harmonizer(TASKS, mode="rectified", weights={"obs": 1.0})
    with pytest.raises(KeyError, match="reward"):
        Harmonizer(TASKS)(_losses({"obs": 1.0, "dynamics": 1.0}))


def test_plain_float_losses_are_accepted() -> None:
    total, metrics = Harmonizer(TASKS, mode="unrectified")({"obs": 2.0, "reward": 0.5, "dynamics": 1.0})
    assert total.item() == pytest.approx(3.5)
    assert set(metrics) == {f"{kind}_{t}" for kind in ("weight", "sigma") for t in TASKS}
