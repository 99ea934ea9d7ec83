"""Pareto-smoothed importance sampling (PSIS): the k-hat diagnostic and the
smoothed weights, batched over examples, in plain torch ops (any device).

The algorithm is the one of Vehtari, Simpson, Gelman, Yao and Gabry, "Pareto
Smoothed Importance Sampling", JMLR 25 (2024), as the authors implement it in
the R packages loo (psis(), gpdfit()) and posterior (ps_tail(), which current
loo calls); Yao, Vehtari, Simpson and Gelman, "Yes,
but did it work?: evaluating variational inference", ICML 2018, use k-hat to
judge a variational proposal. For S draws of log-weights per example:

1. the tail size M = ceil(min(S / 5, 3 sqrt(S))) (the paper's rule with
   relative efficiency r_eff = 1: importance samples from q are independent);
2. the threshold u is the (M+1)-th largest log-weight, and the M largest
   weights minus exp(u) are the exceedances y_1 <= ... <= y_M (computed after
   subtracting the largest log-weight, so the largest weight is 1);
3. a generalized Pareto distribution is fit to y by Zhang and Stephens (2009,
   Technometrics 51(3)), "A new and efficient estimation method for the
   generalized Pareto distribution": a grid of G = 30 + floor(sqrt(M)) values
   theta_j = 1/y_M + (1 - sqrt(G / (j - 1/2))) / (3 y_q), y_q the first
   quartile y_{floor(M/4 + 1/2)}, weighted by their profile likelihood
   M (log(-theta/k(theta)) - k(theta) - 1) with k(theta) = mean log(1 - theta y);
   the posterior mean theta^ gives k = mean log(1 - theta^ y), sigma = -k/theta^;
4. k is shrunk by the weakly informative prior of the paper:
   k-hat = (M k + 10 * 0.5) / (M + 10).

No Python loop over examples: every example is a column of one [M+1, N]
tensor of its M+1 largest log-weights, which is all the fit needs. That is
also what makes k-hat streamable (see iwae_fused.evaluation.TopState).

When there is no tail to fit, k-hat is +inf, as in loo and ArviZ ("cannot be
assessed": treat the estimate as unreliable):
  * M < 5, i.e. S <= 20 samples (loo's enough_tail_samples);
  * every log-weight of the slice is -inf;
  * the M largest log-weights are all equal, to eps/100 (loo and posterior
    refuse these: "all tail values are the same"), or so many tie with the
    threshold that the quartile exceedance y_q is 0 (the grid divides by y_q;
    loo's fit returns NaN there and loo turns a NaN k into +inf).
A slice holding a NaN or +inf log-weight gives NaN: its weights are undefined.
"""

import math
import operator
from typing import Optional, Tuple

import torch
from torch import Tensor

from iwae_fused import _args
from iwae_fused import ops as _ops

__all__ = ["tail_length", "pareto_k", "psis_weights"]

_MIN_TAIL = 5  # loo: fewer tail draws than this cannot be fit
_PRIOR_STRENGTH = 10.0  # the prior's weight, in observations at k = 0.5 (loo's adjust_k_wip)
_GRID_BYTES = 1 << 25  # the [examples, grid, M] block of the profile likelihood


def tail_length(num_samples: int) -> int:
    """M = ceil(min(S / 5, 3 sqrt(S))), in exact integer arithmetic."""
    s = operator.index(num_samples)
    if s < 1:
        raise ValueError(f"tail_length(): num_samples must be a positive int, got {num_samples!r}")
    by_fraction = -(-s // 5)
    root = math.isqrt(9 * s)  # ceil(3 sqrt(s)) = ceil(sqrt(9 s))
    by_root = root if root * root == 9 * s else root + 1
    return min(by_fraction, by_root)


def _profile_weights(theta: Tensor, y: Tensor) -> Tensor:
    """Posterior weights of the grid: softmax over j of the profile
    log-likelihood. theta [N, G], y [N, M] -> [N, G]. The [N, G, M] products
    are formed a block of grid points at a time to bound memory."""
    n, g = theta.shape
    m = y.shape[1]
    step = max(1, _GRID_BYTES // (8 * max(1, n * m)))
    ks = []
    for j in range(0, g, step):
        ks.append(torch.log1p(-theta[:, j : j + step, None] * y[:, None, :]).mean(-1))
    k = torch.cat(ks, 1)
    loglik = m * (torch.log(-theta / k) - k - 1.0)
    return torch.softmax(loglik, -1)


def _gpd_fit(y: Tensor) -> Tuple[Tensor, Tensor]:
    """Zhang & Stephens' fit with the PSIS prior on k. y: [N, M] exceedances,
    ascending along M, with y_q > 0 and y_M > 0. Returns (k-hat, sigma), [N]."""
    m = y.shape[1]
    g = 30 + math.isqrt(m)
    j = torch.arange(1, g + 1, dtype=y.dtype, device=y.device)
    y_q = y[:, int(m / 4 + 0.5) - 1]
    theta = 1.0 / y[:, -1:] + (1.0 - torch.sqrt(g / (j - 0.5))) / (3.0 * y_q[:, None])
    theta_hat = (theta * _profile_weights(theta, y)).sum(-1)
    k = torch.log1p(-theta_hat[:, None] * y).mean(-1)
    sigma = -k / theta_hat
    k = (m * k + _PRIOR_STRENGTH * 0.5) / (m + _PRIOR_STRENGTH)
    return k, sigma


def _fit_top(top: Tensor, num_samples: int):
    """The fit from the M+1 largest log-weights. top: [L, N] float64,
    descending along dim 0, L >= M + 1 (only the first M + 1 rows are read).

    Returns (k_hat [N], sigma [N], cutoff [N] (exp(u - max)), shift [N]
    (the max, 0 where it is not finite), fitted [N] bool)."""
    m = tail_length(num_samples)
    n = top.shape[1]
    first = top[0]
    # NaN sorts above +inf in topk, so the first row sees either.
    undefined = torch.isnan(first) | (first == math.inf)
    shift = torch.where(torch.isfinite(first), first, torch.zeros_like(first))
    if m < _MIN_TAIL:
        k = torch.full((n,), math.inf, dtype=top.dtype, device=top.device)
        k = torch.where(undefined, math.nan, k)
        zeros = torch.zeros_like(k)
        return k, zeros, zeros, shift, torch.zeros_like(undefined)
    if top.shape[0] < m + 1:
        raise ValueError(
            f"pareto_k(): {num_samples} samples need their {m + 1} largest log-weights, "
            f"but only {top.shape[0]} were given"
        )
    x = (top[: m + 1] - shift).T  # [N, M+1], descending, max 0
    tail = x[:, :m].flip(1)  # ascending
    cutoff = torch.exp(x[:, m])
    y = torch.exp(tail) - cutoff[:, None]
    y_q = y[:, int(m / 4 + 0.5) - 1]
    spread = (tail[:, -1] - tail[:, 0]).abs()
    fitted = (first > -math.inf) & ~undefined & (y_q > 0) & (spread >= torch.finfo(torch.float64).eps / 100)
    # Rows that cannot be fit get harmless stand-in data (then +inf), so the
    # batched fit raises no NaN warnings and needs no data-dependent shapes.
    stand_in = torch.arange(1, m + 1, dtype=y.dtype, device=y.device) / m
    y = torch.where(fitted[:, None], y, stand_in)
    k, sigma = _gpd_fit(y)
    fitted = fitted & ~torch.isnan(k)  # loo: a NaN fit means no fit
    k = torch.where(fitted, k, math.inf)
    k = torch.where(undefined, math.nan, k)
    return k, sigma, cutoff, shift, fitted


def _log_weights(op, log_p, log_q, dim):
    """log w as float64 [S, N] with the sample dim first, and the output shape."""
    log_p, log_q = _args.operands(op, log_p, log_q)  # a number operand, as log_p - c takes it
    _args.check(op, (("dim", "op int", dim),))
    shape, d, dtype = _ops._plan(op, log_p, log_q, dim)
    log_w = log_p if log_q is None else log_p.to(dtype) - log_q.to(dtype)
    log_w = log_w.detach().to(torch.float64)  # a diagnostic: constants, no graph
    if not shape:
        return log_w.reshape(1, 1), [], 0, dtype, shape
    out_shape = shape[:d] + shape[d + 1 :]
    return torch.movedim(log_w, d, 0).reshape(shape[d], -1), out_shape, d, dtype, shape


def pareto_k(log_p: Tensor, log_q: Optional[Tensor] = None, dim: int = 0) -> Tensor:
    r"""The PSIS diagnostic k-hat per example, for the samples along ``dim``.

    Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto Smoothed Importance
    Sampling", JMLR 2024; generalized Pareto fit of Zhang & Stephens (2009)
    with the paper's weakly informative prior; Yao et al. (2018) for VI. The
    steps and every special case are in this module's docstring.

    k-hat estimates the shape of the right tail of the weights w = p/q: the
    weights have 1/k finite moments, so k-hat < 0.5 means a finite variance,
    0.5 to 0.7 a slowly converging estimate, and k-hat > 0.7 an estimate (e.g.
    iwelbo's log-likelihood) that cannot be trusted at this number of samples.

    Args:
        log_p, log_q: log-weights are ``log_p - log_q`` (broadcast, as in
            :func:`iwae_fused.iwelbo`), or ``log_p`` itself. Any float dtype;
            the fit runs in float64.
        dim: the sample dimension (S samples).

    Returns:
        k-hat, float64, the broadcast shape with ``dim`` removed. +inf where no
        tail can be fit (S <= 20, an all -inf slice, a constant tail); NaN where
        a log-weight is NaN or +inf.
    """
    log_w, out_shape, _, _, _ = _log_weights("pareto_k", log_p, log_q, dim)
    s = log_w.shape[0]
    m = tail_length(s)
    top = torch.topk(log_w, min(m + 1, s), dim=0).values
    return _fit_top(top, s)[0].reshape(out_shape)


def _gpd_quantile(p: Tensor, k: Tensor, sigma: Tensor) -> Tensor:
    """The GPD(0, sigma, k) quantile sigma ((1 - p)^-k - 1) / k; k = 0 is the
    exponential, -sigma log(1 - p)."""
    small = k.abs() < torch.finfo(k.dtype).eps
    safe_k = torch.where(small, torch.ones_like(k), k)
    general = torch.expm1(-safe_k * torch.log1p(-p)) / safe_k
    return sigma * torch.where(small, -torch.log1p(-p), general)


def psis_weights(log_p: Tensor, log_q: Optional[Tensor] = None, dim: int = 0) -> Tensor:
    r"""Pareto-smoothed normalized importance weights along ``dim``.

    As loo's psis(): the M largest weights are replaced by the fitted
    generalized Pareto quantiles exp(u) + F^{-1}((i - 1/2) / M), i = 1..M, in
    the order of the raw weights they replace, each truncated at the largest raw
    weight; then the weights are normalized to sum to 1 along ``dim``. Where
    :func:`pareto_k` is +inf (no fit) the weights are the raw normalized ones.
    Use them for self-normalized estimates (e.g. reweighted wake-sleep) in place
    of :func:`iwae_fused.normalized_weights`, and check k-hat: the smoothing
    lowers the variance but cannot rescue k-hat > 0.7.

    Returns the broadcast shape of ``log_p`` and ``log_q`` (``dim`` kept), in
    their promoted dtype, computed in float64, as constants (no gradient). An
    all -inf slice gets weights 0 (as normalized_weights); NaN stays in its
    slice.
    """
    log_w, _, d, dtype, shape = _log_weights("psis_weights", log_p, log_q, dim)
    s = log_w.shape[0]
    m = tail_length(s)
    x = log_w.clone()
    if m >= _MIN_TAIL:
        top, index = torch.topk(log_w, m + 1, dim=0)
        k, sigma, cutoff, shift, fitted = _fit_top(top, s)
        # Row r of the descending tail holds the (M - r)-th smallest tail value.
        p = (torch.arange(m, 0, -1, dtype=x.dtype, device=x.device) - 0.5) / m
        q = _gpd_quantile(p[:, None], k[None], sigma[None]) + cutoff[None]
        smoothed = torch.clamp(torch.log(q), max=0.0) + shift[None]
        raw = torch.gather(log_w, 0, index[:m])
        x.scatter_(0, index[:m], torch.where(fitted[None], smoothed, raw))
    w = torch.softmax(x, 0)
    empty = torch.amax(x, 0, keepdim=True) == -math.inf
    w = torch.where(empty, torch.zeros_like(w), w)
    if not shape:
        return w.reshape([]).to(dtype)
    moved = list(shape)
    moved.insert(0, moved.pop(d))
    return torch.movedim(w.reshape(moved), 0, d).contiguous().to(dtype)
