"""Pyro traces -> a [K, B] (or [K]) tensor of log-weights for IWAE_ELBO.

Two concerns live here, both about turning one run of (model, guide) into
log-weights: which plate the per-data-point bound may factor over, and, for
DReG/STL, a guide whose log-density sees its parameters detached (_detach.py)
while the samples keep their reparameterized path (and carry a per-particle
gradient weight set after the forward pass).
"""

import torch

import pyro.poutine as poutine
from pyro.distributions import Delta
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import check_model_guide_match

from iwae_fused.pyro._detach import LOG_PROB, detached_params

# The name pyro.infer.ELBO gives the plate that vectorizes particles.
PARTICLE_PLATE = "num_particles_vectorized"


def _counts(site):
    # pyro.deterministic records a masked-out Delta: log-density 0, so it
    # neither contributes a weight nor decides which plate the bound factors over.
    return (
        site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("_deterministic", False)
    )


def _plates(site):
    return {f for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE}


def data_plate(model_trace, guide_trace):
    """The outermost vectorized plate every counted site of both traces sits
    in, or None, with the names of the sites outside it (for the error)."""
    sites = [
        s for t in (model_trace, guide_trace) for s in t.nodes.values() if _counts(s)
    ]
    common = set.intersection(*[_plates(s) for s in sites]) if sites else set()
    if not common:
        outside = sorted({s["name"] for s in sites if not _plates(s)})
        return None, outside
    return min(common, key=lambda f: f.dim), []


def plate_scale(frame):
    """The subsampling scale full_size / size of a plate frame (1 if not subsampled)."""
    if frame is None or frame.full_size is None:
        return 1.0
    return frame.full_size / frame.size


def _reduce(log_prob, keep):
    # Sum every dim except `keep` (negative dims, left to right): what remains
    # is [K, B], [K], [B] or [] in that order.
    lp = torch.as_tensor(log_prob)
    need = -min(keep) if keep else 0
    if lp.dim() < need:
        lp = lp.reshape((1,) * (need - lp.dim()) + tuple(lp.shape))
    dims = [d for d in range(-lp.dim(), 0) if d not in keep]
    return lp.sum(dims) if dims else lp


def trace_log_density(trace, frame, particle_dim):
    """Sum over the counted sites of the trace of log_prob (masked, scaled by
    the site's scale divided by the data plate's subsampling scale, which the
    caller applies once per data point), reduced to (particle dim, plate dim)."""
    keep = [d for d in (particle_dim, None if frame is None else frame.dim) if d is not None]
    data_scale = plate_scale(frame)
    total = 0.0
    for site in trace.nodes.values():
        if not _counts(site):
            continue
        lp = site.get(LOG_PROB)
        if lp is None:
            lp = _log_prob(site)
        lp = scale_and_mask(lp, site["scale"] / data_scale, site["mask"])
        total = total + _reduce(lp, keep)
    return torch.as_tensor(total)


def _log_prob(site):
    return site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])


def latent_sites(trace):
    return [
        s for s in trace.nodes.values()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    ]


def check_reparameterized(guide_trace, why):
    for site in latent_sites(guide_trace):
        if not getattr(site["fn"], "has_rsample", False):
            raise ValueError(
                f"IWAE_ELBO: {why}, but the guide's sample site '{site['name']}' "
                f"({type(site['fn']).__name__}) has no rsample (not reparameterizable)"
            )


def subsamples(trace):
    """The trace's plate-subsampling sites alone: replaying them gives another
    run the same minibatch (particles of one data point must see that point)."""
    out = poutine.Trace()
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and site_is_subsample(site):
            out.add_node(name, **site)
    return out


def run(model, guide, args, kwargs, max_plate_nesting):
    """Guide, then model replayed against it: the plain (IWAE) traces, no
    GradWeights, and the guide's subsampling sites."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        *args, **kwargs
    )
    if is_validation_enabled():
        check_model_guide_match(model_trace, guide_trace, max_plate_nesting)
    return (prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace), [],
            subsamples(guide_trace))


class _ScaleGrad(torch.autograd.Function):
    # Identity forward; the backward multiplies the gradient by weight.get(),
    # a per-particle weight the ELBO fills in after the forward pass.
    @staticmethod
    def forward(ctx, x, weight):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.weight.get(), None


class GradWeight:
    """The z-path weight of one sample site: [K, B] normalized weights placed
    at the site's particle and plate dims (None until set: an error then)."""

    def __init__(self, value, event_dim):
        self.ndim = value.dim()
        self.event_dim = event_dim
        self.tensor = None
        self.node = None  # the autograd node of the sample the replay saw

    def set(self, w, dims):
        """w: [K, B], [K], [B] or [] as _reduce lays them out; dims: the batch
        dims (negative) its dims sit at, None for one w lacks."""
        shape = [1] * self.ndim
        pos = [self.ndim - self.event_dim + d for d in dims if d is not None]
        for p, size in zip(pos, w.shape):
            shape[p] = size
        self.tensor = w.reshape(shape)

    def get(self):
        if self.tensor is None:
            raise RuntimeError("IWAE_ELBO: backward through a DReG/STL surrogate before its weights were set")
        return self.tensor


def run_detached(model, guide, args, kwargs, max_plate_nesting):
    """Traces for DReG/STL. The guide runs once to draw z; each drawn latent
    (not a Delta: those are functions of other latents, e.g. AutoContinuous's
    per-site values) goes through _ScaleGrad; the guide is then replayed on
    those values with its parameters detached, so its log-density reaches the
    guide's parameters only through z, and the model is replayed against that.
    Returns (model_trace, guide_trace, [GradWeight], subsampling sites)."""
    first = poutine.trace(guide).get_trace(*args, **kwargs)
    check_reparameterized(first, "DReG/STL differentiate through the samples")
    replay = poutine.Trace()
    weights = []
    points = {}  # Delta sites: whether the drawn value carried gradient
    for name, site in first.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if site_is_subsample(site):  # the same minibatch in every pass
            replay.add_node(name, **site)
            continue
        if isinstance(site["fn"], Delta):
            # recomputed by the replay from the latents it depends on (if any)
            points[name] = site["value"].requires_grad
            continue
        w = GradWeight(site["value"], site["fn"].event_dim)
        weights.append(w)
        value = _ScaleGrad.apply(site["value"], w)
        w.node = value.grad_fn
        replay.add_node(name, **{**site, "value": value})
    with detached_params():
        guide_trace = poutine.trace(poutine.replay(guide, trace=replay)).get_trace(*args, **kwargs)
        # Now, while the parameters are detached: a distribution may read its
        # parameters only when asked for a log-density (a flow's transform
        # calls its network then), or hold the very Parameter object, which
        # requires grad again once restored.
        for site in guide_trace.nodes.values():
            if _counts(site):
                site[LOG_PROB] = _log_prob(site)
        # A Delta whose value lost its gradient with the parameters sits at
        # them (no sample behind it): no path through z to weight.
        for site in latent_sites(guide_trace):
            if (isinstance(site["fn"], Delta) and points.get(site["name"], False)
                    and not site["value"].requires_grad):
                raise ValueError(
                    f"IWAE_ELBO: DReG/STL need every latent drawn by rsample, but the guide's "
                    f"site '{site['name']}' is a point mass at its parameters (e.g. AutoDelta)")
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        *args, **kwargs
    )
    if is_validation_enabled():
        check_model_guide_match(model_trace, guide_trace, max_plate_nesting)
    return (prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace), weights,
            subsamples(first))
