"""A step with a non-finite loss or gradient is skipped (weights and optimizer state untouched) and counted;
too many in a row stop the run."""

from __future__ import annotations

import torch

from hwm.training.nonfinite import NonFiniteGuard, finite
from hwm.training.stop import EXIT_NONFINITE, StopRequests


def _guarded_step(
    model: torch.nn.Linear, opt: torch.optim.Optimizer, guard: NonFiniteGuard, scale: float
) -> bool:
    """What the agent does per optimizer: backward, check, step or skip."""
    opt.zero_grad(set_to_none=True)
    loss = (model(torch.ones(1, 3)) * scale).sum()
    loss.backward()
    ok = bool(finite(loss, list(model.parameters())))
    guard.record("model", ok, updates=0)
    if ok:
        opt.step()
    return ok


def test_forced_nonfinite_gradient_is_skipped_and_counted() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    guard = NonFiniteGuard(limit=5)
    assert _guarded_step(model, opt, guard, 1.0)
    weights = [p.detach().clone() for p in model.parameters()]
    moments = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]

    assert not _guarded_step(model, opt, guard, float("nan"))
    assert not _guarded_step(model, opt, guard, float("inf"))

    for before, p in zip(weights, model.parameters(), strict=True):
        assert torch.equal(before, p)  # nothing applied
    for before, p in zip(moments, model.parameters(), strict=True):
        assert torch.equal(before, opt.state[p]["exp_avg"])  # Adam's moments not poisoned
    assert guard.metrics() == {"nonfinite/model_skipped": 2.0}
    assert guard.in_a_row["model"] == 2
    assert _guarded_step(model, opt, guard, 1.0)
    assert guard.in_a_row["model"] == 0 and guard.skipped["model"] == 2


def test_nonfinite_loss_with_finite_gradients_is_skipped() -> None:
    weight = torch.nn.Parameter(torch.ones(2))
    loss = (weight * 0).sum() + float("nan")
    loss.backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()
    assert not bool(finite(loss, [weight]))


def test_a_run_of_them_files_a_stop() -> None:
    stops, guard = StopRequests(), NonFiniteGuard(limit=3)
    guard.attach(stops)
    for update in range(3):
        assert not stops.requested
        guard.record("critic", False, updates=update)
    assert stops.reason is not None and stops.reason.status == EXIT_NONFINITE
    assert "3 critic updates in a row" in stops.reason.message and not stops.reason.checkpoint
    # The count survives a checkpoint.
    copy = NonFiniteGuard(limit=3)
    copy.load_state_dict(guard.state_dict())
    assert copy.metrics() == {"nonfinite/critic_skipped": 3.0}
