import math

import pytest
import torch
from tensordict import TensorDict

from hwm.models.rssm import RSSM, sample_straight_through
from hwm.models.world_model import WorldModel

TASKS = (*WorldModel.HARMONIZED, "continue")

B, T, A = 2, 4, 2
DETER, STOCH, CLASSES = 16, 4, 4
TINY = dict(deter=DETER, hidden=16, stoch=STOCH, classes=CLASSES, cnn_depth=4, mlp_units=32, mlp_layers=1)
STATES, PIXELS = (5,), (3, 64, 64)


# Tiny models gain nothing from threads, and fixed seeds keep the sampled latents repeatable.
pytestmark = pytest.mark.usefixtures("one_torch_thread_seeded")


def _batch(obs_shape: tuple[int, ...], *, terminated: bool = False, b: int = B, t: int = T) -> TensorDict:
    """Replayed steps in the replay's layout: o_t, a_{t-1}, r_t and flags; each window starts an episode."""
    if len(obs_shape) == 3:
        key, obs = "pixels", torch.randint(0, 256, (b, t, *obs_shape), dtype=torch.uint8)
    else:
        key, obs = "observation", torch.randn(b, t, *obs_shape)
    is_first = torch.zeros(b, t, 1, dtype=torch.bool)
    is_first[:, 0] = True
    return TensorDict(
        {
            key: obs,
            "action": torch.rand(b, t, A) * 2 - 1,
            "reward": torch.randn(b, t, 1),
            "is_first": is_first,
            "is_terminal": torch.full((b, t, 1), terminated),
        },
        batch_size=[b, t],
    )


def _model(obs_shape, **kwargs) -> WorldModel:
    return WorldModel(obs_shape, A, **{**TINY, **kwargs})


@pytest.mark.parametrize("obs_shape", [STATES, PIXELS])
def test_loss_terms_and_posterior_shapes(obs_shape) -> None:
    wm = _model(obs_shape)
    assert wm.pixels == (len(obs_shape) == 3)
    losses, (deter, stoch, cont), metrics = wm.loss(_batch(obs_shape))
    assert set(losses) == {"obs", "reward", "dynamics", "continue"} == set(TASKS)
    assert torch.equal(cont, torch.ones(B, T))  # nothing terminal in this batch
    for name, value in losses.items():
        assert value.shape == (), name
        assert torch.isfinite(value), name
        assert value.requires_grad, name
    assert deter.shape == (B, T, DETER)
    assert stoch.shape == (B, T, STOCH * CLASSES)
    # The posterior sample is one-hot per categorical.
    per_cat = stoch.detach().unflatten(-1, (STOCH, CLASSES))
    torch.testing.assert_close(per_cat.sum(-1), torch.ones(B, T, STOCH))
    assert set(metrics) == {
        "kl",
        "post_entropy",
        "prior_entropy",
        "reward_mse",
        "reward_mse_large_action",
        "reward_mse_small_action",
        "large_action_share",
    }
    assert all(not v.requires_grad for v in metrics.values())
    assert 0 < metrics["post_entropy"] <= STOCH * math.log(CLASSES) + 1e-4
    # An untrained decoder's error summed over every element: above the one-scalar reward loss for 5 state
    # values, far above it for 12,288 pixel values.
    assert losses["obs"].item() > (100 if wm.pixels else 2) * losses["reward"].item() > 0


def _first_layer(wm: WorldModel) -> torch.nn.Parameter:
    return next(wm.encoder.parameters())


@pytest.mark.parametrize("obs_shape", [STATES, PIXELS])
@pytest.mark.parametrize("task", TASKS)
def test_each_loss_alone_trains_the_encoder(obs_shape, task: str) -> None:
    wm = _model(obs_shape)  # free_nats=0, so the KL is never clipped to a constant
    losses, _, _ = wm.loss(_batch(obs_shape))
    losses[task].backward()
    grad = _first_layer(wm).grad
    assert grad is not None and grad.abs().sum() > 0, f"{task} loss does not reach the encoder"


def test_continue_target_is_one_minus_terminated() -> None:
    wm = _model(STATES)
    last = wm.continue_head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(6.0)  # p(continue) ~ 0.9975 everywhere
    alive, _, _ = wm.loss(_batch(STATES, terminated=False))
    dead, _, _ = wm.loss(_batch(STATES, terminated=True))
    assert alive["continue"].item() == pytest.approx(math.log1p(math.exp(-6.0)), rel=1e-4)
    assert dead["continue"].item() == pytest.approx(6.0 + math.log1p(math.exp(-6.0)), rel=1e-4)


def test_without_continue_head() -> None:
    wm = _model(STATES, continue_head=False)
    assert wm.continue_head is None
    losses, _, _ = wm.loss(_batch(STATES, terminated=True))
    assert losses["continue"].item() == 0.0
    feat = torch.randn(3, 5, wm.rssm.feat_dim)
    prob = wm.continue_prob(feat)
    assert prob.shape == (3, 5, 1)
    assert torch.equal(prob, torch.ones(3, 5, 1))
    # With a head, it is a probability that depends on the feature.
    prob = _model(STATES).continue_prob(feat)
    assert prob.shape == (3, 5, 1) and ((prob > 0) & (prob < 1)).all() and prob.std() > 0


def _first(b: int = B, t: int = T, *at: int) -> torch.Tensor:
    is_first = torch.zeros(b, t, 1, dtype=torch.bool)
    is_first[:, list(at) or [0]] = True
    return is_first


def test_observe_equals_manual_obs_steps() -> None:
    rssm = RSSM(action_dim=A, embed_dim=7, deter=DETER, hidden=16, stoch=STOCH, classes=CLASSES)
    embed, action = torch.randn(B, T, 7), torch.randn(B, T, A)
    is_first = _first(B, T, 0, 2)
    torch.manual_seed(123)
    out = rssm.observe(embed, action, is_first)
    torch.manual_seed(123)
    state = rssm.initial((B,), embed.device, embed.dtype)
    deters, stochs, posts = [], [], []
    for t in range(T):
        state, logits = rssm.obs_step(state, action[:, t], embed[:, t], is_first[:, t])
        deters.append(state[0])
        stochs.append(state[1])
        posts.append(logits)
    torch.testing.assert_close(out["deter"], torch.stack(deters, 1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["stoch"], torch.stack(stochs, 1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["post_logits"], torch.stack(posts, 1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["prior_logits"], rssm.prior_logits(out["deter"]))
    assert out["post_logits"].shape == out["prior_logits"].shape == (B, T, STOCH, CLASSES)
    # The deterministic path depends on the samples: another seed gives another trajectory.
    torch.manual_seed(321)
    other = rssm.observe(embed, action, is_first)
    assert not torch.allclose(other["deter"][:, 1], out["deter"][:, 1])
    # Steps 0 and 2 start episodes: from the initial state and a zero action, whatever came before.
    for t in (0, 2):
        torch.testing.assert_close(other["deter"][:, t], out["deter"][:, t])


def test_is_first_resets_state_and_action_per_step() -> None:
    rssm = RSSM(action_dim=A, embed_dim=7, deter=DETER, hidden=16, stoch=STOCH, classes=CLASSES)
    embed, action = torch.randn(B, T, 7), torch.randn(B, T, A)
    is_first = _first(B, T, 0, 2)
    torch.manual_seed(5)
    out = rssm.observe(embed, action, is_first)
    # Other inputs before step 2 and another action at step 2 itself change nothing from step 2 on...
    embed2, action2 = embed.clone(), action.clone()
    embed2[:, :2], action2[:, :3] = torch.randn(B, 2, 7), torch.randn(B, 3, A)
    torch.manual_seed(5)  # the same draws (their number does not depend on the inputs)
    other = rssm.observe(embed2, action2, is_first)
    for key in ("post_logits", "stoch"):
        torch.testing.assert_close(other[key][:, 2], out[key][:, 2])
    torch.testing.assert_close(other["deter"][:, 3], out["deter"][:, 3])
    # ...which a sequence starting at step 2 sees the same way.
    alone = rssm.observe(embed[:, 2:], action[:, 2:], _first(B, T - 2))
    torch.testing.assert_close(alone["post_logits"][:, 0], out["post_logits"][:, 2])
    # Without the flag, the past matters.
    torch.manual_seed(5)
    carried = rssm.observe(embed2, action2, _first(B, T))
    assert not torch.allclose(carried["post_logits"][:, 2], out["post_logits"][:, 2])


def test_learned_initial_state() -> None:
    rssm = RSSM(
        action_dim=A, embed_dim=7, deter=DETER, hidden=16, stoch=STOCH, classes=CLASSES, learned_initial=True
    )
    deter, stoch = rssm.initial((3,), torch.device("cpu"), torch.float32)
    assert torch.equal(deter, torch.zeros(3, DETER))  # tanh(0): where the zero state is, at first
    per_cat = stoch.unflatten(-1, (STOCH, CLASSES))
    torch.testing.assert_close(per_cat.sum(-1), torch.ones(3, STOCH))  # the prior's mode, one-hot
    with torch.no_grad():
        rssm.initial_deter.fill_(0.5)
    deter, _ = rssm.initial((3,), torch.device("cpu"), torch.float32)
    torch.testing.assert_close(deter, torch.full((3, DETER), math.tanh(0.5)))
    # It is trained: the loss of an observed sequence reaches it.
    out = rssm.observe(torch.randn(B, T, 7), torch.randn(B, T, A), _first(B, T, 0, 2))
    out["deter"].sum().backward()
    assert rssm.initial_deter.grad is not None and rssm.initial_deter.grad.abs().sum() > 0
    assert RSSM(action_dim=A, embed_dim=7, deter=DETER).initial_deter is None


def test_observe_rejects_mismatched_action() -> None:
    rssm = RSSM(action_dim=A, embed_dim=7, deter=DETER, hidden=16, stoch=STOCH, classes=CLASSES)
    with pytest.raises(AssertionError, match="action"):
        rssm.observe(torch.randn(B, T, 7), torch.randn(B, T + 1, A), _first())


def test_straight_through_samples_are_one_hot_with_gradient() -> None:
    logits = torch.randn(64, 3, 5, requires_grad=True)
    sample = sample_straight_through(logits)
    assert sample.shape == logits.shape
    index = sample.detach().argmax(-1)
    torch.testing.assert_close(sample.detach(), torch.nn.functional.one_hot(index, 5).float())
    w = torch.randn(64, 3, 5)
    (sample * w).sum().backward()
    # The gradient is the one of the probabilities (straight-through).
    probs = logits.detach().clone().requires_grad_()
    (probs.softmax(-1) * w).sum().backward()
    assert logits.grad.abs().sum() > 0
    torch.testing.assert_close(logits.grad, probs.grad)


def test_straight_through_samples_follow_the_softmax() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0]]).expand(20000, 4)
    freq = sample_straight_through(logits).detach().mean(0)
    torch.testing.assert_close(freq, logits[0].softmax(-1), atol=0.015, rtol=0)


def test_frozen_blocks_parameter_grads_but_not_input_grads() -> None:
    wm = _model(STATES)
    frozen_before = wm.reward_head[0].bias
    frozen_before.requires_grad_(False)  # a flag set by someone else must survive
    action = torch.randn(3, A, requires_grad=True)
    start = (torch.randn(3, DETER), torch.zeros(3, STOCH * CLASSES))
    with wm.frozen():
        assert not any(p.requires_grad for p in wm.parameters())
        state, _ = wm.rssm.img_step(start, action)
        wm.reward_head(wm.feat(state)).sum().backward()
    assert action.grad is not None and action.grad.abs().sum() > 0
    assert all(p.grad is None for p in wm.parameters())
    assert not frozen_before.requires_grad
    assert all(p.requires_grad for p in wm.parameters() if p is not frozen_before)


def test_frozen_restores_flags_after_an_exception() -> None:
    wm = _model(STATES)
    with pytest.raises(RuntimeError, match="boom"), wm.frozen():
        raise RuntimeError("boom")
    assert all(p.requires_grad for p in wm.parameters())


@pytest.mark.parametrize(
    "obs_shape,bad_obs_shape",
    [(STATES, (6,)), (PIXELS, (3, 32, 32))],
)
def test_wrong_observation_shape_is_reported(obs_shape, bad_obs_shape) -> None:
    wm = _model(obs_shape)
    with pytest.raises(AssertionError, match="obs") as info:
        wm.loss(_batch(bad_obs_shape))
    # The message shows both shapes.
    assert str((B, T, *bad_obs_shape)) in str(info.value) and str((B, T, *obs_shape)) in str(info.value)


def test_wrong_action_and_reward_shapes_are_reported() -> None:
    wm = _model(STATES)
    batch = _batch(STATES)
    batch["action"] = torch.zeros(B, T, A + 1)
    with pytest.raises(AssertionError, match="action"):
        wm.loss(batch)
    batch = _batch(STATES)
    batch["reward"] = torch.zeros(B, T, 2)
    with pytest.raises(AssertionError, match="reward"):
        wm.loss(batch)


def test_a_sequence_must_start_an_episode() -> None:
    batch = _batch(STATES)
    batch["is_first"][:, 0] = False
    with pytest.raises(AssertionError, match="is_first"):
        _model(STATES).loss(batch)
