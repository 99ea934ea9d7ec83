"""IWAE_ELBO under every Pyro setting that changes how its hooks are reached:
parameters in the global store or module-local, particles vectorized or in
separate runs, poutine.scale inside and outside the data plate and on the
guide, poutine.mask, subsampled plates, the data plate at another dim, and
max_plate_nesting guessed or given; for each estimator, against log-weights
and surrogates written by hand on the particles the ELBO drew."""

import math

import pytest
import torch
from torch import nn

pyro = pytest.importorskip("pyro")
import pyro.distributions as dist  # noqa: E402
import pyro.poutine as poutine  # noqa: E402
from pyro.nn import PyroModule  # noqa: E402
from pyro.poutine.messenger import Messenger  # noqa: E402

from iwae_fused.pyro import IWAE_ELBO  # noqa: E402
from pyro_fixtures import float64_and_fresh_store, local  # noqa: E402, F401 (fixtures)

K, N = 5, 6
X = torch.linspace(-1.0, 1.5, N, dtype=torch.float64)
MASK = torch.tensor([True, True, False, True, False, True])
S_OUT, S_GUIDE = 0.7, 0.8
S_IN = torch.linspace(0.5, 1.5, N, dtype=torch.float64)  # a scale per data point


def model(sub=None):
    with poutine.scale(scale=S_OUT):  # outside the data plate: every site
        with pyro.plate("data", N, subsample_size=sub) as idx:
            with poutine.scale(scale=S_IN[idx]):  # inside it: the latent only
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with poutine.mask(mask=MASK[idx]):
                pyro.sample("x", dist.Normal(z, 1.0), obs=X[idx])


class Guide(PyroModule):
    """An amortized encoder x_i -> (loc, log scale), plain nn.Parameters."""

    def __init__(self):
        super().__init__()
        self.lin = PyroModule[nn.Linear](1, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[0.6], [-0.2]]))
            self.lin.bias.copy_(torch.tensor([0.1, -0.4]))

    def loc_scale(self, idx):
        h = self.lin(X[idx, None])
        return h[:, 0], h[:, 1].exp()

    def forward(self, sub=None):
        with poutine.scale(scale=S_GUIDE):
            with pyro.plate("data", N, subsample_size=sub) as idx:
                loc, scale = self.loc_scale(idx)
                pyro.sample("z", dist.Normal(loc, scale))


class Draws(Messenger):
    """The distinct values of the sample sites, in order (a replay repeats a
    value: kept once), so vectorized and separate runs alike give the K draws."""

    def __init__(self):
        super().__init__()
        self.values = {}

    def _pyro_post_sample(self, msg):
        seen = self.values.setdefault(msg["name"], [])
        v = msg["value"].detach()
        if not any(s.shape == v.shape and torch.equal(s, v) for s in seen):
            seen.append(v)


def by_hand(guide, draws, estimator):
    """-(bound) and the estimator's gradients, written out on the drawn particles."""
    idx = draws["data"][0]
    z_drawn = torch.stack(draws["z"]).reshape(K, len(idx))
    loc, scale = guide.loc_scale(idx)  # outside any Pyro context: plain tensors
    z = loc + scale * ((z_drawn - loc) / scale).detach()
    log_p = S_OUT * S_IN[idx] * dist.Normal(0.0, 1.0).log_prob(z) + \
        S_OUT * MASK[idx] * dist.Normal(z, 1.0).log_prob(X[idx])
    if estimator == "iwae":
        log_q = S_GUIDE * dist.Normal(loc, scale).log_prob(z)
    else:
        log_q = S_GUIDE * dist.Normal(loc.detach(), scale.detach()).log_prob(z)
    log_w = log_p - log_q  # [K, b]
    c = N / len(idx)
    bound = torch.logsumexp(log_w, 0) - math.log(K)
    if estimator == "iwae":
        surrogate = bound
    else:
        w = torch.softmax(log_w.detach(), 0)
        t = w * w if estimator == "dreg" else w
        surrogate = bound.detach() + (t * log_w).sum(0) - (t * log_w).sum(0).detach()
    (-c * surrogate.sum()).backward()
    return -c * bound.sum().item()


@pytest.mark.parametrize("sub", [None, 4], ids=["full", "subsampled"])
@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorized", "runs"])
@pytest.mark.parametrize("estimator", ["iwae", "dreg", "stl"])
def test_scale_mask_subsample(estimator, vectorize, sub, local):
    guide = Guide()
    guide(sub)
    elbo = IWAE_ELBO(num_particles=K, estimator=estimator, vectorize_particles=vectorize,
                     max_plate_nesting=1)
    draws = Draws()
    pyro.set_rng_seed(1)
    with draws:
        loss = elbo.loss_and_grads(model, guide, sub)
    ours = {n: p.grad.clone() for n, p in guide.named_parameters()}
    guide.zero_grad()
    b = N if sub is None else sub
    assert len(draws.values["data"]) == 1  # one minibatch for all particles
    assert sum(v.numel() for v in draws.values["z"]) == K * b  # [K, b] or K runs of [b]
    expected = by_hand(guide, draws.values, estimator)
    assert loss == pytest.approx(expected, rel=1e-12)
    for n, p in guide.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-9, atol=1e-12, msg=n)
    assert max(g.abs().max() for g in ours.values()) > 1e-3


@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
def test_max_plate_nesting_guessed(estimator, local):
    # The guess runs model and guide once more, blocked (outside the
    # detached replay): the gradients are still the estimator's.
    guide = Guide()
    guide(4)
    elbo = IWAE_ELBO(num_particles=K, estimator=estimator)
    draws = Draws()
    pyro.set_rng_seed(2)
    with draws:
        loss = elbo.loss_and_grads(model, guide, 4)
    assert elbo.max_plate_nesting == IWAE_ELBO(num_particles=K, max_plate_nesting=1).max_plate_nesting
    ours = {n: p.grad.clone() for n, p in guide.named_parameters()}
    guide.zero_grad()
    assert loss == pytest.approx(by_hand(guide, draws.values, estimator), rel=1e-12)
    for n, p in guide.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-9, atol=1e-12, msg=n)


@pytest.mark.parametrize("estimator", ["iwae", "dreg", "stl"])
def test_data_plate_at_dim_minus_two(estimator, local):
    # z_i per data point at dim -2, an inner pixel plate at -1: the particle
    # plate goes to dim -3; the z-path weights must land on (particle, data).
    D = 3
    x = torch.linspace(-1.0, 1.0, N * D).reshape(N, D)

    def model2():
        with pyro.plate("data", N, dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with pyro.plate("pixels", D, dim=-1):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    class G(PyroModule):
        def __init__(self):
            super().__init__()
            self.loc = nn.Parameter(torch.linspace(-0.5, 0.5, N).reshape(N, 1))
            self.log_scale = nn.Parameter(torch.full((N, 1), -0.3))

        def forward(self):
            with pyro.plate("data", N, dim=-2):
                pyro.sample("z", dist.Normal(self.loc, self.log_scale.exp()))

    g = G()
    g()
    draws = Draws()
    pyro.set_rng_seed(3)
    with draws:
        loss = IWAE_ELBO(num_particles=K, estimator=estimator, max_plate_nesting=2).loss_and_grads(
            model2, g)
    ours = {n: p.grad.clone() for n, p in g.named_parameters()}
    g.zero_grad()
    z_drawn = draws.values["z"][0].reshape(K, N, 1)
    loc, scale = g.loc, g.log_scale.exp()
    z = loc + scale * ((z_drawn - loc) / scale).detach()
    log_p = dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(x).sum(-1, keepdim=True)
    stop = estimator != "iwae"
    log_q = dist.Normal(loc.detach() if stop else loc, scale.detach() if stop else scale).log_prob(z)
    log_w = (log_p - log_q).squeeze(-1)  # [K, N]
    bound = torch.logsumexp(log_w, 0) - math.log(K)
    if estimator == "iwae":
        surrogate = bound.sum()
    else:
        w = torch.softmax(log_w.detach(), 0)
        surrogate = ((w * w if estimator == "dreg" else w) * log_w).sum()
    (-surrogate).backward()
    assert loss == pytest.approx(-bound.sum().item(), rel=1e-12)
    for n, p in g.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-9, atol=1e-12, msg=n)


def test_torch_func_grad(local):
    # IWAE: torch.func.grad through functional_call gives loss.backward()'s
    # gradients. DReG/STL: a clear error (their detaching works on autograd
    # leaves and their z-path weights are set after the forward).
    guide = Guide()
    guide(None)
    params = {n: p.detach().clone() for n, p in guide.named_parameters()}

    def loss(estimator):
        elbo = IWAE_ELBO(num_particles=K, estimator=estimator, max_plate_nesting=1)
        return lambda p: elbo.differentiable_loss(
            model, lambda sub: torch.func.functional_call(guide, p, (sub,)), None)

    pyro.set_rng_seed(4)
    grads = torch.func.grad(loss("iwae"))(params)
    pyro.set_rng_seed(4)
    IWAE_ELBO(num_particles=K, max_plate_nesting=1).loss_and_grads(model, guide, None)
    for n, p in guide.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-10, atol=1e-12, msg=n)
    for estimator in ("dreg", "stl"):
        with pytest.raises(NotImplementedError, match=rf"estimator='{estimator}'.*torch.func"):
            torch.func.grad(loss(estimator))(params)


def test_guide_parameters_swapped_by_functional_call_are_an_error(local):
    # Tensors put in a module's place by functional_call (a hypernetwork's
    # output, say) are no Parameters: Pyro hands none of them out, so they
    # cannot be detached; DReG says so instead of keeping their score term.
    guide = Guide()
    guide(None)
    base = {n: p.detach().clone().requires_grad_() for n, p in guide.named_parameters()}

    def swapped(sub):
        return torch.func.functional_call(guide, {n: 2.0 * v for n, v in base.items()}, (sub,))

    with pytest.raises(ValueError, match=r"site 'z' still depends on a tensor of shape"):
        IWAE_ELBO(num_particles=K, estimator="dreg", max_plate_nesting=1).loss_and_grads(
            model, swapped, None)
