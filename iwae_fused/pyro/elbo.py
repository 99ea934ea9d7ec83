"""IWAE_ELBO: a plate-aware importance-weighted objective for Pyro's SVI."""

import math

import torch

import pyro.poutine as poutine
from pyro.infer.elbo import ELBO
from pyro.util import warn_if_nan

import iwae_fused
from iwae_fused import _args
from iwae_fused.pyro import _detach, _traces

ESTIMATORS = ("iwae", "dreg", "stl")


def _check_options(num_particles, alpha, estimator, vectorize_particles, max_plate_nesting,
                   strict, retain_graph):
    """TypeError for an option of the wrong type, ValueError for a bad value,
    each naming the option."""
    _args.check("IWAE_ELBO", (
        ("num_particles", "int", num_particles),
        ("alpha", "real", alpha),
        ("estimator", "str", estimator),
        ("vectorize_particles", "bool", vectorize_particles),
        ("strict", "bool", strict),
        ("retain_graph", "optional bool", retain_graph),
    ))
    if max_plate_nesting != float("inf"):
        _args.check("IWAE_ELBO", (("max_plate_nesting", "int", max_plate_nesting),))
    if num_particles < 1:
        raise ValueError(f"IWAE_ELBO: expected num_particles to be a positive int, but got {num_particles!r}")
    if not math.isfinite(alpha):
        raise ValueError(f"IWAE_ELBO: expected a finite alpha, but got {alpha!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"IWAE_ELBO: expected estimator to be one of {ESTIMATORS}, but got {estimator!r}")
    if estimator != "iwae" and alpha != 0:
        raise ValueError(
            f"IWAE_ELBO: estimator={estimator!r} is defined for alpha = 0 (the IWAE bound), but got alpha={alpha!r}")
    if max_plate_nesting < 0:
        raise ValueError(f"IWAE_ELBO: expected max_plate_nesting >= 0, but got {max_plate_nesting!r}")


class IWAE_ELBO(ELBO):
    r"""The importance-weighted bound (IWAE) per data point, for
    ``SVI(model, guide, optim, loss=IWAE_ELBO(num_particles=K))``.

    For each data point i of the outermost plate that every sample site of
    model and guide sits in (the data plate), with K particles z_ik from the
    guide (a particle plate of size K outermost when vectorized),

    .. math::
        \log w_{ik} = \sum_{s} \log p_s - \sum_{s} \log q_s, \qquad
        \mathcal L = c \sum_i \frac{1}{1-\alpha}\log\frac1K\sum_k w_{ik}^{1-\alpha}

    where each site's log-density is summed over its non-plate dims, masked
    and scaled by its ``poutine.scale`` factors (inside the weight, as Pyro's
    own ELBOs do), and c = full_size / subsample_size is the data plate's
    subsampling scale, applied once per data point (outside the log-mean-exp:
    the minibatch sum times c is then an unbiased estimate of the full-data
    bound). The reduction over particles is :func:`iwae_fused.iwelbo`
    (``alpha`` passed through; alpha = 0 is IWAE, alpha = 1 the ELBO).

    Global latents: a sample site outside the data plate (a latent shared by
    all data points) couples the data points, and the per-data-point bound is
    then not a bound. If no plate holds every site, the loss is the joint
    bound over all log-weights summed, reduced over particles (what
    ``RenyiELBO`` computes), unless ``strict=True``, which raises instead.
    ``pyro.deterministic`` sites (log-density 0) are ignored in that test.

    Estimators (the gradient; the value is the same bound):

    * ``"iwae"``: the gradient of the bound (reparameterized guides only);
    * ``"dreg"``: doubly reparameterized (Tucker et al. 2018), as
      :func:`iwae_fused.dreg`: the guide's log-density is re-evaluated with its
      parameters detached, and the gradient through the samples z is weighted
      by the squared normalized weights;
    * ``"stl"``: sticking the landing (Roeder et al. 2017): the same, with the
      normalized weights.

    ``"dreg"`` and ``"stl"`` need ``alpha == 0`` and a guide whose latents are
    all drawn by ``rsample`` (Delta sites computed from them, as in Pyro's
    AutoContinuous guides, are fine). Detached are all the parameters Pyro
    hands out, with the global param store and under
    ``pyro.settings.context(module_local_params=True)`` alike: ``pyro.param``,
    a PyroModule's PyroParams, plain ``nn.Parameter`` and ``nn.Module``
    attributes (nested PyroModules included), ``pyro.module``, and so every
    AutoGuide; also any parameter of the global param store the guide reads
    another way. If the re-evaluated log-density still depends on a tensor
    that requires grad (a tensor the guide closes over, or a parameter a
    module reads from a cache of its own rather than by attribute access),
    the loss raises a ValueError naming it rather than return another
    estimator's gradient.

    :param int num_particles: K, the number of particles (samples per data point).
    :param float alpha: the Renyi order passed to :func:`iwae_fused.iwelbo`.
    :param str estimator: ``"iwae"``, ``"dreg"`` or ``"stl"``.
    :param bool vectorize_particles: one run with a particle plate of size K
        (default) rather than K runs.
    :param int max_plate_nesting: the model's plate nesting, as for any Pyro
        ELBO (guessed from one run if omitted).
    :param bool strict: raise if the per-data-point bound does not apply.
    """

    def __init__(
        self,
        num_particles=2,
        alpha=0.0,
        estimator="iwae",
        vectorize_particles=True,
        max_plate_nesting=float("inf"),
        strict=False,
        retain_graph=None,
    ):
        _check_options(num_particles, alpha, estimator, vectorize_particles, max_plate_nesting,
                       strict, retain_graph)
        self.alpha = float(alpha)
        self.estimator = estimator
        self.strict = strict
        super().__init__(
            num_particles=int(num_particles),
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=False,
            retain_graph=retain_graph,
        )

    # -- traces -------------------------------------------------------------

    def _vectorized(self):
        return self.vectorize_particles and self.num_particles > 1

    def _get_trace(self, model, guide, args, kwargs):
        if self.estimator == "iwae":
            out = _traces.run(model, guide, args, kwargs, self.max_plate_nesting)
            _traces.check_reparameterized(
                out[1], "estimator='iwae' differentiates through the samples")
            return out
        if torch._C._are_functorch_transforms_active():
            # Its detaching works on autograd leaves and its z-path weights
            # are set after the forward: neither exists inside torch.func.
            raise NotImplementedError(
                f"IWAE_ELBO(estimator={self.estimator!r}) does not support torch.func transforms "
                "(grad, vjp, vmap, ...); use loss.backward() or torch.autograd.grad, or "
                "estimator='iwae'")
        return _traces.run_detached(model, guide, args, kwargs, self.max_plate_nesting)

    def _get_traces(self, model, guide, args, kwargs):
        if self.vectorize_particles:
            yield from super()._get_traces(model, guide, args, kwargs)
            return
        # K runs: every run after the first replays the first one's minibatch.
        minibatch = None
        for _ in range(self.num_particles):
            run_guide = guide if minibatch is None else poutine.replay(guide, trace=minibatch)
            out = self._get_trace(model, run_guide, args, kwargs)
            minibatch = out[3]
            yield out

    def _log_weights(self, model, guide, args, kwargs):
        """[K, B] log-weights of the data plate (or [K] for the joint bound),
        the plate's subsampling scale, the GradWeights of each run and the
        batch dims (particle, plate) the weights' dims sit at."""
        traces = list(self._get_traces(model, guide, args, kwargs))
        # after the traces: the first vectorized run may have guessed max_plate_nesting
        particle_dim = -self.max_plate_nesting if self._vectorized() else None
        runs = []
        for model_trace, guide_trace, weights, _ in traces:
            frame, outside = _traces.data_plate(model_trace, guide_trace)
            if frame is None and self.strict:
                where = (f"sites {outside} are outside every plate (global latents)" if outside
                         else "no vectorized plate holds all of them")
                raise ValueError(
                    "IWAE_ELBO(strict=True): the per-data-point bound needs a plate that every "
                    f"sample site sits in, but {where}; strict=False gives the joint bound")
            log_q = _traces.trace_log_density(guide_trace, frame, particle_dim)
            if weights:  # DReG/STL: nothing but the samples may carry gradient into log q
                _detach.check_detached(log_q, weights, guide_trace, guide)
            log_w = _traces.trace_log_density(model_trace, frame, particle_dim) - log_q
            runs.append((log_w, frame, weights))
        frames = {None if f is None else (f.name, f.dim) for _, f, _ in runs}
        if len(frames) != 1:
            raise ValueError(f"IWAE_ELBO: the particles' runs disagree on the data plate: {frames}")
        frame = runs[0][1]
        plate_dim = None if frame is None else frame.dim
        if particle_dim is not None:
            log_w = runs[0][0]
            if log_w.dim() == 0 or (frame is not None and log_w.dim() == 1):
                log_w = log_w.unsqueeze(0)
            log_w = log_w.expand((self.num_particles,) + tuple(log_w.shape[1:]))
        else:
            log_w = torch.stack([torch.as_tensor(r[0]) for r in runs])
        return log_w, _traces.plate_scale(frame), [r[2] for r in runs], (particle_dim, plate_dim)

    # -- objectives ---------------------------------------------------------

    def _surrogate_elbo(self, model, guide, args, kwargs):
        """(elbo value as a float, a scalar tensor whose gradient is the
        estimator's and whose value is the elbo)."""
        log_w, scale, grad_weights, dims = self._log_weights(model, guide, args, kwargs)
        if self.estimator == "iwae":
            bound = iwae_fused.iwelbo(log_w, dim=0, alpha=self.alpha)
            elbo = bound.sum() * scale
            return elbo.item(), elbo
        # DReG/STL: the value is the bound; the gradient is sum_k w~_k dlog w_k
        # with log q's parameters detached, and the z path carries one more
        # factor w~ (DReG) set on the samples' _ScaleGrad now, before backward.
        w = iwae_fused.normalized_weights(log_w.detach(), dim=0)
        for k, run_weights in enumerate(grad_weights):
            # one vectorized run holds all K particles; else run k holds particle k
            wk, wk_dims = (w, dims) if dims[0] is not None else (w[k], (None, dims[1]))
            for gw in run_weights:
                gw.set(wk if self.estimator == "dreg" else torch.ones_like(wk), wk_dims)
        bound = iwae_fused.iwelbo(log_w.detach(), dim=0)
        surrogate = (w * log_w).sum(0)
        elbo = (bound + surrogate - surrogate.detach()).sum() * scale
        return elbo.item(), elbo

    @torch.no_grad()
    def loss(self, model, guide, *args, **kwargs):
        """:returns: -bound, a float, from num_particles particles per data point."""
        elbo, _ = self._surrogate_elbo(model, guide, args, kwargs)
        loss = -elbo
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """:returns: -bound as a tensor whose backward gives the estimator's gradients."""
        _, elbo = self._surrogate_elbo(model, guide, args, kwargs)
        return -elbo

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """:returns: -bound (a float), after backward of the estimator's surrogate."""
        elbo, surrogate = self._surrogate_elbo(model, guide, args, kwargs)
        if surrogate.requires_grad:
            (-surrogate).backward(retain_graph=self.retain_graph)
        loss = -elbo
        warn_if_nan(loss, "loss")
        return loss
