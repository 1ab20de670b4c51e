"""Toy problems with known answers: one actor or critic update must move things the right way.

The world here is a stand-in for a trained world model whose next state is the action just taken and whose
reward is that action's first component (continuous) or whether action 1 was chosen (discrete). A flipped
sign in the actor's loss, a return indexed one step off, or a gradient path cut between action and reward
makes these tests fail; nothing else in the suite would catch them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor, nn

from hwm.models.actor_critic import ActorCritic
from hwm.models.actor_critic_v3 import ActorCriticV3
from hwm.models.losses import lambda_return
from hwm.models.world_model import Starts

pytestmark = pytest.mark.usefixtures("one_torch_thread_seeded")

ACTIONS, STOCH, HORIZON = 3, 2, 4


class _ActionIsState:
    """RSSM stand-in: the next deter is the action taken, the stoch stays zero."""

    def img_step(self, state: tuple[Tensor, Tensor], action: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        return (action, torch.zeros_like(state[1])), torch.zeros(())


class ToyWorld(nn.Module):
    """The few world-model methods the actor-critic uses; reward rises with the action (``reward_gain``)."""

    def __init__(self, *, discrete: bool, reward_gain: float = 1.0, reward: float | None = None) -> None:
        super().__init__()
        self.discrete, self.reward_gain, self.constant = discrete, reward_gain, reward
        self.rssm = _ActionIsState()

    @staticmethod
    def feat(state: tuple[Tensor, Tensor]) -> Tensor:
        return torch.cat(state, -1)

    def reward(self, feat: Tensor) -> Tensor:
        if self.constant is not None:
            return torch.full(feat.shape[:-1], self.constant)
        # Discrete: one-hot in the deter slot, action 1 pays; continuous: the first component pays.
        return self.reward_gain * (feat[..., 1] if self.discrete else feat[..., 0])

    def continue_prob(self, feat: Tensor) -> Tensor:
        return torch.ones(*feat.shape[:-1], 1)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        yield


def _starts(n: int) -> Starts:
    return Starts(torch.zeros(n, ACTIONS), torch.zeros(n, STOCH), torch.ones(n))


def _actor_critic(cls: type[ActorCritic], discrete: bool, actor_grad: str, **kwargs) -> ActorCritic:
    ac = cls(ACTIONS + STOCH, ACTIONS, discrete, units=16, layers=1, horizon=HORIZON, actor_grad=actor_grad,
             **kwargs)  # fmt: skip
    if cls is ActorCritic:  # V3's critic starts at zero already; V2's gets a zero value to isolate the reward
        for net in (ac.critic, ac.slow_critic):
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
    return ac


def _paying_action(ac: ActorCritic, discrete: bool, n: int) -> Tensor:
    """How much of the paying action the policy takes at the start state: P(action 1), or the mean's first
    component (the distribution's mode)."""
    with torch.no_grad():
        dist = ac.action_dist(ToyWorld.feat((torch.zeros(n, ACTIONS), torch.zeros(n, STOCH))))
        return dist.dist.probs[..., 1].mean() if discrete else dist.mode()[..., 0].mean()


CASES = [
    pytest.param(ActorCritic, False, "dynamics", id="v2-continuous-dynamics"),
    pytest.param(ActorCritic, False, "reinforce", id="v2-continuous-reinforce"),
    pytest.param(ActorCritic, True, "reinforce", id="v2-discrete-reinforce"),
    pytest.param(ActorCriticV3, False, "dynamics", id="v3-continuous-dynamics"),
    pytest.param(ActorCriticV3, False, "reinforce", id="v3-continuous-reinforce"),
    pytest.param(ActorCriticV3, True, "reinforce", id="v3-discrete-reinforce"),
]


@pytest.mark.parametrize("cls,discrete,actor_grad", CASES)
def test_one_actor_update_moves_the_policy_towards_the_paying_action(cls, discrete, actor_grad) -> None:
    n = 4096  # many imagined starts: a REINFORCE step's direction is then reliable
    ac = _actor_critic(cls, discrete, actor_grad, actor_entropy=0.0)
    world = ToyWorld(discrete=discrete)
    before = _paying_action(ac, discrete, n)
    opt = torch.optim.SGD(ac.actor.parameters(), lr=0.5)
    losses, _ = ac.loss(world, _starts(n))
    opt.zero_grad()
    losses["actor"].backward()
    opt.step()
    after = _paying_action(ac, discrete, n)
    assert after > before + 1e-3, (float(before), float(after))


@pytest.mark.parametrize("cls", [ActorCritic, ActorCriticV3])
def test_dynamics_gradient_pulls_only_the_paying_dimension_in_proportion_to_the_slope(cls) -> None:
    """Through the dynamics the actor sees the reward's slope itself: the gradient on the actor's mean
    output at the start state is negative (loss falls as the mean rises) on the paying dimension, zero on
    the others, and twice as large for twice the slope."""
    pulls = []
    for gain in (1.0, 2.0):
        torch.manual_seed(0)
        ac = _actor_critic(cls, False, "dynamics", actor_entropy=0.0, return_norm=False)
        outputs: list[Tensor] = []

        def keep(_module: nn.Module, _inputs: object, out: Tensor, outputs: list[Tensor] = outputs) -> None:
            out.retain_grad()
            outputs.append(out)

        hook = ac.actor.register_forward_hook(keep)
        losses, _ = ac.loss(ToyWorld(discrete=False, reward_gain=gain), _starts(32))
        hook.remove()
        losses["actor"].backward()
        mean_grad = outputs[0].grad[:, :ACTIONS]  # the first call acts at the start states
        assert (mean_grad[:, 0] < 0).all()
        torch.testing.assert_close(mean_grad[:, 1:], torch.zeros_like(mean_grad[:, 1:]))
        pulls.append(mean_grad[:, 0])
    torch.testing.assert_close(pulls[1], 2 * pulls[0])


@pytest.mark.parametrize("cls", [ActorCritic, ActorCriticV3])
def test_critic_targets_are_the_lambda_returns_of_the_imagined_rewards(cls) -> None:
    """Constant reward 1 and a zero value: the targets are known in closed form, and one critic update
    raises the value towards them."""
    n = 64
    ac = _actor_critic(cls, False, "dynamics")
    world = ToyWorld(discrete=False, reward=1.0)
    gamma, lam = ac.discount, ac.lambda_
    # R_t = 1 + gamma * lambda * R_{t+1} with R_H = v_H = 0 (and (1 - lambda) * v = 0 on the way).
    expected = torch.zeros(HORIZON)
    for t in reversed(range(HORIZON)):
        expected[t] = 1.0 + gamma * lam * (expected[t + 1] if t + 1 < HORIZON else 0.0)
    reward = torch.ones(HORIZON, n)
    discount = torch.full((HORIZON, n), gamma)
    target = lambda_return(reward, torch.zeros(HORIZON + 1, n), discount, lambda_=lam)
    torch.testing.assert_close(target, expected[:, None].expand(HORIZON, n))

    feat0 = ToyWorld.feat((torch.zeros(n, ACTIONS), torch.zeros(n, STOCH)))
    before = _value(ac, feat0)
    opt = torch.optim.Adam(ac.critic.parameters(), lr=1e-2)
    losses, metrics = ac.loss(world, _starts(n))
    torch.testing.assert_close(metrics["imag_return"], expected[0])
    opt.zero_grad()
    losses["critic"].backward()
    opt.step()
    assert _value(ac, feat0) > before + 1e-4


def _value(ac: ActorCritic, feat: Tensor) -> Tensor:
    with torch.no_grad():
        out = ac.critic(feat)
        value = ac.twohot.mean(out) if isinstance(ac, ActorCriticV3) else out.squeeze(-1)
        return value.mean()


def test_truncated_normal_reparameterised_gradient_matches_finite_differences() -> None:
    """Backprop through DreamerV2's truncated normal: d sample / d (loc, std) by autograd equals central
    differences of the same inverse-CDF samples (common random numbers), near and far from the bounds."""
    from torchrl.modules import TruncatedNormal

    loc = torch.tensor([0.3, -0.8, 0.95]).repeat(4000, 1).requires_grad_(True)
    std = torch.tensor([0.5, 0.2, 1.0]).repeat(4000, 1).requires_grad_(True)

    def cubed_samples(loc: Tensor, std: Tensor) -> Tensor:
        torch.manual_seed(5)
        return TruncatedNormal(loc, std, low=-1.0, high=1.0).rsample() ** 3

    cubed_samples(loc, std).sum().backward()
    h = 1e-3
    with torch.no_grad():
        by_loc = (cubed_samples(loc + h, std) - cubed_samples(loc - h, std)) / (2 * h)
        by_std = (cubed_samples(loc, std + h) - cubed_samples(loc, std - h)) / (2 * h)
    torch.testing.assert_close(loc.grad.mean(0), by_loc.mean(0), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(std.grad.mean(0), by_std.mean(0), rtol=1e-3, atol=1e-4)
