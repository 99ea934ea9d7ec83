"""Pure-PyTorch definitions of every op: the ground truth for tests and
benchmarks. Same signatures as the fused ops; never imported by them.

Where the fused ops define a case that plain PyTorch leaves to NaN (an all
-inf slice in normalized_weights), the definition here says the same in
PyTorch ops, so the two can be compared on any input.
"""

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "log_weights",
    "iwelbo",
    "normalized_weights",
    "effective_sample_size",
    "weight_diagnostics",
    "vimco",
    "vimco_signals",
    "dreg",
]


def log_weights(log_p: Tensor, log_q: Optional[Tensor] = None) -> Tensor:
    """log w = log p - log q (broadcast, promoted), or log_p itself."""
    return log_p if log_q is None else log_p - log_q


def _num_samples(log_w: Tensor, dim: int) -> int:
    return log_w.shape[dim] if log_w.dim() > 0 else 1


def iwelbo(
    log_p: Tensor,
    log_q: Optional[Tensor] = None,
    dim: int = 0,
    keepdim: bool = False,
    alpha: float = 0.0,
) -> Tensor:
    """log((1/K) sum_k exp(log w_k)) along dim: the eager expression users write.

    With alpha, the Renyi bound (1/(1-alpha)) [logsumexp((1-alpha) log w) - log K]
    (Li & Turner 2016); alpha = 1 is the ELBO, mean(log w).
    """
    log_w = log_weights(log_p, log_q)
    K = _num_samples(log_w, dim)
    if alpha == 1.0:
        return log_w.mean(dim, keepdim=keepdim) if log_w.dim() else log_w.clone()
    beta = 1.0 - alpha
    return (torch.logsumexp(beta * log_w, dim, keepdim=keepdim) - math.log(K)) / beta


def normalized_weights(log_p: Tensor, log_q: Optional[Tensor] = None, dim: int = 0) -> Tensor:
    """softmax(log w, dim), with weight 0 for slices that are all -inf."""
    log_w = log_weights(log_p, log_q)
    w = torch.softmax(log_w, dim)
    empty = torch.amax(log_w, dim, keepdim=True) == -math.inf
    return torch.where(empty, torch.zeros_like(w), w).contiguous()


def weight_diagnostics(log_p: Tensor, log_q: Optional[Tensor] = None, dim: int = 0):
    """(1 / sum w~^2, max w~) along dim; (0, 0) for slices that are all -inf."""
    w = normalized_weights(log_p, log_q, dim)
    if w.dim() == 0:
        return w.clone(), w.clone()
    sq = (w * w).sum(dim)
    ess = torch.where(sq == 0, torch.zeros_like(sq), 1.0 / sq)
    return ess, w.amax(dim)


def effective_sample_size(log_p: Tensor, log_q: Optional[Tensor] = None, dim: int = 0) -> Tensor:
    return weight_diagnostics(log_p, log_q, dim)[0]


def vimco_signals(log_p: Tensor, log_q: Tensor, dim: int = 0) -> Tensor:
    """``L - L_-j`` for every sample j, the O(K^2) way: ``L_-j`` is the bound
    with log w_j replaced by the mean of the other log-weights (Mnih & Rezende
    2016)."""
    log_w = torch.movedim(log_weights(log_p, log_q), dim, 0)
    K = log_w.shape[0]
    bound = torch.logsumexp(log_w, 0) - math.log(K)
    out = []
    for j in range(K):
        others = torch.cat([log_w[:j], log_w[j + 1 :]])
        swapped = torch.cat([log_w[:j], others.mean(0, keepdim=True), log_w[j + 1 :]])
        out.append(bound - (torch.logsumexp(swapped, 0) - math.log(K)))
    return torch.movedim(torch.stack(out), 0, dim)


def vimco(log_p: Tensor, log_q: Tensor, dim: int = 0, keepdim: bool = False) -> Tensor:
    """The IWAE bound whose gradient is VIMCO's: w on log_p, ``(L - L_-j) - w_j``
    on log_q (a surrogate that adds the leave-one-out signal as a constant times
    log_q, whose value is 0)."""
    bound = iwelbo(log_p, log_q, dim, keepdim)
    signal = vimco_signals(log_p.detach(), log_q.detach(), dim)
    extra = (signal * (log_q - log_q.detach())).sum(dim, keepdim=keepdim)
    return bound + extra


class _Dreg(torch.autograd.Function):
    """IWAE value; backward: g w to log_p, -g w to log_q, and the z-path
    correction g (t(w) - w) d log w / dz (Tucker et al. 2018)."""

    @staticmethod
    def forward(ctx, log_p, log_q, z, dim, z_weight):
        ctx.save_for_backward(log_p, log_q, z)
        ctx.dim, ctx.z_weight = dim, z_weight
        return iwelbo(log_p.detach(), log_q.detach(), dim)

    @staticmethod
    def backward(ctx, g):
        log_p, log_q, z = ctx.saved_tensors
        w = torch.softmax(log_p.detach() - log_q.detach(), ctx.dim)
        gw = g.unsqueeze(ctx.dim) * w
        target = {"dreg": w * w, "rws": w - w * w, "stl": w}[ctx.z_weight]
        corr = g.unsqueeze(ctx.dim) * (target - w)
        gz = None
        if z.requires_grad:
            with torch.enable_grad():
                (gz,) = torch.autograd.grad(
                    [log_p, log_q], [z], [corr, -corr], retain_graph=True, allow_unused=True
                )
        return gw, -gw, gz, None, None


def dreg(log_p: Tensor, log_q: Tensor, z: Tensor, dim: int = 0, z_weight: str = "dreg") -> Tensor:
    """The IWAE bound with DReG's gradients (see iwae_fused.dreg)."""
    return _Dreg.apply(log_p, log_q, z, dim, z_weight)
