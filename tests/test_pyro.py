"""iwae_fused.pyro.IWAE_ELBO against Pyro's own machinery, in float64.

Particles are matched by seeding: IWAE_ELBO, RenyiELBO and the hand-written
references below all run the guide first under the same particle plate
(max_plate_nesting is given, so nothing is drawn to guess it)."""

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

pyro = pytest.importorskip("pyro")
import pyro.distributions as dist  # noqa: E402
import pyro.poutine as poutine  # noqa: E402
from pyro.infer import SVI, RenyiELBO  # noqa: E402
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal  # noqa: E402

import iwae_fused  # noqa: E402
from iwae_fused.pyro import IWAE_ELBO  # noqa: E402
from pyro_fixtures import float64_and_fresh_store  # noqa: E402, F401 (fixtures)

K = 6


def param_grads():
    return {n: p.grad.clone() for n, p in pyro.get_param_store().named_parameters()
            if p.grad is not None}


def zero_grads():
    for _, p in pyro.get_param_store().named_parameters():
        p.grad = None


def assert_grads_equal(a, b):
    assert a.keys() == b.keys() and a
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-9, atol=1e-11, msg=n)


# -- a model with global latents only: the joint bound, RenyiELBO's -----------

X_GLOBAL = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.1], dtype=torch.float64)


def global_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, sigma), obs=x)


def global_guide(x):
    loc = pyro.param("loc", torch.tensor(0.2))
    scale = pyro.param("scale", torch.tensor(0.7), constraint=dist.constraints.positive)
    a = pyro.param("a", torch.tensor(0.1))
    b = pyro.param("b", torch.tensor(0.5), constraint=dist.constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))
    pyro.sample("sigma", dist.LogNormal(a, b))


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("alpha", [0.0, 0.5, -1.0, 2.0])
def test_global_latents_equal_renyi(alpha, vectorize):
    ours = IWAE_ELBO(num_particles=K, alpha=alpha, vectorize_particles=vectorize, max_plate_nesting=1)
    renyi = RenyiELBO(num_particles=K, alpha=alpha, vectorize_particles=vectorize, max_plate_nesting=1)
    results = []
    for elbo in (ours, renyi):
        pyro.set_rng_seed(3)
        value = elbo.loss(global_model, global_guide, X_GLOBAL)
        pyro.set_rng_seed(4)
        zero_grads()
        loss = elbo.loss_and_grads(global_model, global_guide, X_GLOBAL)
        results.append((value, loss, param_grads()))
    (v1, l1, g1), (v2, l2, g2) = results
    assert v1 == pytest.approx(v2, rel=1e-12) and l1 == pytest.approx(l2, rel=1e-12)
    assert_grads_equal(g1, g2)


def test_strict_rejects_global_latents():
    elbo = IWAE_ELBO(num_particles=K, strict=True, max_plate_nesting=1)
    with pytest.raises(ValueError, match=r"strict=True.*'mu'.*'sigma'"):
        elbo.loss(global_model, global_guide, X_GLOBAL)


def test_strict_rejects_sites_in_different_plates():
    def model():
        with pyro.plate("a", 3):
            pyro.sample("u", dist.Normal(0.0, 1.0))
        with pyro.plate("b", 2):
            pyro.sample("v", dist.Normal(0.0, 1.0))

    def guide():
        with pyro.plate("a", 3):
            pyro.sample("u", dist.Normal(0.5, 1.2))
        with pyro.plate("b", 2):
            pyro.sample("v", dist.Normal(-0.3, 0.8))

    with pytest.raises(ValueError, match="no vectorized plate holds all of them"):
        IWAE_ELBO(num_particles=K, strict=True, max_plate_nesting=1).loss(model, guide)
    # not strict: the joint bound, as RenyiELBO
    pyro.set_rng_seed(2)
    ours = IWAE_ELBO(num_particles=K, max_plate_nesting=1).loss(model, guide)
    pyro.set_rng_seed(2)
    renyi = RenyiELBO(num_particles=K, vectorize_particles=True, max_plate_nesting=1).loss(model, guide)
    assert ours == pytest.approx(renyi, rel=1e-12) and abs(ours) > 1e-3


# -- an amortized VAE: every latent local to the data plate --------------------

N, D, Z, H = 7, 5, 2, 8


class VAE(nn.Module):
    def __init__(self, deterministic_outside=False, obs_mask=None, z_scale=None):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, 2 * Z)).double()
        self.dec = nn.Sequential(nn.Linear(Z, H), nn.Tanh(), nn.Linear(H, D)).double()
        self.deterministic_outside = deterministic_outside
        self.obs_mask = obs_mask
        self.z_scale = z_scale

    def q(self, x):
        loc, log_scale = self.enc(x).chunk(2, -1)
        return loc, log_scale.exp()

    def model(self, x, subsample_size=None):
        pyro.module("dec", self.dec)
        with pyro.plate("data", N, subsample_size=subsample_size) as idx:
            with poutine.scale(scale=self.z_scale or 1.0):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([Z]).to_event(1))
            lik = dist.Bernoulli(logits=self.dec(z)).to_event(1)
            if self.obs_mask is not None:
                lik = lik.mask(self.obs_mask[idx])
            pyro.sample("x", lik, obs=x[idx])
        if self.deterministic_outside:
            pyro.deterministic("z_norm", z.norm())

    def guide(self, x, subsample_size=None):
        pyro.module("enc", self.enc)
        with pyro.plate("data", N, subsample_size=subsample_size) as idx:
            loc, scale = self.q(x[idx])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


X_VAE = (torch.rand(N, D, generator=torch.Generator().manual_seed(1)) > 0.5).double()


def by_hand(vae, seed, subsample_size=None, x=X_VAE):
    """[K, B] log-weights (unscaled) from Pyro traces of the vectorized guide
    and the model replayed on it, the subsample indices, and z."""
    pyro.set_rng_seed(seed)
    particles = pyro.plate("num_particles_vectorized", K, dim=-2)
    guide_trace = poutine.trace(particles(vae.guide)).get_trace(x, subsample_size)
    model_trace = poutine.trace(
        poutine.replay(particles(vae.model), trace=guide_trace)).get_trace(x, subsample_size)
    log_w = 0.0
    for trace, sign in ((model_trace, 1), (guide_trace, -1)):
        for name in ("z", "x"):
            if name in trace.nodes:
                site = trace.nodes[name]
                lp = site["fn"].log_prob(site["value"])  # [K, B]; masks live in fn
                if name == "z" and sign == 1 and vae.z_scale is not None:  # the model's scale
                    lp = lp * vae.z_scale
                log_w = log_w + sign * lp
    idx = guide_trace.nodes["data"]["value"]
    return log_w, idx, guide_trace.nodes["z"]["value"]


def lme(log_w, c=1.0):
    return torch.logsumexp(c * log_w, 0) - math.log(log_w.shape[0])


@pytest.mark.parametrize("subsample_size", [None, 3])
def test_vae_loss_is_the_per_data_point_bound(subsample_size):
    vae = VAE()
    elbo = IWAE_ELBO(num_particles=K, max_plate_nesting=1)
    pyro.set_rng_seed(5)
    loss = elbo.loss(vae.model, vae.guide, X_VAE, subsample_size)
    log_w, idx, _ = by_hand(vae, 5, subsample_size)
    c = N / len(idx)
    assert log_w.shape == (K, len(idx))
    assert loss == pytest.approx(-(c * lme(log_w).sum()).item(), rel=1e-12)
    # RenyiELBO, on the same particles: already per data point here (every
    # site is in the plate), but it scales the log-weights inside the
    # log-mean-exp, which only equals the above without subsampling.
    pyro.set_rng_seed(5)
    renyi = RenyiELBO(num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    r = renyi.loss(vae.model, vae.guide, X_VAE, subsample_size)
    assert r == pytest.approx(-lme(log_w, c).sum().item(), rel=1e-12)
    if subsample_size is None:
        assert r == pytest.approx(loss, rel=1e-12)
    else:
        assert r < loss  # the power-mean inequality: c-tempered weights inflate it


def test_vae_with_a_site_outside_the_plate_is_tighter_than_renyi():
    # A deterministic record outside the plate makes RenyiELBO sum the
    # log-weights over data points (the joint bound); it has log-density 0,
    # so the per-data-point bound still holds and IWAE_ELBO keeps it.
    vae = VAE(deterministic_outside=True)
    pyro.set_rng_seed(6)
    loss = IWAE_ELBO(num_particles=K, max_plate_nesting=1).loss(vae.model, vae.guide, X_VAE)
    pyro.set_rng_seed(6)
    renyi = RenyiELBO(num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    r = renyi.loss(vae.model, vae.guide, X_VAE)
    log_w, _, _ = by_hand(vae, 6)
    assert loss == pytest.approx(-lme(log_w).sum().item(), rel=1e-12)
    assert r == pytest.approx(-lme(log_w.sum(1)).item(), rel=1e-12)
    assert loss < r - 1e-3


@pytest.mark.parametrize("subsample_size", [None, 4])
def test_scale_and_mask(subsample_size):
    mask = torch.tensor([True, False, True, True, False, True, True])
    vae = VAE(obs_mask=mask, z_scale=0.3)
    pyro.set_rng_seed(7)
    loss = IWAE_ELBO(num_particles=K, max_plate_nesting=1).loss(
        vae.model, vae.guide, X_VAE, subsample_size)
    log_w, idx, _ = by_hand(vae, 7, subsample_size)
    assert loss == pytest.approx(-(N / len(idx) * lme(log_w).sum()).item(), rel=1e-12)


def test_data_plate_at_another_dim_and_deeper_nesting():
    # The plate at dim -2 with an inner pixel plate: the bound is per data point.
    def model(x):
        with pyro.plate("data", N, dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with pyro.plate("pixels", D, dim=-1):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(N, 1))
        with pyro.plate("data", N, dim=-2):
            pyro.sample("z", dist.Normal(loc, 1.0))

    pyro.set_rng_seed(8)
    loss = IWAE_ELBO(num_particles=K, max_plate_nesting=2).loss(model, guide, X_VAE)
    pyro.set_rng_seed(8)
    z = torch.randn(K, N, 1)  # what the guide draws: [K, N, 1]
    log_w = (dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(X_VAE).sum(-1, keepdim=True)
             - dist.Normal(0.0, 1.0).log_prob(z)).squeeze(-1)
    assert loss == pytest.approx(-lme(log_w).sum().item(), rel=1e-12)


# -- DReG and STL ---------------------------------------------------------------

@pytest.mark.parametrize("subsample_size", [None, 3])
@pytest.mark.parametrize("estimator", ["dreg", "stl"])
def test_gradients_equal_iwae_fused_dreg(estimator, subsample_size):
    vae = VAE()
    pyro.set_rng_seed(9)
    elbo = IWAE_ELBO(num_particles=K, estimator=estimator, max_plate_nesting=1)
    loss = elbo.loss_and_grads(vae.model, vae.guide, X_VAE, subsample_size)
    ours = {n: p.grad.clone() for n, p in vae.named_parameters()}
    vae.zero_grad()
    # By hand, on the same particles: the guide's z, log q from detached
    # parameters, log p from the same z, iwae_fused.dreg.
    _, idx, z_pyro = by_hand(vae, 9, subsample_size)
    vae.zero_grad()
    x = X_VAE[idx]
    loc, scale = vae.q(x)
    z = loc + scale * ((z_pyro - loc) / scale).detach()  # the same draw, reparameterized
    log_q = dist.Normal(loc.detach(), scale.detach()).log_prob(z).sum(-1)
    log_p = (dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
             + dist.Bernoulli(logits=vae.dec(z)).log_prob(x).sum(-1))
    bound = iwae_fused.dreg(log_p, log_q, z, z_weight=estimator)
    (-(N / len(idx)) * bound.sum()).backward()
    assert loss == pytest.approx(-(N / len(idx)) * bound.sum().item(), rel=1e-12)
    for n, p in vae.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-9, atol=1e-11, msg=n)
    assert any(ours[n].abs().sum() > 0 for n in ours if n.startswith("enc"))


@pytest.mark.parametrize("estimator", ["dreg", "stl", "iwae"])
def test_particles_in_separate_runs(estimator):
    # vectorize_particles=False: K runs of the guide, each particle's weight
    # set on its own run; against iwae_fused.dreg on the particles it drew.
    vae = VAE()
    elbo = IWAE_ELBO(num_particles=K, estimator=estimator, vectorize_particles=False)
    drawn, minibatches = [], []
    get_traces = elbo._get_traces

    def recording(*a, **kw):
        for traces in get_traces(*a, **kw):
            drawn.append(traces[1].nodes["z"]["value"].detach())
            minibatches.append(traces[3].nodes["data"]["value"])
            yield traces

    elbo._get_traces = recording
    pyro.set_rng_seed(14)
    loss = elbo.loss_and_grads(vae.model, vae.guide, X_VAE, 3)
    ours = {n: p.grad.clone() for n, p in vae.named_parameters()}
    vae.zero_grad()
    assert len(drawn) == K
    # one minibatch for all K particles (drawn by the first run's guide)
    idx = minibatches[0]
    assert all(torch.equal(i, idx) for i in minibatches)
    loc, scale = vae.q(X_VAE[idx])
    z = loc + scale * ((torch.stack(drawn) - loc) / scale).detach()
    log_q = dist.Normal(loc.detach(), scale.detach()).log_prob(z).sum(-1)
    log_p = (dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
             + dist.Bernoulli(logits=vae.dec(z)).log_prob(X_VAE[idx]).sum(-1))
    if estimator == "iwae":
        log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)
        bound = iwae_fused.iwelbo(log_p, log_q)
    else:
        bound = iwae_fused.dreg(log_p, log_q, z, z_weight=estimator)
    (-(N / 3) * bound.sum()).backward()
    assert loss == pytest.approx(-(N / 3) * bound.sum().item(), rel=1e-12)
    for n, p in vae.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-9, atol=1e-11, msg=n)


def conjugate(n=4):
    # z_i ~ N(0, 1), x_i ~ N(z_i, 1): the posterior is N(x_i / 2, 1 / 2).
    x = torch.linspace(-1.0, 2.0, n)

    def model():
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    return x, model


@pytest.mark.parametrize("guide_kind", ["param", "AutoNormal", "AutoNormal-local", "AutoDiagonalNormal"])
@pytest.mark.parametrize("estimator", ["dreg", "stl", "iwae"])
def test_guide_gradient_vanishes_at_the_posterior(estimator, guide_kind):
    # "-local": PyroModule parameters kept out of the global param store
    with pyro.settings.context(module_local_params=guide_kind.endswith("-local")):
        check_guide_gradient_at_the_posterior(estimator, guide_kind)


def check_guide_gradient_at_the_posterior(estimator, guide_kind):
    # With q equal to the posterior, log w is constant in z: the DReG/STL
    # guide gradient is exactly 0 on every draw, IWAE's is not (its score term).
    # This fails if any guide parameter leaked into log q undetached.
    x, model = conjugate()
    post_loc, post_scale = x / 2, torch.full_like(x, 0.5 ** 0.5)
    if guide_kind == "param":
        def guide():
            loc = pyro.param("loc", post_loc.clone())
            scale = pyro.param("scale", post_scale.clone(), constraint=dist.constraints.positive)
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(loc, scale))
    elif guide_kind.startswith("AutoNormal"):
        guide = AutoNormal(model)
        guide()
        guide.locs.z = post_loc.clone()
        guide.scales.z = post_scale.clone()
    else:
        guide = AutoDiagonalNormal(model)
        guide()
        guide.loc = nn.Parameter(post_loc.clone())
        guide.scale = post_scale.clone()
    pyro.set_rng_seed(10)
    elbo = IWAE_ELBO(num_particles=K, estimator=estimator, max_plate_nesting=1)
    elbo.loss_and_grads(model, guide)
    params = dict(guide.named_parameters()) if guide_kind != "param" else dict(
        pyro.get_param_store().named_parameters())
    grads = torch.cat([p.grad.flatten() for p in params.values()])
    assert len(params) == 2
    if estimator == "iwae":
        assert grads.abs().max() > 1e-3
    else:
        assert grads.abs().max() < 1e-12


def snr(estimator, k, repeats=300):
    # The guide's loc gradient over repeated draws, for a guide off the
    # posterior: |mean| / std (Rainforth et al. 2018's signal-to-noise ratio).
    x, model = conjugate(1)

    def guide():
        loc = pyro.param("loc", torch.tensor([0.3]))
        scale = pyro.param("scale", torch.tensor([0.9]), constraint=dist.constraints.positive)
        with pyro.plate("data", 1):
            pyro.sample("z", dist.Normal(loc, scale))

    elbo = IWAE_ELBO(num_particles=k, estimator=estimator, max_plate_nesting=1)
    pyro.set_rng_seed(11)
    pyro.clear_param_store()
    g = []
    for _ in range(repeats):
        zero_grads()
        elbo.loss_and_grads(model, guide)
        g.append(pyro.param("loc").grad.item())
    g = torch.tensor(g)
    return (g.mean().abs() / g.std()).item()


def test_dreg_guide_snr_does_not_fall_with_k():
    ks = (2, 16, 128)
    dreg = [snr("dreg", k) for k in ks]
    iwae = [snr("iwae", k) for k in ks]
    assert dreg[0] < dreg[1] < dreg[2], dreg  # grows like sqrt(K)
    assert iwae[2] < iwae[0], iwae  # falls like 1 / sqrt(K) (Rainforth et al.)


# -- errors and the optional dependency -----------------------------------------

def discrete_model():
    with pyro.plate("data", 3):
        c = pyro.sample("c", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(c, 1.0), obs=torch.zeros(3))


def discrete_guide():
    p = pyro.param("p", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
    with pyro.plate("data", 3):
        pyro.sample("c", dist.Bernoulli(p))


@pytest.mark.parametrize("estimator", ["iwae", "dreg", "stl"])
def test_non_reparameterizable_guide_is_an_error(estimator):
    elbo = IWAE_ELBO(num_particles=K, estimator=estimator, max_plate_nesting=1)
    with pytest.raises(ValueError, match=r"site 'c' \(Bernoulli\) has no rsample"):
        elbo.loss_and_grads(discrete_model, discrete_guide)


@pytest.mark.parametrize("estimator", ["dreg", "stl"])
def test_point_mass_guide_is_an_error_for_dreg(estimator):
    from pyro.infer.autoguide import AutoDelta

    _, model = conjugate()
    guide = AutoDelta(model)
    elbo = IWAE_ELBO(num_particles=K, estimator=estimator, max_plate_nesting=1)
    with pytest.raises(ValueError, match="site 'z' is a point mass at its parameters"):
        elbo.loss_and_grads(model, guide)


@pytest.mark.parametrize("estimator", ["dreg", "stl"])
def test_estimators_share_the_value(estimator):
    # The estimator changes the gradient only: the same particles, the same bound.
    vae = VAE()
    values = []
    for est in ("iwae", estimator):
        pyro.set_rng_seed(15)
        elbo = IWAE_ELBO(num_particles=K, estimator=est, max_plate_nesting=1)
        values.append(elbo.loss_and_grads(vae.model, vae.guide, X_VAE, 4))
        pyro.set_rng_seed(15)
        values.append(elbo.loss(vae.model, vae.guide, X_VAE, 4))
    assert values[0] == pytest.approx(values[1], rel=1e-12)
    assert values[2] == pytest.approx(values[0], rel=1e-12)
    assert values[3] == pytest.approx(values[0], rel=1e-12)


@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
def test_differentiable_loss_gives_the_same_gradients(estimator):
    vae = VAE()
    elbo = IWAE_ELBO(num_particles=K, estimator=estimator, max_plate_nesting=1)
    pyro.set_rng_seed(16)
    loss = elbo.loss_and_grads(vae.model, vae.guide, X_VAE, 4)
    expected = {n: p.grad.clone() for n, p in vae.named_parameters()}
    vae.zero_grad()
    pyro.set_rng_seed(16)
    tensor = elbo(vae.model, vae.guide)(X_VAE, 4)  # ELBOModule -> differentiable_loss
    tensor.backward()
    assert tensor.item() == pytest.approx(loss, rel=1e-12)
    for n, p in vae.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-12, atol=1e-14, msg=n)


def test_missing_pyro_is_a_clear_import_error():
    code = ("import sys; sys.modules['pyro'] = None; import iwae_fused\n"
            "try:\n    import iwae_fused.pyro\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "iwae_fused.pyro needs pyro-ppl" in out.stdout


def test_bad_arguments():
    with pytest.raises(ValueError, match="estimator.*'vimco'"):
        IWAE_ELBO(estimator="vimco")
    with pytest.raises(ValueError, match="alpha = 0.*alpha=0.5"):
        IWAE_ELBO(estimator="dreg", alpha=0.5)
    with pytest.raises(ValueError, match="num_particles.*0"):
        IWAE_ELBO(num_particles=0)


def test_svi_trains_and_the_core_package_does_not_import_pyro():
    vae = VAE()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}),
              loss=IWAE_ELBO(num_particles=K, estimator="dreg"))
    pyro.set_rng_seed(12)
    losses = [svi.step(X_VAE) for _ in range(60)]
    assert sum(losses[-10:]) < sum(losses[:10])
    code = "import sys, iwae_fused; assert 'pyro' not in sys.modules, 'pyro imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
def test_cuda(estimator):
    vae = VAE().cuda()
    x = X_VAE.cuda()
    pyro.set_rng_seed(13)
    elbo = IWAE_ELBO(num_particles=K, estimator=estimator, max_plate_nesting=1)
    loss = elbo.loss_and_grads(vae.model, vae.guide, x, 3)
    log_w, idx, _ = by_hand(vae, 13, 3, x)
    assert log_w.is_cuda
    assert loss == pytest.approx(-(N / 3 * lme(log_w).sum()).item(), rel=1e-12)
    assert all(p.grad is not None and p.grad.is_cuda for p in vae.parameters())


@pytest.mark.parametrize("option, value, expected", [
    ("num_particles", 2.0, "an int"), ("num_particles", True, "an int"),
    ("alpha", "x", r"a real number \(float or int\)"), ("alpha", None, r"a real number \(float or int\)"),
    ("estimator", 3, "a str"), ("vectorize_particles", "yes", "a bool"),
    ("strict", 1, "a bool"), ("max_plate_nesting", "1", "an int"),
    ("retain_graph", "x", "a bool or None"),
])
def test_option_of_a_wrong_type_is_named(option, value, expected):
    given = "None" if value is None else type(value).__name__
    with pytest.raises(TypeError, match=rf"IWAE_ELBO\(\): expected {option} to be {expected}, but got {given}"):
        IWAE_ELBO(**{option: value})


def test_options_of_numpy_and_infinite_values():
    import numpy as np

    assert IWAE_ELBO(num_particles=np.int64(4), max_plate_nesting=np.int32(1)).num_particles == 4
    with pytest.raises(ValueError, match="finite alpha"):
        IWAE_ELBO(alpha=float("inf"))
    with pytest.raises(ValueError, match="max_plate_nesting >= 0"):
        IWAE_ELBO(max_plate_nesting=-1)
