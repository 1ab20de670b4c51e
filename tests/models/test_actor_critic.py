import pytest
import torch
from tensordict import TensorDict

import hwm.models.actor_critic as ac_module
from hwm.models.actor_critic import ActionDist, ActorCritic
from hwm.models.world_model import Starts, WorldModel

B, T, H = 2, 4, 3
DETER, STOCH, CLASSES = 16, 4, 4
TINY_WM = dict(deter=DETER, hidden=16, stoch=STOCH, classes=CLASSES, mlp_units=32, mlp_layers=1)
TINY_AC = dict(units=32, layers=1, horizon=H)


# Tiny models gain nothing from threads, and fixed seeds keep the sampled latents repeatable.
pytestmark = pytest.mark.usefixtures("one_torch_thread_seeded")


def _setup(action_dim: int = 2, discrete: bool = False, terminal: torch.Tensor | None = None, **kwargs):
    wm = WorldModel((5,), action_dim, **TINY_WM)
    ac = ActorCritic(wm.rssm.feat_dim, action_dim, discrete, **{**TINY_AC, **kwargs})
    is_first = torch.zeros(B, T, 1, dtype=torch.bool)
    is_first[:, 0] = True
    batch = TensorDict(
        {
            "observation": torch.randn(B, T, 5),
            "action": torch.rand(B, T, action_dim) * 2 - 1,
            "reward": torch.randn(B, T, 1),
            "is_first": is_first,
            "is_terminal": torch.zeros(B, T, 1, dtype=torch.bool) if terminal is None else terminal,
        },
        batch_size=[B, T],
    )
    _, posterior, _ = wm.loss(batch)
    return wm, ac, posterior


def _flat_start(posterior: Starts) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(s.detach().flatten(0, -2) for s in (posterior.deter, posterior.stoch))


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
    else:  # DreamerV2's truncated normal: inside the bounds, never on them, however far out the mean is
        assert actions.abs().max() < 1.0


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
    # (Rows that start episodes share their deter: the one after the initial state and a zero action.)
    all_states = torch.cat(_flat_start(posterior), -1)
    matches = (torch.cat([deter, stoch], -1)[:, None] == all_states[None]).all(-1)
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


# -- terminal imagination starts ---------------------------------------------------------------------------


def test_terminal_starts_get_zero_weight() -> None:
    # Imagining from a game-over state trains on steps that never happen: DreamerV2/V3 weigh them 0.
    all_terminal = torch.ones(B, T, 1, dtype=torch.bool)
    wm, ac, posterior = _setup(terminal=all_terminal, actor_entropy=1e-2)
    assert torch.equal(posterior.cont, torch.zeros(B, T))
    losses, _ = ac.loss(wm, posterior)
    assert losses["actor"].item() == 0.0 and losses["critic"].item() == 0.0
    discount = torch.full((H, 4), 0.9)
    weight = ActorCritic._weight(discount, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(weight[:, 0], 0.9 ** torch.arange(H, dtype=torch.float32))
    assert torch.equal(weight[:, 1], torch.zeros(H)) and torch.equal(weight[:, 0], weight[:, 2])


# -- DreamerV2's truncated-normal actor ----------------------------------------------------------------------


def _trunc(mean: float, raw_std: float, n: int = 1) -> ActionDist:
    out = torch.tensor([[mean, raw_std]]).expand(n, 2)
    return ActionDist(out, discrete=False, min_std=0.1)


GRID = torch.linspace(-1.0, 1.0, 200_001)[1:-1]


@pytest.mark.parametrize("mean,raw_std", [(0.0, 0.0), (2.0, 0.0), (-0.5, -4.0), (3.0, -8.0)])
def test_truncated_normal_density_integrates_to_one(mean: float, raw_std: float) -> None:
    dist = _trunc(mean, raw_std, GRID.numel())
    logp = dist.log_prob(GRID.unsqueeze(-1))
    assert logp.shape == GRID.shape
    density = logp.double().exp()
    assert torch.trapezoid(density, GRID.double()).item() == pytest.approx(1.0, abs=2e-3)
    # Its entropy is -E[log p], by quadrature.
    numeric = -torch.trapezoid(density * logp.double(), GRID.double()).item()
    assert dist.entropy()[0].item() == pytest.approx(numeric, abs=5e-3)


def test_truncated_normal_samples_stay_strictly_inside() -> None:
    # An untrained actor (raw outputs ~0: std 1.1 around tanh(0)) explores with these; a clipped normal put
    # about a third of them exactly on +-1.
    for mean in (0.0, 1.5, 5.0):
        x = _trunc(mean, 0.0, 100_000).sample()
        assert x.shape == (100_000, 1)
        assert (x.abs() < 1.0).all()
    untrained = _trunc(0.0, 0.0, 100_000).sample()
    assert (untrained.abs() > 0.999).float().mean() < 0.01
    # The histogram follows the density: symmetric around 0 here, more mass near 0 than near the bounds.
    assert abs(untrained.mean().item()) < 0.01
    hist = torch.histc(untrained, bins=4, min=-1.0, max=1.0)
    assert hist[1] > hist[0] and hist[2] > hist[3]


def test_truncated_normal_rsample_carries_gradients_and_mode_is_the_mean() -> None:
    out = torch.tensor([[0.3, 0.5], [-0.2, 1.0]], requires_grad=True)
    dist = ActionDist(out, discrete=False, min_std=0.1)
    dist.rsample().sum().backward()
    assert out.grad is not None and (out.grad != 0).all()  # through the location and the scale
    torch.testing.assert_close(dist.mode(), torch.tanh(out.detach()[:, :1]))
    with torch.no_grad():
        assert not dist.sample().requires_grad
