"""The DreamerV3 base: its pure losses against hand-computed values, its modules, presets and harmonization."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from hwm.agent import HarmonyDreamAgent
from hwm.envs.common import EnvInfo
from hwm.models import presets
from hwm.models.actor_critic import ActionDist, ReturnNorm
from hwm.models.actor_critic_v3 import ActorCriticV3
from hwm.models.distributions import TwoHot, symexp, symlog, unimix_logits
from hwm.models.losses import categorical_kl, dyn_rep_kl, free_bits
from hwm.models.world_model import WorldModel
from hwm.models.world_model_v3 import WorldModelV3

pytestmark = pytest.mark.usefixtures("one_torch_thread_seeded")

B, T, A = 2, 4, 2
TINY = dict(deter=16, hidden=16, stoch=4, classes=4, cnn_depth=4, mlp_units=32, mlp_layers=1)
STATES, PIXELS = (5,), (3, 64, 64)


def _batch(obs_shape: tuple[int, ...], b: int = B, t: int = T) -> TensorDict:
    if len(obs_shape) == 3:
        key, obs = "pixels", torch.randint(0, 256, (b, t, *obs_shape), dtype=torch.uint8)
    else:
        key, obs = "observation", 100 * torch.randn(b, t, *obs_shape)
    is_first = torch.zeros(b, t, 1, dtype=torch.bool)
    is_first[:, 0] = True
    return TensorDict(
        {
            key: obs,
            "action": torch.rand(b, t, A) * 2 - 1,
            "reward": 50 * torch.randn(b, t, 1),
            "is_first": is_first,
            "is_terminal": torch.zeros(b, t, 1, dtype=torch.bool),
        },
        batch_size=[b, t],
    )


# -- symlog / symexp ------------------------------------------------------------------------------------------


def test_symlog_symexp_are_inverse() -> None:
    x = torch.tensor([-1e6, -123.4, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 20.0, 1e6], dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(x)), x)
    torch.testing.assert_close(symlog(symexp(x.clamp(-30, 30))), x.clamp(-30, 30))
    # Hand values: symlog(e - 1) = 1, odd symmetry, identity-like near 0.
    assert symlog(torch.tensor(math.e - 1)).item() == pytest.approx(1.0)
    assert symlog(torch.tensor(-(math.e - 1))).item() == pytest.approx(-1.0)
    assert symlog(torch.tensor(1e-4)).item() == pytest.approx(1e-4, rel=1e-3)


# -- two-hot --------------------------------------------------------------------------------------------------


def test_two_hot_encoding_by_hand() -> None:
    th = TwoHot(bins=5, low=-2.0, high=2.0, transform=False)  # bins -2, -1, 0, 1, 2
    enc = th.encode(torch.tensor([0.25, -1.0, -3.0, 5.0, 1.9]))
    expected = torch.tensor(
        [
            [0, 0, 0.75, 0.25, 0],  # 0.25: a quarter of the way from bin 0 to bin 1
            [0, 1, 0, 0, 0],  # exactly on a bin
            [1, 0, 0, 0, 0],  # below the range: clipped to the first bin
            [0, 0, 0, 0, 1],  # above: the last
            [0, 0, 0, 0.1, 0.9],
        ]
    )
    torch.testing.assert_close(enc, expected)
    torch.testing.assert_close(enc.sum(-1), torch.ones(5))


def test_two_hot_expected_value_and_nll_by_hand() -> None:
    probs = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2])
    raw = TwoHot(bins=5, low=-2.0, high=2.0, transform=False)
    # -2(0.1) - 1(0.2) + 0(0.3) + 1(0.2) + 2(0.2) = 0.2
    assert raw.mean(probs.log()).item() == pytest.approx(0.2)
    sym = TwoHot(bins=5, low=-2.0, high=2.0)
    assert sym.mean(probs.log()).item() == pytest.approx(math.exp(0.2) - 1)  # symexp(0.2)
    # Cross-entropy against the target [0, 0, .75, .25, 0] of 0.25.
    nll = raw.nll(probs.log(), torch.tensor(0.25))
    assert nll.item() == pytest.approx(-(0.75 * math.log(0.3) + 0.25 * math.log(0.2)))


def test_two_hot_round_trip_over_255_symlog_bins() -> None:
    th = TwoHot()  # DreamerV3's: 255 bins from -20 to 20 in symlog space
    points = th.points(torch.zeros(()))
    assert points.shape == (255,) and points[127].item() == 0.0
    y = torch.tensor([-5000.0, -37.5, -1.0, -0.01, 0.0, 0.003, 0.5, 7.0, 1234.5, 1e5])
    target = th.encode(y)
    assert ((target > 0).sum(-1) <= 2).all()
    # Decoding the encoding (as a distribution) gives y back.
    torch.testing.assert_close(th.mean(target.clamp_min(1e-30).log()), y, rtol=1e-4, atol=1e-5)
    # The cross-entropy is minimised by predicting exactly the target.
    logits = target.clamp_min(1e-30).log().requires_grad_()
    th.nll(logits, y).sum().backward()
    assert logits.grad.abs().max().item() < 1e-5


# -- percentile return normaliser ------------------------------------------------------------------------------


def test_return_norm_matches_numpy_percentiles() -> None:
    rng = np.random.default_rng(0)
    norm = ReturnNorm()
    low = high = 0.0
    for scale in (1.0, 50.0, 200.0):
        x = rng.normal(3.0, scale, size=(15, 64)).astype(np.float32)
        norm.update(torch.from_numpy(x))
        low = 0.99 * low + 0.01 * np.percentile(x, 5)
        high = 0.99 * high + 0.01 * np.percentile(x, 95)
        assert norm.low.item() == pytest.approx(low, rel=1e-4)
        assert norm.high.item() == pytest.approx(high, rel=1e-4)
        assert norm.scale().item() == pytest.approx(max(1.0, high - low), rel=1e-4)
    assert norm.scale().item() > 1.0  # large returns: divided by their range
    small = ReturnNorm()
    small.update(torch.linspace(0, 0.01, 100))
    assert small.scale().item() == 1.0  # small returns are never amplified: max(1, S)


# -- unimix ---------------------------------------------------------------------------------------------------


def test_unimix_probabilities() -> None:
    logits = torch.tensor([[50.0, 0.0, -50.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mixed = unimix_logits(logits, 0.01).softmax(-1)
    torch.testing.assert_close(mixed, 0.99 * logits.softmax(-1) + 0.01 / 4)
    assert mixed.min().item() >= 0.01 / 4 - 1e-7  # every class keeps a floor
    torch.testing.assert_close(mixed[1], torch.full((4,), 0.25))  # uniform stays uniform
    assert unimix_logits(logits, 0.0) is logits
    # The world model's latents and the discrete actor use it.
    wm = WorldModelV3(STATES, A, **TINY)
    prior = wm.rssm.prior_logits(100 * torch.randn(3, 16)).softmax(-1)
    assert prior.min().item() >= 0.01 / 4 - 1e-6
    dist = ActionDist(torch.tensor([[100.0, -100.0, -100.0]]), discrete=True, min_std=0.1, unimix=0.01)
    torch.testing.assert_close(dist.dist.probs, torch.tensor([[0.99 + 0.01 / 3, 0.01 / 3, 0.01 / 3]]))


# -- free bits ------------------------------------------------------------------------------------------------


def test_free_bits_clip_each_step() -> None:
    x = torch.tensor([0.2, 0.9, 1.0, 1.5, 4.0], requires_grad=True)
    clipped = free_bits(x, 1.0)
    torch.testing.assert_close(clipped, torch.tensor([1.0, 1.0, 1.0, 1.5, 4.0]))
    clipped.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))  # no gradient below the floor
    assert free_bits(x, 0.0) is x


def test_dyn_rep_kl_free_bits_per_step_and_gradients() -> None:
    torch.manual_seed(0)
    post = torch.randn(2, 3, 4, 4)
    prior = post.clone()
    prior[0] += 5 * torch.randn(3, 4, 4)  # batch row 0: large KL; row 1: KL 0
    prior.requires_grad_()
    post.requires_grad_()
    dyn, rep = dyn_rep_kl(post, prior, free=1.0)
    kl = categorical_kl(post, prior).detach()
    assert (kl[0] > 1).all() and (kl[1] < 1e-6).all()
    torch.testing.assert_close(dyn.detach(), kl.clamp(min=1.0))
    torch.testing.assert_close(rep.detach(), kl.clamp(min=1.0))
    # Per step, not on the mean: the mean here is above 1, which a clip of the mean would leave alone.
    assert kl.mean() > 1 and dyn.mean() > kl.mean()
    # dyn trains only the prior, rep only the posterior.
    (g_prior,) = torch.autograd.grad(dyn.sum(), prior, retain_graph=True)
    assert torch.autograd.grad(dyn.sum(), post, allow_unused=True)[0] is None
    assert g_prior[0].abs().sum() > 0 and g_prior[1].abs().sum() == 0  # clipped steps: no gradient
    (g_post,) = torch.autograd.grad(rep.sum(), post)
    assert g_post[0].abs().sum() > 0 and torch.autograd.grad(rep.sum(), prior, allow_unused=True)[0] is None


# -- modules --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("obs_shape", [STATES, PIXELS])
def test_world_model_v3_loss(obs_shape) -> None:
    wm = WorldModelV3(obs_shape, A, **TINY)
    if len(obs_shape) == 3:
        assert wm.encoder.out_dim == 8 * 4 * 4 * 4  # 'same' convs down to 4x4
        assert wm.decoder(torch.zeros(2, wm.rssm.feat_dim)).shape == (2, 3, 64, 64)
    assert any(isinstance(m, torch.nn.LayerNorm) for m in wm.modules())
    assert any(isinstance(m, torch.nn.SiLU) for m in wm.modules())
    losses, (deter, stoch, _), metrics = wm.loss(_batch(obs_shape))
    assert set(losses) == {"obs", "reward", "dynamics", "continue"}
    assert wm.rssm.initial_deter is not None  # DreamerV3's learned initial state
    assert all(torch.isfinite(v) and v.requires_grad for v in losses.values())
    assert deter.shape == (B, T, 16) and stoch.shape == (B, T, 16)
    # The KL task keeps dynamics : representation at 5 : 1 with unit total weight.
    expected = (5 * metrics["kl_dyn"] + metrics["kl_rep"]) / 6
    assert losses["dynamics"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["kl_dyn"] >= 1.0 and metrics["kl_rep"] >= 1.0  # free bits
    assert wm.task_scales == {"dynamics": pytest.approx(0.6)}
    # Zero-initialised reward head: predicts 0 and its two-hot loss is log(255) for any reward.
    assert wm.reward(torch.randn(3, wm.rssm.feat_dim)).abs().max().item() < 1e-6
    assert losses["reward"].item() == pytest.approx(math.log(255), rel=1e-5)


@pytest.mark.parametrize("discrete", [False, True])
def test_actor_critic_v3_losses_and_slow_critic(discrete: bool) -> None:
    wm = WorldModelV3(STATES, A, **TINY)
    _, posterior, _ = wm.loss(_batch(STATES))
    ac = ActorCriticV3(wm.rssm.feat_dim, A, discrete, units=16, layers=1, horizon=4)
    assert ac.critic[-1].weight.abs().sum() == 0  # zero-initialised critic output
    torch.manual_seed(1)
    losses, metrics = ac.loss(wm, posterior)
    assert set(losses) == {"actor", "critic"} and all(torch.isfinite(v) for v in losses.values())
    # Critic: two-hot NLL of the target plus the slow regulariser, both log(255) for a zero critic, weighed
    # by each imagined step's weight (the same rollout again: same seed).
    torch.manual_seed(1)
    weight = ac._rollout(wm, posterior).weight
    expected = (1 + ac.slow_reg) * math.log(255) * weight.mean().item()
    assert losses["critic"].item() == pytest.approx(expected, rel=1e-5)
    losses["actor"].backward()
    assert all(p.grad is None for p in ac.critic.parameters())  # the actor's loss does not train the critic
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ac.actor.parameters())
    with torch.no_grad():
        for p in ac.critic.parameters():
            p.add_(1.0)
    old = [p.clone() for p in ac.slow_critic.parameters()]
    ac.after_update()  # every update, 2% of the way
    for s, f, o in zip(ac.slow_critic.parameters(), ac.critic.parameters(), old, strict=True):
        torch.testing.assert_close(s, 0.98 * o + 0.02 * f)
    assert metrics["return_scale"].item() >= 1.0


# -- base and size presets, harmonization ---------------------------------------------------------------------

ENV = EnvInfo(obs_shape=STATES, action_dim=A, discrete=False)


def _agent(**kwargs) -> HarmonyDreamAgent:
    return HarmonyDreamAgent(ENV, base="dreamerv3", size="XS", **kwargs)


def test_size_presets_and_base_classes() -> None:
    agent = _agent()
    assert isinstance(agent.world_model, WorldModelV3) and isinstance(agent.actor_critic, ActorCriticV3)
    assert agent.world_model.rssm.deter_dim == 256 and agent.world_model.rssm.stoch_dim == 32 * 32
    assert (agent.model_lr, agent.model_eps, agent.model_grad_clip) == (1e-4, 1e-8, 1000.0)
    assert (agent.actor_lr, agent.eps, agent.grad_clip, agent.weight_decay) == (3e-5, 1e-5, 100.0, 0.0)
    sizes = [presets.size_options(s)[0]["deter"] for s in presets.SIZE_NAMES]
    assert sizes == [256, 512, 1024, 2048, 4096]
    v2 = HarmonyDreamAgent(ENV)
    assert type(v2.world_model) is WorldModel and v2.model_lr == 3e-4


@pytest.mark.parametrize(
    ("base", "size", "fragment"),
    [("dreamerv4", None, "dreamerv2, dreamerv3"), ("dreamerv3", "XXL", "XS, S, M, L, XL")],
)
def test_bad_base_or_size_names_the_choices(base, size, fragment) -> None:
    with pytest.raises(ValueError, match=fragment):
        presets.check(base, size)
    with pytest.raises(ValueError, match=fragment):
        presets.defaults(base, size)


def test_base_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="model.base is 'dreamerv3'"):
        _agent(world_model=lambda obs, act: WorldModel(obs, act, **TINY))


@pytest.mark.parametrize("mode", ["off", "fixed", "rectified"])
def test_v3_harmonizer_weights(mode: str) -> None:
    agent = HarmonyDreamAgent(
        ENV,
        base="dreamerv3",
        world_model=lambda obs, act: WorldModelV3(obs, act, **TINY),
        actor_critic=lambda f, a, d: ActorCriticV3(f, a, d, units=16, layers=1),
        harmonizer_mode=mode,
    )
    losses, _, metrics = agent.world_model.loss(_batch(STATES))
    total, _ = agent.harmonizer(agent._harmonizer_inputs(losses))
    dyn, rep = metrics["kl_dyn"], metrics["kl_rep"]
    if mode in ("off", "fixed"):  # the plain DreamerV3 loss: dyn 0.5, rep 0.1, others 1
        plain = losses["obs"] + losses["reward"] + 0.5 * dyn + 0.1 * rep
        assert total.item() == pytest.approx(plain.item(), rel=1e-5)
    else:  # sigma = 1 at start: each task at weight 1 plus log 2, the KL pair sharing one harmonizer 5:1
        kl_task = (0.5 / 0.6) * dyn + (0.1 / 0.6) * rep
        # The authors' Atari code weighs the KL harmonizer's regulariser by 0.5/0.6 too.
        expected = losses["obs"] + losses["reward"] + kl_task + (2 + 5 / 6) * math.log(2)
        assert total.item() == pytest.approx(expected.item(), rel=1e-5)
        assert agent.harmonizer.log_sigma.shape == (3,)  # obs, reward, and one for the KL pair


def test_v3_harmonized_kl_term_as_the_authors_weigh_it() -> None:
    # dreamerv3-jax: harmony(dyn) * 0.5/0.6 + harmony(rep, no regulariser) * 0.1/0.6, harmony(L, reg) =
    # L / e^s + reg * log(e^s + 1): at any s, the KL task's share of the harmonized total.
    agent = HarmonyDreamAgent(
        ENV,
        base="dreamerv3",
        world_model=lambda obs, act: WorldModelV3(obs, act, **TINY),
        actor_critic=lambda f, a, d: ActorCriticV3(f, a, d, units=16, layers=1),
    )
    with torch.no_grad():
        agent.harmonizer.log_sigma.copy_(torch.tensor([0.3, -0.7, 1.2]))
    losses, _, metrics = agent.world_model.loss(_batch(STATES))
    zeros = {k: torch.zeros(()) for k in ("obs", "reward")}
    total, _ = agent.harmonizer({**zeros, "dynamics": losses["dynamics"]})
    s = 1.2
    harmony = lambda loss, reg=True: loss / math.exp(s) + (math.log(math.exp(s) + 1) if reg else 0.0)  # noqa: E731
    dyn, rep = metrics["kl_dyn"].item(), metrics["kl_rep"].item()
    authors = harmony(dyn) * 0.5 / 0.6 + harmony(rep, False) * 0.1 / 0.6
    others = math.log(1 + math.exp(0.3)) + math.log(1 + math.exp(-0.7))  # the zero losses' regularisers
    assert total.item() == pytest.approx(authors + others, rel=1e-5)
    # Its optimum: weight 1/sigma* = 0.541 for a KL task of 1 nat (0.618 with the full regulariser).
    c, L = 5 / 6, 1.0
    sigma = (L + math.sqrt(L * L + 4 * c * L)) / (2 * c)
    assert 1 / sigma == pytest.approx(0.541, abs=1e-3)
