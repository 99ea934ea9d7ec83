"""DReG and STL in IWAE_ELBO see every kind of guide parameter detached in the
re-evaluated log q, under both of Pyro's parameter settings: the global param
store and ``pyro.settings.context(module_local_params=True)``.

Two checks per guide kind, in float64, on a conjugate Normal-Normal model
(z_i ~ N(0, 1), x_i ~ N(z_i, 1), posterior N(x_i / 2, 1 / 2)):

* at the exact posterior log w is constant in z, so the DReG and STL guide
  gradients are 0 on every draw; the IWAE estimator's score term is not, so a
  parameter that leaked into log q undetached shows as a gradient;
* off the posterior, the gradients equal a hand-written surrogate (the guide's
  distribution built by hand from the parameters, rsample'd on the same random
  numbers, log q from detached copies) on the same particles.
"""

import copy
import math
import warnings

import pytest
import torch
from torch import nn

pyro = pytest.importorskip("pyro")
import pyro.distributions as dist  # noqa: E402
import pyro.poutine as poutine  # noqa: E402
from pyro.distributions import constraints  # noqa: E402
from pyro.distributions.transforms import AffineAutoregressive  # noqa: E402
from pyro.infer.autoguide import (  # noqa: E402
    AutoDiagonalNormal,
    AutoIAFNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from pyro.infer.autoguide.initialization import init_to_value  # noqa: E402
from pyro.nn import PyroModule, PyroParam  # noqa: E402
from pyro.poutine.messenger import Messenger  # noqa: E402

from iwae_fused.pyro import IWAE_ELBO  # noqa: E402
from pyro_fixtures import float64_and_fresh_store, local  # noqa: E402, F401 (fixtures)

K, N = 6, 4
X = torch.linspace(-1.0, 2.0, N, dtype=torch.float64)
HALF = math.sqrt(0.5)
# Off the posterior: the guide's loc and scale are these multiples away from it.
LOC_OFF = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64)
SCALE_OFF = torch.tensor([1.3, 0.8, 1.1, 0.9], dtype=torch.float64)


def model():
    with pyro.plate("data", N):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=X)


def log_joint(z):
    """log p(x_i, z_ki): [k, N]."""
    return dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(X)


def loc_scale(exact):
    if exact:
        return X / 2, torch.full((N,), HALF)
    return X / 2 + LOC_OFF, HALF * SCALE_OFF


def set_(p, value):
    with torch.no_grad():
        p.copy_(value)


# -- the guide kinds -------------------------------------------------------------
# Each: .guide (what IWAE_ELBO runs), .params() (name -> leaf, for the
# gradients), .joint (one latent over all data points: the joint bound) and
# .draw(k): called right after pyro.set_rng_seed, the k particles the guide
# draws under the particle plate, as (z [k, N] with its reparameterized path,
# log q [k, N] or [k] from detached parameters), built by hand.


class ParamGuide:
    """pyro.param statements in a guide function."""

    joint = False

    def __init__(self, exact):
        loc0, scale0 = loc_scale(exact)

        def guide():
            loc = pyro.param("loc", loc0.clone())
            scale = pyro.param("scale", scale0.clone(), constraint=constraints.positive)
            with pyro.plate("data", N):
                pyro.sample("z", dist.Normal(loc, scale))

        self.guide = guide
        guide()

    def params(self):
        return dict(pyro.get_param_store().named_parameters())

    def draw(self, k):
        loc, scale = pyro.param("loc"), pyro.param("scale")
        z = dist.Normal(loc, scale).expand([k, N]).rsample()
        return z, dist.Normal(loc.detach(), scale.detach()).log_prob(z)


class _ModuleGuide:
    joint = False

    def params(self):
        return dict(self.guide.named_parameters())

    def draw(self, k):
        loc, scale = self.loc_scale()
        z = dist.Normal(loc, scale).expand([k, N]).rsample()
        return z, dist.Normal(loc.detach(), scale.detach()).log_prob(z)


class PyroParamGuide(_ModuleGuide):
    """A PyroModule with PyroParams (one constrained)."""

    class G(PyroModule):
        def __init__(self, loc, scale):
            super().__init__()
            self.loc = PyroParam(loc)
            self.scale = PyroParam(scale, constraint=constraints.positive)

        def forward(self):
            with pyro.plate("data", N):
                pyro.sample("z", dist.Normal(self.loc, self.scale))

    def __init__(self, exact):
        self.guide = self.G(*loc_scale(exact))
        self.guide()

    def loc_scale(self):
        return self.guide.loc, self.guide.scale


class ParameterGuide(_ModuleGuide):
    """A PyroModule with plain nn.Parameters."""

    class G(PyroModule):
        def __init__(self, loc, scale):
            super().__init__()
            self.loc = nn.Parameter(loc)
            self.log_scale = nn.Parameter(scale.log())

        def forward(self):
            with pyro.plate("data", N):
                pyro.sample("z", dist.Normal(self.loc, self.log_scale.exp()))

    def __init__(self, exact):
        self.guide = self.G(*loc_scale(exact))
        self.guide()

    def loc_scale(self):
        return self.guide.loc, self.guide.log_scale.exp()


def linear_init(lin, exact):
    # x -> (loc, log scale): at the posterior loc = x / 2, scale = sqrt(1/2).
    w = torch.tensor([[0.5], [0.0]]) + (0 if exact else torch.tensor([[0.2], [-0.3]]))
    b = torch.tensor([0.0, math.log(HALF)]) + (0 if exact else torch.tensor([0.1, 0.2]))
    set_(lin.weight, w)
    set_(lin.bias, b)


def linear_loc_scale(w, b, shift=0.0):
    h = X[:, None] * w[:, 0] + b  # [N, 2]
    return h[:, 0] + shift, h[:, 1].exp()


class NestedGuide(_ModuleGuide):
    """PyroModule > PyroModule > PyroModule[nn.Linear], plus a PyroParam."""

    class Inner(PyroModule):
        def __init__(self):
            super().__init__()
            self.lin = PyroModule[nn.Linear](1, 2)

        def forward(self, x):
            return self.lin(x)

    class G(PyroModule):
        def __init__(self):
            super().__init__()
            self.inner = NestedGuide.Inner()
            self.shift = PyroParam(torch.zeros(N))

        def forward(self):
            h = self.inner(X[:, None])
            with pyro.plate("data", N):
                pyro.sample("z", dist.Normal(h[:, 0] + self.shift, h[:, 1].exp()))

    def __init__(self, exact):
        self.guide = self.G()
        linear_init(self.guide.inner.lin, exact)
        self.guide()
        if not exact:
            self.guide.shift = torch.tensor([0.1, -0.1, 0.2, 0.0])

    def loc_scale(self):
        lin = self.guide.inner.lin
        return linear_loc_scale(lin.weight, lin.bias, self.guide.shift)


class ModuleAttributeGuide(_ModuleGuide):
    """A PyroModule whose encoder is a plain nn.Module attribute."""

    class G(PyroModule):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(1, 2)

        def forward(self):
            h = self.enc(X[:, None])
            with pyro.plate("data", N):
                pyro.sample("z", dist.Normal(h[:, 0], h[:, 1].exp()))

    def __init__(self, exact):
        self.guide = self.G()
        linear_init(self.guide.enc, exact)
        self.guide()

    def loc_scale(self):
        return linear_loc_scale(self.guide.enc.weight, self.guide.enc.bias)


class PyroModuleCallGuide(_ModuleGuide):
    """A guide function registering an nn.Module with pyro.module."""

    def __init__(self, exact, update_module_params=False):
        self.enc = enc = nn.Linear(1, 2)
        linear_init(enc, exact)

        def guide():
            pyro.module("enc", enc, update_module_params=update_module_params)
            h = enc(X[:, None])
            with pyro.plate("data", N):
                pyro.sample("z", dist.Normal(h[:, 0], h[:, 1].exp()))

        self.guide = guide
        guide()

    def params(self):
        return dict(self.enc.named_parameters())

    def loc_scale(self):
        return linear_loc_scale(self.enc.weight, self.enc.bias)


class AutoNormalGuide(_ModuleGuide):
    def __init__(self, exact):
        self.guide = AutoNormal(model)
        self.guide()
        loc, scale = loc_scale(exact)
        self.guide.locs.z = loc
        self.guide.scales.z = scale

    def loc_scale(self):
        return self.guide.locs.z, self.guide.scales.z


class _AutoContinuousGuide:
    """One latent vector for all data points: the joint bound over [k]."""

    joint = True

    def params(self):
        return dict(self.guide.named_parameters())

    def draw(self, k):
        z = self.posterior(_live).expand([k, 1]).rsample()  # [k, 1, N]
        return z.reshape(k, N), self.posterior(_stopped).log_prob(z).reshape(k)


def _live(t):
    return t


def _stopped(t):
    return t.detach()


class AutoDiagonalNormalGuide(_AutoContinuousGuide):
    def __init__(self, exact):
        loc, scale = loc_scale(exact)
        self.guide = AutoDiagonalNormal(model, init_loc_fn=init_to_value(values={"z": loc}))
        self.guide()
        self.guide.scale = scale

    def posterior(self, f):
        return dist.Normal(f(self.guide.loc), f(self.guide.scale)).to_event(1)


class AutoMultivariateNormalGuide(_AutoContinuousGuide):
    def __init__(self, exact):
        loc, scale = loc_scale(exact)
        self.guide = AutoMultivariateNormal(model, init_loc_fn=init_to_value(values={"z": loc}))
        self.guide()
        self.guide.scale = scale
        tril = torch.eye(N) + (0 if exact else 0.2 * torch.ones(N, N).tril(-1))
        self.guide.scale_tril = tril

    def posterior(self, f):
        g = self.guide
        return dist.MultivariateNormal(f(g.loc), scale_tril=f(g.scale[..., None] * g.scale_tril))


class AutoLowRankGuide(_AutoContinuousGuide):
    def __init__(self, exact):
        loc, scale = loc_scale(exact)
        self.guide = AutoLowRankMultivariateNormal(
            model, init_loc_fn=init_to_value(values={"z": loc}), rank=2)
        self.guide()
        self.guide.scale = scale
        set_(self.guide.cov_factor, 0.0 if exact else 0.3 * torch.arange(2.0 * N).reshape(N, 2) / N)

    def posterior(self, f):
        g = self.guide
        return dist.LowRankMultivariateNormal(
            f(g.loc), f(g.cov_factor * g.scale.unsqueeze(-1)), f(g.scale * g.scale))


class AutoIAFNormalGuide(_AutoContinuousGuide):
    """An affine autoregressive flow: its parameters live in an nn.Module
    (a TransformModule) that the AutoGuide holds as an attribute."""

    def __init__(self, exact):
        self.guide = AutoIAFNormal(model, hidden_dim=[8])
        self.guide()
        last = self.arn().layers[-1]
        loc, scale = loc_scale(exact)
        if exact:  # the flow's output ignores its input: N(x / 2, 1 / 2)
            set_(last.weight, 0.0)
        set_(last.bias, torch.cat([loc, scale.log()]))

    def arn(self):
        return self.guide.transform[0].arn

    def posterior(self, f):
        if f is _live:
            return self.guide.get_posterior()
        arn = copy.deepcopy(self.arn()).requires_grad_(False)
        return dist.TransformedDistribution(self.guide.get_base_dist(), [AffineAutoregressive(arn)])


KINDS = {
    "pyro.param": ParamGuide,
    "PyroParam": PyroParamGuide,
    "nn.Parameter": ParameterGuide,
    "nested-PyroModules": NestedGuide,
    "nn.Module-attribute": ModuleAttributeGuide,
    "pyro.module": PyroModuleCallGuide,
    "AutoNormal": AutoNormalGuide,
    "AutoDiagonalNormal": AutoDiagonalNormalGuide,
    "AutoMultivariateNormal": AutoMultivariateNormalGuide,
    "AutoLowRankMultivariateNormal": AutoLowRankGuide,
    "AutoIAFNormal": AutoIAFNormalGuide,
}


def grads(params):
    assert params
    for n, p in params.items():
        assert p.grad is not None, n
    return {n: p.grad.clone() for n, p in params.items()}


class RecordDraws(Messenger):
    """The first value of every sample site: the particles the ELBO drew."""

    def __init__(self):
        super().__init__()
        self.values = {}

    def _pyro_post_sample(self, msg):
        self.values.setdefault(msg["name"], msg["value"].detach())


# -- the reproducer -------------------------------------------------------

@pytest.mark.parametrize("estimator", ["dreg", "stl"])
def test_reproducer_auto_diagonal_normal_module_local(estimator):
    x = torch.randn(7, generator=torch.Generator().manual_seed(0))

    def model7(x):
        with pyro.plate("data", 7):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pyro.settings.context(module_local_params=True):
        g = AutoDiagonalNormal(model7, init_loc_fn=init_to_value(values={"z": x / 2}),
                               init_scale=math.sqrt(0.5))
        g(x)
        IWAE_ELBO(8, estimator=estimator, max_plate_nesting=1).loss_and_grads(model7, g, x)
        assert g.loc.grad.abs().max() < 1e-12  # was 1.2: the score term kept
        assert g.scale_unconstrained.grad.abs().max() < 1e-12


# -- the exact posterior: zero guide gradient ------------------------------------

@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorized", "runs"])
@pytest.mark.parametrize("estimator", ["dreg", "stl", "iwae"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_guide_gradient_vanishes_at_the_posterior(kind, estimator, vectorize, local):
    spec = KINDS[kind](exact=True)
    pyro.set_rng_seed(10)
    elbo = IWAE_ELBO(num_particles=K, estimator=estimator, vectorize_particles=vectorize,
                     max_plate_nesting=1)
    elbo.loss_and_grads(model, spec.guide)
    g = torch.cat([v.flatten() for v in grads(spec.params()).values()])
    if estimator == "iwae":
        assert g.abs().max() > 1e-3  # the score term: what a leaked parameter would add
    else:
        assert g.abs().max() < 1e-12
    for n, p in spec.params().items():  # every frozen parameter restored
        assert p.requires_grad, n


# -- off the posterior: equal to a hand-written surrogate ----------------------

def hand_written(spec, estimator, seed):
    """-(bound) and the surrogate's gradients, by hand: log w from z with its
    path and log q from detached parameters; w~ the normalized weights; the
    gradient of sum_k t(w~_k) log w_k with t(w) = w^2 (DReG) or w (STL)."""
    pyro.set_rng_seed(seed)
    z, log_q = spec.draw(K)
    log_p = log_joint(z)
    if spec.joint:
        log_p = log_p.sum(-1)
    log_w = log_p - log_q  # [K, N] or [K]
    w = torch.softmax(log_w.detach(), 0)
    t = w * w if estimator == "dreg" else w
    (-(t * log_w).sum()).backward()
    bound = torch.logsumexp(log_w.detach(), 0) - math.log(K)
    return -bound.sum().item(), z.detach()


@pytest.mark.parametrize("estimator", ["dreg", "stl"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_gradients_equal_a_hand_written_surrogate(kind, estimator, local):
    spec = KINDS[kind](exact=False)
    params = spec.params()
    pyro.set_rng_seed(20)
    record = RecordDraws()
    with record:
        loss = IWAE_ELBO(num_particles=K, estimator=estimator, max_plate_nesting=1).loss_and_grads(
            model, spec.guide)
    ours = grads(params)
    for p in params.values():
        p.grad = None
    expected_loss, z = hand_written(spec, estimator, 20)
    # the same particles (else the comparison below would mean nothing)
    torch.testing.assert_close(record.values["z"].reshape(K, N), z, rtol=1e-12, atol=1e-12)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    expected = grads(params)
    for n in params:
        torch.testing.assert_close(ours[n], expected[n], rtol=1e-9, atol=1e-11, msg=n)
    assert max(v.abs().max() for v in ours.values()) > 1e-3


# -- what cannot be detached is an error, never a different estimator -----------

@pytest.mark.parametrize("estimator", ["dreg", "stl"])
def test_closed_over_leaf_is_an_error(estimator, local):
    loc = torch.zeros(N, requires_grad=True)

    def guide():
        with pyro.plate("data", N):
            pyro.sample("z", dist.Normal(loc, 1.0))

    elbo = IWAE_ELBO(num_particles=K, estimator=estimator, max_plate_nesting=1)
    with pytest.raises(ValueError, match=r"site 'z' still depends on a tensor of shape \[4\]"):
        elbo.loss_and_grads(model, guide)
    # IWAE has no detaching to do: fine
    IWAE_ELBO(num_particles=K, max_plate_nesting=1).loss_and_grads(model, guide)
    assert loc.grad is not None


def test_closed_over_value_computed_from_a_param_is_an_error(local):
    # pyro.param read outside the guide, transformed, closed over: its graph
    # exists before the guide runs, nothing can detach it.
    scale = pyro.param("log_scale", torch.zeros(N)).exp()

    def guide():
        with pyro.plate("data", N):
            pyro.sample("z", dist.Normal(0.0, scale))

    with pytest.raises(ValueError, match="the param store's 'log_scale'"):
        IWAE_ELBO(num_particles=K, estimator="dreg", max_plate_nesting=1).loss_and_grads(model, guide)


def test_module_reading_its_own_parameter_cache_is_named(local):
    # A module that keeps its Parameter in a cache of its own and reads it
    # from there: no attribute access, so no param message hands it out.
    class Cached(PyroModule):
        def __init__(self):
            super().__init__()
            self.loc = nn.Parameter(torch.zeros(N))
            self.__dict__["_cache"] = [self._parameters["loc"]]

        def forward(self):
            with pyro.plate("data", N):
                pyro.sample("z", dist.Normal(self._cache[0], 1.0))

    g = Cached()
    g()
    with pytest.raises(ValueError, match=r"site 'z' still depends on the guide's parameter 'loc'"):
        IWAE_ELBO(num_particles=K, estimator="stl", max_plate_nesting=1).loss_and_grads(model, g)
    assert all(p.requires_grad for p in g.parameters())


@pytest.mark.parametrize("registered", ["PyroModule", "pyro.module"])
def test_gru_encoder(registered, local):
    # nn.GRU refreshes its flat weights by attribute access on every call,
    # so both ways of registering it hand every weight out (and detach it).
    rnn = nn.GRU(1, 2, batch_first=True)
    if registered == "PyroModule":
        class G(PyroModule):
            def __init__(self):
                super().__init__()
                self.rnn = PyroModule[nn.GRU](1, 2, batch_first=True)

            def forward(self):
                h, _ = self.rnn(X[None, :, None])  # [1, N, 2]
                with pyro.plate("data", N):
                    pyro.sample("z", dist.Normal(h[0, :, 0], h[0, :, 1].exp()))

        guide = G()
        params = list(guide.parameters())
    else:
        def guide():
            pyro.module("rnn", rnn)
            h, _ = rnn(X[None, :, None])
            with pyro.plate("data", N):
                pyro.sample("z", dist.Normal(h[0, :, 0], h[0, :, 1].exp()))

        params = list(rnn.parameters())
    IWAE_ELBO(num_particles=K, estimator="dreg", max_plate_nesting=1).loss_and_grads(model, guide)
    assert all(p.grad is not None and p.requires_grad for p in params)


# -- restoring, nesting, sharing --------------------------------------------------

def test_parameters_restored_when_the_guide_raises(local):
    spec = ParameterGuide(exact=False)
    calls = []

    def guide():
        calls.append(1)
        if len(calls) == 2:  # the detached replay
            spec.guide()
            raise RuntimeError("boom")
        spec.guide()

    with pytest.raises(RuntimeError, match="boom"):
        IWAE_ELBO(num_particles=K, estimator="dreg", max_plate_nesting=1).loss_and_grads(model, guide)
    assert all(p.requires_grad for p in spec.guide.parameters())


def shared_model():
    with pyro.plate("data", N):
        for i in (1, 2):
            z = pyro.sample(f"z{i}", dist.Normal(0.0, 1.0))
            pyro.sample(f"x{i}", dist.Normal(z, 1.0), obs=X * i)


class Shared(PyroModule):
    """One encoder read twice (two latents): frozen once, restored once."""

    def __init__(self):
        super().__init__()
        self.enc = PyroModule[nn.Linear](1, 2)
        linear_init(self.enc, exact=True)

    def forward(self):
        with pyro.plate("data", N):
            for i in (1, 2):
                h = self.enc(i * X[:, None])  # the posterior of z_i: N(i x / 2, 1 / 2)
                pyro.sample(f"z{i}", dist.Normal(h[:, 0], h[:, 1].exp()))


@pytest.mark.parametrize("estimator", ["dreg", "stl"])
def test_shared_module_read_twice(estimator, local):
    g = Shared()
    g()
    pyro.set_rng_seed(3)
    IWAE_ELBO(num_particles=K, estimator=estimator, max_plate_nesting=1).loss_and_grads(shared_model, g)
    assert max(p.grad.abs().max() for p in g.parameters()) < 1e-12
    assert all(p.requires_grad for p in g.parameters())


def test_nested_elbo_inside_a_guide_restores_only_its_own(local):
    # The guide reads its parameters (the outer detached replay freezes
    # them), then runs an inner DReG pass over the same parameters, then uses
    # what it read. The inner pass must leave the outer's frozen parameters
    # frozen, else they leak into the outer log q (an error, below).
    class G(PyroModule):
        def __init__(self):
            super().__init__()
            loc, scale = loc_scale(exact=True)
            self.loc = nn.Parameter(loc)
            self.log_scale = nn.Parameter(scale.log())

        def forward(self, inner=True):
            loc, scale = self.loc, self.log_scale.exp()
            if inner:
                elbo = IWAE_ELBO(num_particles=2, estimator="dreg", vectorize_particles=False,
                                 max_plate_nesting=1)
                with poutine.block():
                    elbo.loss(model, lambda: self(inner=False))
            with pyro.plate("data", N):
                pyro.sample("z", dist.Normal(loc, scale))

    g = G()
    g()
    pyro.set_rng_seed(4)
    IWAE_ELBO(num_particles=K, estimator="dreg", max_plate_nesting=1).loss_and_grads(model, g)
    assert max(p.grad.abs().max() for p in g.parameters()) < 1e-12
    assert all(p.requires_grad for p in g.parameters())


def test_pyro_module_update_module_params_keeps_the_parameters():
    # pyro.module(..., update_module_params=True) installs whatever the param
    # message returns into the module: a detached copy would have replaced
    # the module's Parameters for good (no gradient ever again).
    spec = PyroModuleCallGuide(exact=False, update_module_params=True)
    before = dict(spec.enc.named_parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not registered" warning escapes either
        for _ in range(2):
            IWAE_ELBO(num_particles=K, estimator="dreg", max_plate_nesting=1).loss_and_grads(
                model, spec.guide)
    after = dict(spec.enc.named_parameters())
    assert all(after[n] is before[n] and isinstance(after[n], nn.Parameter) for n in before)
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in after.values())


@pytest.mark.parametrize("estimator", ["dreg", "stl"])
def test_point_mass_guide_is_an_error(estimator, local):
    from pyro.infer.autoguide import AutoDelta

    guide = AutoDelta(model)
    guide()
    with pytest.raises(ValueError, match="site 'z' is a point mass at its parameters"):
        IWAE_ELBO(num_particles=K, estimator=estimator, max_plate_nesting=1).loss_and_grads(model, guide)
    assert all(p.requires_grad for p in guide.parameters())


def test_trains_a_module_local_guide_with_a_torch_optimizer():
    # Pyro's recipe under module_local_params (its SVI needs the global store
    # for plain nn.Parameters): a torch optimizer over the ELBOModule.
    with pyro.settings.context(module_local_params=True):
        spec = NestedGuide(exact=False)
        before = {n: p.detach().clone() for n, p in spec.guide.named_parameters()}
        loss_fn = IWAE_ELBO(num_particles=K, estimator="dreg", max_plate_nesting=1)(model, spec.guide)
        opt = torch.optim.Adam(loss_fn.parameters(), lr=0.05)
        pyro.set_rng_seed(5)
        losses = []
        for _ in range(40):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert sum(losses[-5:]) < sum(losses[:5])
        for n, p in spec.guide.named_parameters():
            assert p.requires_grad and not torch.equal(p.detach(), before[n]), n
