import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Normal, kl_divergence

from hwm.models.losses import balanced_kl, bernoulli_nll, categorical_kl, lambda_return, unit_gaussian_nll


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _logits(*shape: int, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 3, 5)])
def test_categorical_kl_matches_torch_distributions(shape) -> None:
    lhs, rhs = _logits(*shape, seed=1), _logits(*shape, seed=2)
    expected = kl_divergence(Categorical(logits=lhs), Categorical(logits=rhs)).sum(-1)  # sum over S
    got = categorical_kl(lhs, rhs)
    assert got.shape == shape[:-2]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (got > 0).all()


def test_categorical_kl_is_zero_for_identical_logits_and_shift_invariant() -> None:
    logits = _logits(4, 3, 5)
    torch.testing.assert_close(categorical_kl(logits, logits), torch.zeros(4), atol=1e-6, rtol=0)
    # Adding a constant per categorical leaves the distribution (hence the KL) unchanged.
    torch.testing.assert_close(categorical_kl(logits, logits + 7.0), torch.zeros(4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("balance", [0.8, 0.5, 1.0])
def test_balanced_kl_splits_the_gradient(balance: float) -> None:
    post = _logits(6, 3, 4, seed=3).requires_grad_()
    prior = _logits(6, 3, 4, seed=4).requires_grad_()
    plain = categorical_kl(post, prior).mean()
    g_post, g_prior = torch.autograd.grad(plain, (post, prior))

    loss, raw = balanced_kl(post, prior, balance=balance)
    loss.backward()
    torch.testing.assert_close(prior.grad, balance * g_prior, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(post.grad, (1 - balance) * g_post, rtol=1e-5, atol=1e-7)
    # Both sides are the same KL in value, so the balanced loss equals the plain KL.
    torch.testing.assert_close(loss, plain.detach())
    torch.testing.assert_close(raw, plain.detach())
    assert not raw.requires_grad


def test_balanced_kl_free_nats_clip_value_and_gradient() -> None:
    post = _logits(5, 3, 4, seed=5).requires_grad_()
    prior = (post.detach() + 0.05 * _logits(5, 3, 4, seed=6)).requires_grad_()
    loss, raw = balanced_kl(post, prior, balance=0.8, free_nats=1.0)
    assert 0 < raw.item() < 1.0
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert post.grad is None or not post.grad.any()
    assert prior.grad is None or not prior.grad.any()


def test_balanced_kl_above_free_nats_is_unclipped() -> None:
    post = _logits(5, 3, 4, seed=7, scale=4.0).requires_grad_()
    prior = _logits(5, 3, 4, seed=8, scale=4.0).requires_grad_()
    loss, raw = balanced_kl(post, prior, balance=0.8, free_nats=0.5)
    assert raw.item() > 0.5
    assert loss.item() == pytest.approx(raw.item(), rel=1e-5)
    loss.backward()
    assert post.grad.abs().sum() > 0 and prior.grad.abs().sum() > 0


@pytest.mark.parametrize("balance", [-0.1, 1.5])
def test_balanced_kl_rejects_bad_balance(balance: float) -> None:
    with pytest.raises(ValueError, match="balance"):
        balanced_kl(_logits(2, 3, 4), _logits(2, 3, 4), balance=balance)


# A hand-worked example, H = 3, N = 1.
REWARD = torch.tensor([[1.0], [2.0], [3.0]])
VALUE = torch.tensor([[0.5], [1.0], [1.5], [2.0]])
DISCOUNT = torch.tensor([[0.9], [0.8], [0.7]])


@pytest.mark.parametrize(
    "lambda_, expected",
    [
        # R_2 = 3 + .7 * 2 = 4.4; R_1 = 2 + .8 (.5 * 1.5 + .5 * 4.4) = 4.36; R_0 = 1 + .9 (.5 * 1 + .5 * 4.36)
        (0.5, [3.412, 4.36, 4.4]),
        # Monte-Carlo: R_0 = 1 + .9 * 2 + .9 * .8 * 3 + .9 * .8 * .7 * 2 = 5.968
        (1.0, [5.968, 5.52, 4.4]),
        # One-step TD: R_t = r_t + d_t v_{t+1}
        (0.0, [1.9, 3.2, 4.4]),
    ],
)
def test_lambda_return_hand_computed(lambda_: float, expected: list[float]) -> None:
    got = lambda_return(REWARD, VALUE, DISCOUNT, lambda_=lambda_)
    assert got.shape == (3, 1)
    torch.testing.assert_close(got, torch.tensor(expected).unsqueeze(-1))


def test_lambda_return_columns_are_independent_and_monte_carlo_at_lambda_one() -> None:
    g = torch.Generator().manual_seed(0)
    H, N = 5, 4
    reward, value = torch.randn(H, N, generator=g), torch.randn(H + 1, N, generator=g)
    discount = torch.rand(H, N, generator=g)
    got = lambda_return(reward, value, discount, lambda_=1.0)
    for n in range(N):
        ret, running = 0.0, 1.0
        for t in range(H):
            ret += running * reward[t, n].item()
            running *= discount[t, n].item()
        ret += running * value[H, n].item()
        assert got[0, n].item() == pytest.approx(ret, rel=1e-5, abs=1e-6)


def test_lambda_return_checks_shapes() -> None:
    with pytest.raises(AssertionError, match="H\\+1"):
        lambda_return(REWARD, VALUE[:-1], DISCOUNT)
    with pytest.raises(AssertionError, match="discount"):
        lambda_return(REWARD, VALUE, DISCOUNT[:-1])


@pytest.mark.parametrize("shape,event_dims", [((4, 7), 1), ((2, 3, 3, 8, 8), 3)])
def test_unit_gaussian_nll_is_the_log_likelihood_without_its_constant(shape, event_dims: int) -> None:
    g = torch.Generator().manual_seed(0)
    mean, target = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    n = math.prod(shape[-event_dims:])
    exact = -Normal(mean, 1.0).log_prob(target).sum(tuple(range(-event_dims, 0)))
    expected = exact - n * 0.5 * math.log(2 * math.pi)
    got = unit_gaussian_nll(mean, target, event_dims=event_dims)
    assert got.shape == shape[:-event_dims]
    torch.testing.assert_close(got, expected)
    # A perfect prediction costs nothing: the harmonizer sees no constant floor.
    zero = unit_gaussian_nll(target, target, event_dims=event_dims)
    torch.testing.assert_close(zero, torch.zeros(shape[:-event_dims]))


def test_bernoulli_nll_matches_torch_distributions() -> None:
    logits = _logits(6, 1)
    target = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0]).unsqueeze(-1)
    torch.testing.assert_close(bernoulli_nll(logits, target), -Bernoulli(logits=logits).log_prob(target))
