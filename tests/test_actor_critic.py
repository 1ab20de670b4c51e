import pytest
import torch
from tensordict import TensorDict

import hwm.actor_critic as ac_module
from hwm.actor_critic import ActorCritic
from hwm.world_model import WorldModel

B, T, H = 2, 4, 3
DETER, STOCH, CLASSES = 16, 4, 4
TINY_WM = dict(deter=DETER, hidden=16, stoch=STOCH, classes=CLASSES, mlp_units=32, mlp_layers=1)
TINY_AC = dict(units=32, layers=1, horizon=H)


# Tiny models gain nothing from threads, and fixed seeds keep the sampled latents repeatable.
pytestmark = pytest.mark.usefixtures("one_torch_thread_seeded")


def _setup(action_dim: int = 2, discrete: bool = False, **kwargs):
    wm = WorldModel((5,), action_dim, **TINY_WM)
    ac = ActorCritic(wm.rssm.feat_dim, action_dim, discrete, **{**TINY_AC, **kwargs})
    nxt = {
        "observation": torch.randn(B, T, 5),
        "reward": torch.randn(B, T, 1),
        "terminated": torch.zeros(B, T, 1),
    }
    batch = TensorDict({"action": torch.rand(B, T, action_dim) * 2 - 1, "next": nxt}, batch_size=[B, T])
    _, posterior, _ = wm.loss(batch)
    return wm, ac, posterior


def _flat_start(posterior):
    return tuple(s.detach().flatten(0, -2) for s in posterior)


def _grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def _has_grad(module: torch.nn.Module) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in _grads(module))


@pytest.mark.parametrize("discrete", [False, True])
def test_imagination_shapes_and_action_range(discrete: bool) -> None:
    wm, ac, posterior = _setup(action_dim=3, discrete=discrete)
    with torch.no_grad():
        ac.actor[-1].bias.add_(
            3.0
        )  # pushes continuous means/stds up so unclipped samples would leave [-1, 1]
    feats, actions, *_ = ac.imagine(wm, _flat_start(posterior))
    assert feats.shape == (H + 1, B * T, wm.rssm.feat_dim)
    assert actions.shape == (H, B * T, 3)
    torch.testing.assert_close(feats[0], torch.cat(_flat_start(posterior), -1))
    if discrete:
        index = actions.detach().argmax(-1)
        torch.testing.assert_close(actions.detach(), torch.nn.functional.one_hot(index, 3).float())
    else:
        assert actions.min() >= -1.0 and actions.max() <= 1.0
        assert (actions.abs() == 1.0).any()  # the clip is exercised


def test_continuous_actor_backpropagates_through_dynamics() -> None:
    wm, ac, posterior = _setup()
    assert ac.actor_grad == "dynamics"
    losses, metrics = ac.loss(wm, posterior)
    assert set(losses) == {"actor", "critic"}
    assert all(v.shape == () and torch.isfinite(v) for v in losses.values())
    assert {"imag_return", "imag_reward", "actor_entropy", "value", "return_scale"} <= set(metrics)
    losses["actor"].backward(retain_graph=True)
    assert _has_grad(ac.actor)
    assert all(g is None for g in _grads(wm)), "the actor loss trained the world model"
    assert all(g is None for g in _grads(ac.critic)) and all(g is None for g in _grads(ac.slow_critic))
    assert all(p.requires_grad for p in wm.parameters()), "frozen() did not restore the world model"

    ac.zero_grad(set_to_none=True)
    losses["critic"].backward()
    assert _has_grad(ac.critic)
    assert all(g is None for g in _grads(ac.actor))
    assert all(g is None for g in _grads(wm)) and all(g is None for g in _grads(ac.slow_critic))


def test_actor_gradient_comes_through_the_world_model() -> None:
    # Without the entropy bonus the only path from the actor loss to the actor is
    # action -> imagined state -> predicted reward / continue / slow value.
    wm, ac, posterior = _setup(actor_entropy=0.0)
    ac.loss(wm, posterior)[0]["actor"].backward()
    assert _has_grad(ac.actor)
    ac.zero_grad(set_to_none=True)
    with torch.no_grad():  # a world model blind to actions gives the actor nothing to follow
        wm.rssm.img_in_action.weight.zero_()
    ac.loss(wm, posterior)[0]["actor"].backward()
    assert not _has_grad(ac.actor)


def test_discrete_actor_uses_reinforce() -> None:
    wm, ac, posterior = _setup(action_dim=3, discrete=True)
    assert ac.actor_grad == "reinforce"
    losses, _ = ac.loss(wm, posterior)
    losses["actor"].backward(retain_graph=True)
    assert _has_grad(ac.actor)
    assert all(g is None for g in _grads(wm))
    assert all(g is None for g in _grads(ac.critic))  # the baseline is detached
    ac.zero_grad(set_to_none=True)
    losses["critic"].backward()
    assert _has_grad(ac.critic) and all(g is None for g in _grads(ac.actor))


@pytest.mark.parametrize(
    "kwargs,match",
    [({"actor_grad": "dynamics"}, "continuous"), ({"actor_grad": "straight"}, "actor_grad")],
)
def test_bad_actor_grad_is_rejected(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ActorCritic(8, 3, True, **TINY_AC, **kwargs)


@pytest.mark.parametrize("imag_starts,expected", [(0, B * T), (3, 3), (B * T, B * T), (100, B * T)])
def test_imag_starts_subsamples_start_states(monkeypatch, imag_starts: int, expected: int) -> None:
    wm, ac, posterior = _setup(imag_starts=imag_starts)
    seen = []
    original = ac.imagine

    def spy(world_model, start):
        seen.append(start)
        return original(world_model, start)

    monkeypatch.setattr(ac, "imagine", spy)
    ac.loss(wm, posterior)
    ((deter, stoch),) = seen
    assert deter.shape == (expected, DETER) and stoch.shape == (expected, STOCH * CLASSES)
    # The starts are distinct rows of the posterior.
    all_deter = posterior[0].detach().flatten(0, -2)
    matches = (deter[:, None] == all_deter[None]).all(-1)
    assert (matches.sum(1) == 1).all()
    assert len(set(matches.float().argmax(1).tolist())) == expected


def _critic_equal(ac: ActorCritic) -> bool:
    return all(
        torch.equal(s, f) for s, f in zip(ac.slow_critic.parameters(), ac.critic.parameters(), strict=True)
    )


def _perturb_critic(ac: ActorCritic) -> None:
    with torch.no_grad():
        for p in ac.critic.parameters():
            p.add_(torch.randn_like(p))


def test_slow_critic_update_schedule() -> None:
    ac = ActorCritic(8, 2, **TINY_AC, slow_critic_every=3)
    assert _critic_equal(ac)
    assert not any(p.requires_grad for p in ac.slow_critic.parameters())
    _perturb_critic(ac)
    ac.after_update()  # update 0 copies
    assert _critic_equal(ac) and int(ac.updates) == 1
    for _ in range(2):  # updates 1, 2 do not
        _perturb_critic(ac)
        ac.after_update()
        assert not _critic_equal(ac)
    ac.after_update()  # update 3 does
    assert _critic_equal(ac) and int(ac.updates) == 4
    # The copy is by value: changing the critic later does not move the slow one.
    _perturb_critic(ac)
    assert not _critic_equal(ac)


def test_slow_critic_fraction_mixes() -> None:
    ac = ActorCritic(8, 2, **TINY_AC, slow_critic_every=1, slow_critic_fraction=0.25)
    old = [p.clone() for p in ac.slow_critic.parameters()]
    _perturb_critic(ac)
    ac.after_update()
    for s, f, o in zip(ac.slow_critic.parameters(), ac.critic.parameters(), old, strict=True):
        torch.testing.assert_close(s, 0.75 * o + 0.25 * f)


def test_return_norm_tracks_the_percentile_spread(monkeypatch) -> None:
    wm, ac, posterior = _setup(return_norm=True)
    targets = []
    original = ac_module.lambda_return

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        targets.append(out.detach().clone())
        return out

    monkeypatch.setattr(ac_module, "lambda_return", spy)
    assert ac.return_range.item() == 0.0
    expected = 0.0
    for _ in range(3):
        _, metrics = ac.loss(wm, posterior)
        flat = targets[-1].flatten()
        spread = (torch.quantile(flat, 0.95) - torch.quantile(flat, 0.05)).item()
        expected = 0.99 * expected + 0.01 * spread
        assert spread > 0
        assert ac.return_range.item() == pytest.approx(expected, rel=1e-5)
        assert metrics["return_scale"].item() == pytest.approx(max(1.0, expected))


def test_return_range_converges_to_the_spread() -> None:
    ac = ActorCritic(8, 2, **TINY_AC, return_norm=True)
    target = torch.linspace(0, 100, 101).reshape(101, 1)  # 5-95 percentile spread = 90
    previous = 0.0
    for _ in range(1000):
        ac.retnorm.update(target)
        assert previous < ac.return_range.item() <= 90.0 + 1e-3
        previous = ac.return_range.item()
    assert previous == pytest.approx(90.0 * (1 - 0.99**1000), rel=1e-4)


def test_without_return_norm_the_range_stays_zero() -> None:
    wm, ac, posterior = _setup(return_norm=False)
    _, metrics = ac.loss(wm, posterior)
    assert ac.return_range.item() == 0.0 and metrics["return_scale"].item() == 1.0
