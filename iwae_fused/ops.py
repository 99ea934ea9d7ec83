"""Python entry points of the ops, and their fake (meta) implementations.

The entry points are thin: argument checks, broadcasting and dtype promotion
happen in C++ (csrc/plan.cpp) where they cost nothing per call, and autograd
is registered in C++ (csrc/autograd.cpp). An entry point calls its operator
at once; only when the dispatcher refuses the arguments does it look at them
(_args.py): a Python number operand is then converted to a 0-dim tensor and
the call retried, and an argument of a wrong type gets a TypeError naming it.
torch.compile traces stand-ins that do the same up front (_compiled.py). The
fake implementations below mirror plan.cpp's checks and shapes for meta and
fake tensors (torch.compile, torch.export), with the same error messages.
"""

import math
from typing import Tuple, Union

import torch
from torch import Tensor

from iwae_fused import _args
from iwae_fused._build import _C  # noqa: F401  (registers torch.ops.iwae_fused)

__all__ = [
    "iwelbo",
    "normalized_weights",
    "effective_sample_size",
    "weight_diagnostics",
    "vimco",
    "dreg",
]

_iwelbo = torch.ops.iwae_fused.iwelbo.default
_normalized_weights = torch.ops.iwae_fused.normalized_weights.default
_weight_diagnostics = torch.ops.iwae_fused.weight_diagnostics.default
_vimco = torch.ops.iwae_fused.vimco.default
_dreg = torch.ops.iwae_fused.dreg.default


def iwelbo(
    log_p: Union[Tensor, float],
    log_q: Union[Tensor, float, None] = None,
    dim: int = 0,
    keepdim: bool = False,
    alpha: float = 0.0,
) -> Tensor:
    r"""The importance-weighted bound (IWAE, Burda et al. 2016) along ``dim``.

    .. math::
        \mathcal{L}_K = \log \frac{1}{K} \sum_{k=1}^{K} \exp(\log p_k - \log q_k)

    with ``K = log_p.shape[dim]``. A drop-in for
    ``torch.logsumexp(log_p - log_q, dim, keepdim) - math.log(K)``: the same
    values, shape, dtype, device, broadcasting of ``log_p`` against ``log_q``
    and dtype promotion, from one fused kernel per direction.

    With ``alpha``, the Renyi (variational Renyi, VR) bound of Li & Turner
    (2016), with log w_k = log p_k - log q_k:

    .. math::
        \mathcal{L}_\alpha = \frac{1}{1-\alpha}\Big[\log \sum_k
            \exp\big((1-\alpha)\log w_k\big) - \log K\Big]

    whose gradient with respect to log w is softmax((1 - alpha) log w).
    alpha = 0 is IWAE; alpha = 1 is the ELBO, mean_k(log w_k), taken exactly
    (uniform weights 1/K); negative alpha is allowed (alpha -> -inf tends to
    the max). For alpha > 1 a sample at log w = -inf makes the bound -inf.

    Args:
        log_p: log p(x, z_k), e.g. ``[K, B]`` for K samples of B examples (what
            ``q.rsample((K,))`` gives). With ``log_q=None`` it holds the
            log-weights log p - log q themselves.
        log_q: log q(z_k | x), broadcastable against ``log_p``; or None.
            Either operand may be a Python (or NumPy) real number ``c``,
            taken as ``log_p - c`` takes it: a 0-dim tensor of the other
            operand's dtype and device, so it never promotes the result's
            dtype (a float16 ``log_p`` gives float16). In float16/bfloat16
            ``c`` is rounded to that dtype first (eager rounds only the
            difference): a difference of at most half an ulp of ``c``. Bools
            are refused, as ``log_p - True`` refuses them. The number is
            converted after the dispatcher refuses it (a tensor call pays
            nothing for this; a number costs one refused dispatch, about
            20 us): in a hot loop, pass a tensor. Under torch.compile the
            conversion happens while tracing and costs nothing at run time.
        dim: the sample dimension, reduced away (any dim, negative allowed).
        keepdim: keep ``dim`` as size 1.
        alpha: the Renyi order (finite), 0 by default.

    Returns:
        The bound per example: ``log_p``'s broadcast shape without ``dim``.

    Gradients: ``d/d log_p = g * w`` and ``d/d log_q = -g * w`` with
    ``w = softmax(log_p - log_q, dim)`` the normalized importance weights,
    written in one element-wise pass from the log-sum-exp saved by the
    forward. A broadcast input receives its gradient summed over the broadcast.

    Every autograd feature gives the eager expression's derivatives (the
    docs' autograd guide): double backward (``create_graph=True``; the second
    derivative along ``dim`` is ``g beta (diag(w) - w w^T)``, beta = 1 - alpha),
    forward-mode AD (tangent ``sum_k w_k (t_p - t_q)_k``, the mean of the
    tangents at alpha = 1), the torch.func transforms and their compositions,
    and torch.vmap (a batching rule: the vmapped dim becomes a batch dim of the
    same kernels). Plain ``backward()`` runs the fused kernels through a C++
    autograd node; forward-mode AD, create_graph and torch.func transforms
    run a differentiable composite of ATen ops with the same -inf rules.

    Numerics, where the eager expression is worse:

    * a slice whose log-weights are all ``-inf`` gives ``-inf`` and zero
      gradients (the eager expression gives NaN gradients);
    * a sample at ``-inf`` gets weight exactly 0;
    * a NaN makes that slice's bound and gradients NaN, and no other slice's;
    * a ``+inf`` log-weight gives ``+inf`` (as logsumexp does), with NaN
      gradient at the ``+inf`` samples and 0 elsewhere in that slice;
    * log-weights of magnitude 1e4 and more neither overflow nor lose
      accuracy (an online max shift, the sum stays in [1, K]);
    * float16 and bfloat16 accumulate in float32 and round once, at the end.

    Errors: non-floating dtypes (TypeError), shapes that do not broadcast or an
    empty sample dim, K = 0 (ValueError), ``dim`` out of range (IndexError),
    inputs on different devices (RuntimeError). An argument of a wrong type
    raises a TypeError naming the op, the argument, the type expected and the
    type given (``alpha='x'``: "iwelbo(): expected alpha to be a float, but got
    str ('x')"). As for every torch.ops operator, the dispatcher itself takes
    some values of a neighbouring type: a bool or a one-element tensor for
    ``dim``, any number or None for ``keepdim``, a one-element tensor for
    ``alpha`` (no gradient flows to it); they are not checked beforehand,
    which would cost every call, and compiled calls take the same ones.
    An empty batch gives an empty result.
    """
    try:
        return _iwelbo(log_p, log_q, dim, keepdim, alpha)
    except (TypeError, RuntimeError):
        fixed = _args.after_refusal("iwelbo", log_p, log_q, True, _iwelbo_args(dim, keepdim, alpha))
        if fixed is None:
            raise
    return _iwelbo(*fixed, dim, keepdim, alpha)


def _iwelbo_args(dim, keepdim, alpha):
    return (("dim", "op int", dim), ("keepdim", "op bool", keepdim), ("alpha", "op real", alpha))


def normalized_weights(
    log_p: Union[Tensor, float], log_q: Union[Tensor, float, None] = None, dim: int = 0
) -> Tensor:
    r"""The self-normalized importance weights ``softmax(log_p - log_q, dim)``.

    .. math::
        \tilde w_k = \frac{\exp(\log p_k - \log q_k)}{\sum_j \exp(\log p_j - \log q_j)}

    Same arguments, broadcasting and dtype rules as :func:`iwelbo`; returns the
    broadcast shape of ``log_p`` and ``log_q`` (``dim`` kept), contiguous.
    Computed by the same kernels (one reduction, one element-wise pass).

    The weights are returned as constants, without a gradient: reweighted
    wake-sleep and weight diagnostics use them as such, e.g. the wake-phi loss
    ``-(normalized_weights(log_p, log_q) * log_q).sum(0).mean()``. A slice
    whose log-weights are all ``-inf`` gets weights 0 (softmax gives NaN).
    By the same design they carry no tangent under forward-mode AD (None;
    ``torch.func.jvp`` reports zeros) and give zero gradients under
    ``torch.func.grad``; for derivatives of the weights, use ``torch.softmax``
    or differentiate :func:`iwelbo`.
    """
    try:
        return _normalized_weights(log_p, log_q, dim)
    except (TypeError, RuntimeError):
        fixed = _args.after_refusal("normalized_weights", log_p, log_q, True, _dim_args(dim))
        if fixed is None:
            raise
    return _normalized_weights(*fixed, dim)


def _dim_args(dim):
    return (("dim", "op int", dim),)


def weight_diagnostics(
    log_p: Union[Tensor, float], log_q: Union[Tensor, float, None] = None, dim: int = 0
) -> Tuple[Tensor, Tensor]:
    r"""Importance-weight diagnostics per example, from one fused pass.

    Returns ``(ess, max_weight)``, both of the bound's shape (``dim`` removed):

    .. math::
        \mathrm{ESS} = \frac{1}{\sum_k \tilde w_k^2}
            = \frac{(\sum_k w_k)^2}{\sum_k w_k^2}, \qquad
        \max_k \tilde w_k,

    with w_k = exp(log p_k - log q_k) and normalized weights w~ (Kong 1992;
    see Owen, "Monte Carlo theory, methods and examples", ch. 9). ESS runs from
    1 (one sample carries all the weight) to K (all equal); the largest weight
    from 1/K to 1. Both are computed from the online state (max, sum, sum of
    squares) of one read of the inputs, in float32 for half types, and are
    constants (no gradient, no forward-mode tangent, by design). An all -inf
    slice gives 0 and 0; NaN stays in its slice. Arguments, broadcasting and
    errors as :func:`iwelbo`.
    """
    try:
        return _weight_diagnostics(log_p, log_q, dim)
    except (TypeError, RuntimeError):
        fixed = _args.after_refusal("weight_diagnostics", log_p, log_q, True, _dim_args(dim))
        if fixed is None:
            raise
    return _weight_diagnostics(*fixed, dim)


def effective_sample_size(
    log_p: Union[Tensor, float], log_q: Union[Tensor, float, None] = None, dim: int = 0
) -> Tensor:
    """The effective sample size 1 / sum_k w~_k^2 per example; see
    :func:`weight_diagnostics`, which also gives the largest weight."""
    try:
        return _weight_diagnostics(log_p, log_q, dim)[0]
    except (TypeError, RuntimeError):
        fixed = _args.after_refusal("effective_sample_size", log_p, log_q, True, _dim_args(dim))
        if fixed is None:
            raise
    return _weight_diagnostics(*fixed, dim)[0]


def vimco(
    log_p: Union[Tensor, float], log_q: Union[Tensor, float], dim: int = 0, keepdim: bool = False
) -> Tensor:
    r"""The IWAE bound with the VIMCO gradient estimator (Mnih & Rezende 2016),
    for discrete latents (z ~ q sampled without reparameterization).

    The value is :func:`iwelbo`'s. The backward gives ``log_p`` the weights
    ``g * w~_j`` and ``log_q`` the multi-sample score-function signal with
    leave-one-out baselines plus the pathwise term,

    .. math::
        \frac{\partial}{\partial \log q_j} = \big(\hat L - \hat L_{-j}\big) - \tilde w_j,
        \qquad \hat L_{-j} = \log \frac{1}{K}\Big(\sum_{i \ne j} w_i + \hat f_{-j}\Big),
        \quad \log \hat f_{-j} = \frac{1}{K-1}\sum_{i \ne j} \log w_i,

    so ``-vimco(log_p, log_q).mean()`` is the loss whose ``backward()`` yields
    VIMCO's gradients for the generative model (through log_p) and the
    inference network (through log_q = log q(z | x) of the sampled z).

    ``log_p`` and ``log_q`` broadcast, promote and may be numbers as for
    :func:`iwelbo` (a number ``log_q``: no signal to send back).

    All K signals are computed in O(K) per example from one pass, and stably:
    no catastrophic cancellation when one weight dominates (the sum of the
    others is kept apart from the largest weight, and the arithmetic is in
    double whatever the input dtype). K = 1 is an error (no leave-one-out);
    an example whose log-weights are all -inf gives -inf and zero gradients.

    The backward is an estimator, not the derivative of the value, so there is
    nothing for higher-order or forward-mode AD to differentiate: forward-mode
    AD, the differentiating torch.func transforms (grad, vjp, jvp, jacrev,
    jacfwd, hessian) and differentiating the gradients (double backward) raise
    an error naming vimco. ``create_graph=True`` itself and ``torch.vmap``
    (without differentiation) work.
    """
    try:
        return _vimco(log_p, log_q, dim, keepdim)
    except (TypeError, RuntimeError):
        fixed = _args.after_refusal("vimco", log_p, log_q, False, _vimco_args(dim, keepdim))
        if fixed is None:
            raise
    return _vimco(*fixed, dim, keepdim)


def _vimco_args(dim, keepdim):
    return (("dim", "op int", dim), ("keepdim", "op bool", keepdim))


def dreg(
    log_p: Union[Tensor, float], log_q: Union[Tensor, float], z: Tensor, dim: int = 0,
    z_weight: str = "dreg",
) -> Tensor:
    r"""The IWAE bound with the doubly reparameterized gradient estimator
    (DReG; Tucker, Lawson, Gu & Maddison 2018, "Doubly Reparameterized Gradient
    Estimators for Monte Carlo Objectives").

    The value is ``iwelbo(log_p, log_q, dim)``. The gradients are
    DReG's, with w~ the normalized weights:

    * parameters that enter ``log_p`` directly (the generative model, theta):
      sum_k w~_k grad_theta log p(x, z_k), as for IWAE;
    * the samples ``z``, and through them the inference network (phi):
      sum_k w~_k^2 (d log w_k / d z_k) dz_k/dphi, whose variance does not grow
      with K the way the IWAE estimator's signal-to-noise ratio decays.

    What the caller must do:

    * draw ``z`` with ``rsample`` (reparameterized) and pass that tensor as
      ``z``;
    * compute ``log_q = q_detached.log_prob(z)`` where ``q_detached`` is q(z|x)
      built from **detached** parameters (e.g. ``Normal(mu.detach(),
      sigma.detach())``): q's parameters then reach the loss only through z;
    * compute ``log_p = log p(x, z)`` from the same ``z`` (not detached).

    ``z_weight`` picks the weighting of the z path from the same kernel:
    ``"dreg"`` (w~^2, IWAE-DReG), ``"rws"`` (w~ - w~^2, RWS-DReG for
    reweighted wake-sleep's wake-phi update) or ``"stl"`` (w~, "sticking the
    landing", Roeder et al. 2017). The backward is one fused pass writing
    ``g w~`` and the z-path correction ``g (t(w~) - w~)``, then a
    vector-Jacobian product of the saved ``log_p``/``log_q`` graphs with respect
    to ``z`` (a second backward through the decoder for the z part).

    A training loop (an inference net ``enc``, a generative net ``dec``)::

        import torch
        import iwae_fused
        from torch.distributions import Normal

        K, D = 16, 2                                                # samples, latent dims
        x = torch.randn(8, 4)                                       # B = 8 points
        enc, dec = torch.nn.Linear(4, 2 * D), torch.nn.Linear(D, 4)
        opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-2)
        for step in range(10):
            mu, log_sigma = enc(x).chunk(2, -1)
            z = Normal(mu, log_sigma.exp()).rsample((K,))           # [K, B, D]
            q_stop = Normal(mu.detach(), log_sigma.exp().detach())  # q's parameters detached
            log_q = q_stop.log_prob(z).sum(-1)                      # [K, B]
            log_p = Normal(0.0, 1.0).log_prob(z).sum(-1) + Normal(dec(z), 1.0).log_prob(x).sum(-1)
            loss = -iwae_fused.dreg(log_p, log_q, z).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    Shapes: ``log_p``, ``log_q`` as for :func:`iwelbo` (``dim`` the sample
    dim; either may be a number, as there); ``z`` any tensor both were
    computed from. Not supported under
    torch.compile's autograd (the backward is reentrant); eager only. As for
    :func:`vimco`, the gradients are an estimator's: forward-mode AD, the
    differentiating torch.func transforms and double backward raise an error
    naming dreg; ``torch.vmap`` of the value works. A ``retain_grad()`` on a
    non-leaf ``log_p`` records ``g w~`` plus the z-path correction (the
    correction's vector-Jacobian product runs through ``log_p``'s graph and
    fires its hook too); leaves and parameters get the gradients above.
    """
    try:
        return _dreg(log_p, log_q, z, dim, z_weight)
    except (TypeError, RuntimeError):
        fixed = _args.after_refusal("dreg", log_p, log_q, False, _dreg_args(z, dim, z_weight))
        if fixed is None:
            raise
    return _dreg(*fixed, z, dim, z_weight)


def _dreg_args(z, dim, z_weight):
    return (("z", "tensor", z), ("dim", "op int", dim), ("z_weight", "str", z_weight))


# ---- fake implementations (mirror csrc/plan.cpp) -----------------------------

_SUPPORTED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_input(op, name, t):
    if t.dtype not in _SUPPORTED:
        raise TypeError(
            f"{op}(): expected {name} to be a floating-point tensor (torch.float32, "
            f"torch.float64, torch.float16 or torch.bfloat16), but got {t.dtype}"
        )


def _check_alpha(op, alpha):
    if not math.isfinite(alpha):
        raise ValueError(f"{op}(): expected a finite alpha, but got {alpha}")


def _broadcast(op, a, b):
    n = max(len(a), len(b))
    out = []
    for i in range(n):
        sa = a[i - (n - len(a))] if i >= n - len(a) else 1
        sb = b[i - (n - len(b))] if i >= n - len(b) else 1
        if not (sa == sb or sa == 1 or sb == 1):
            raise ValueError(
                f"{op}(): log_p of shape {list(a)} and log_q of shape {list(b)} do not "
                f"broadcast: sizes {sa} and {sb} differ at dimension {i - n} (shapes "
                f"must be equal or 1 there, as for log_p - log_q)"
            )
        out.append(sb if sa == 1 else sa)
    return out


def _plan(op, log_p, log_q, dim):
    """(broadcast shape, wrapped dim, promoted dtype), with plan.cpp's errors."""
    _check_input(op, "log_p", log_p)
    if log_q is not None:
        _check_input(op, "log_q", log_q)
        if log_q.device != log_p.device:
            raise RuntimeError(
                f"{op}(): expected all tensors on the same device, but log_p is "
                f"on {log_p.device} and log_q is on {log_q.device}"
            )
        shape = _broadcast(op, list(log_p.shape), list(log_q.shape))
        dtype = torch.result_type(log_p, log_q)
    else:
        shape = list(log_p.shape)
        dtype = log_p.dtype
    span = max(len(shape), 1)
    if not -span <= dim < span:
        raise IndexError(
            f"{op}(): dim={dim} is out of range for log-weights of shape {shape} "
            f"(expected dim in [{-span}, {span - 1}])"
        )
    d = 0 if not shape else dim % span
    if shape and shape[d] == 0:
        raise ValueError(
            f"{op}(): the sample dimension dim={dim} has size 0, but at least one "
            f"importance sample is needed (log-weights of shape {shape})"
        )
    return shape, d, dtype


def _reduced(shape, d, keepdim):
    if not shape:
        return []
    return shape[:d] + ([1] if keepdim else []) + shape[d + 1 :]


def _opmath(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@torch.library.register_fake("iwae_fused::iwelbo")
def _iwelbo_fake(log_p, log_q=None, dim=0, keepdim=False, alpha=0.0):
    _check_alpha("iwelbo", alpha)
    shape, d, dtype = _plan("iwelbo", log_p, log_q, dim)
    return log_p.new_empty(_reduced(shape, d, keepdim), dtype=dtype)


@torch.library.register_fake("iwae_fused::_iwelbo_forward")
def _iwelbo_forward_fake(log_p, log_q, dim, keepdim, alpha=0.0):
    _check_alpha("iwelbo", alpha)
    shape, d, dtype = _plan("iwelbo", log_p, log_q, dim)
    out = log_p.new_empty(_reduced(shape, d, keepdim), dtype=dtype)
    stats = log_p.new_empty([2] + _reduced(shape, d, False), dtype=_opmath(dtype))
    return out, stats


@torch.library.register_fake("iwae_fused::iwelbo_backward")
def _iwelbo_backward_fake(grad, stats, log_p, log_q, dim, keepdim, alpha, output_mask):
    _check_alpha("iwelbo_backward", alpha)
    shape, d, dtype = _plan("iwelbo_backward", log_p, log_q, dim)
    torch._check(
        list(grad.shape) == _reduced(shape, d, keepdim),
        lambda: f"iwelbo_backward(): expected grad of shape {_reduced(shape, d, keepdim)} "
        f"(the shape of the bound), but got {list(grad.shape)}",
    )
    return tuple(
        log_p.new_empty(shape if on else [0], dtype=dtype) for on in output_mask
    )


@torch.library.register_fake("iwae_fused::logsumexp_stats")
def _logsumexp_stats_fake(log_p, log_q=None, dim=0):
    shape, d, dtype = _plan("iwelbo_state", log_p, log_q, dim)
    return log_p.new_empty([2] + _reduced(shape, d, False), dtype=_opmath(dtype))


@torch.library.register_fake("iwae_fused::weight_diagnostics")
def _weight_diagnostics_fake(log_p, log_q=None, dim=0):
    shape, d, dtype = _plan("effective_sample_size", log_p, log_q, dim)
    out = _reduced(shape, d, False)
    return log_p.new_empty(out, dtype=dtype), log_p.new_empty(out, dtype=dtype)


def _vimco_plan(log_p, log_q, dim):
    shape, d, dtype = _plan("vimco", log_p, log_q, dim)
    if shape and shape[d] < 2:
        raise ValueError(
            f"vimco(): needs at least 2 samples along dim={dim} (the leave-one-out "
            f"signal of one sample is undefined), but got K = {shape[d]}"
        )
    if not shape:
        raise ValueError(
            f"vimco(): needs at least 2 samples along dim={dim} (the leave-one-out "
            "signal of one sample is undefined), but got K = 1"
        )
    return shape, d, dtype


@torch.library.register_fake("iwae_fused::vimco")
def _vimco_fake(log_p, log_q, dim=0, keepdim=False):
    shape, d, dtype = _vimco_plan(log_p, log_q, dim)
    return log_p.new_empty(_reduced(shape, d, keepdim), dtype=dtype)


@torch.library.register_fake("iwae_fused::_vimco_forward")
def _vimco_forward_fake(log_p, log_q, dim, keepdim):
    shape, d, dtype = _vimco_plan(log_p, log_q, dim)
    out = log_p.new_empty(_reduced(shape, d, keepdim), dtype=dtype)
    state = log_p.new_empty([5] + _reduced(shape, d, False), dtype=torch.float64)
    return out, state


@torch.library.register_fake("iwae_fused::vimco_backward")
def _vimco_backward_fake(grad, state, log_p, log_q, dim, keepdim, output_mask):
    shape, d, dtype = _vimco_plan(log_p, log_q, dim)
    return tuple(log_p.new_empty(shape if on else [0], dtype=dtype) for on in output_mask)


@torch.library.register_fake("iwae_fused::dreg")
def _dreg_fake(log_p, log_q, z, dim=0, z_weight="dreg"):
    if z is None:
        raise TypeError("dreg(): expected z to be a torch.Tensor, but got None")
    if z_weight not in ("dreg", "stl", "rws"):
        raise ValueError(
            f"dreg(): expected z_weight to be 'dreg', 'stl' or 'rws', but got '{z_weight}'"
        )
    shape, d, dtype = _plan("iwelbo", log_p, log_q, dim)
    return log_p.new_empty(_reduced(shape, d, False), dtype=dtype)


@torch.library.register_fake("iwae_fused::dreg_backward")
def _dreg_backward_fake(grad, stats, log_p, log_q, dim, z_weight):
    shape, _, dtype = _plan("dreg_backward", log_p, log_q, dim)
    return log_p.new_empty(shape, dtype=dtype), log_p.new_empty(shape, dtype=dtype)


@torch.library.register_fake("iwae_fused::normalized_weights")
def _normalized_weights_fake(log_p, log_q=None, dim=0):
    shape, _, dtype = _plan("normalized_weights", log_p, log_q, dim)
    return log_p.new_empty(shape, dtype=dtype)


# vmap batching rules (a vmapped dim becomes a batch dim of the same kernels).
from iwae_fused import batching as _batching  # noqa: E402,F401
# What torch.compile traces in place of the entry points above.
from iwae_fused import _compiled  # noqa: E402,F401
