"""vmap batching rules for every op (torch.library.register_vmap).

The ops are batch-polymorphic: they reduce one sample dim of any-rank,
broadcasting inputs. So a vmapped dim becomes one more leading batch dim and
the op runs once on the whole batch, in the fused kernels, instead of once
per sample through functorch's fallback (which warns, and is slow).

Each rule moves the vmapped dims of its tensors to the front, right-aligns the
logical dims (so that log_p and log_q still broadcast as they did without
vmap), shifts ``dim`` past the new leading dim, and says where the batch dim
of each output is. These kernels only run under torch.vmap (the
FuncTorchBatched key); outside vmap they cost nothing.

Rules for the internal pieces (``_iwelbo_forward``, ``iwelbo_backward``, ...)
are there because vmap also reaches them: ``torch.autograd.grad`` under vmap
(gradcheck's batched-gradient check, ``vmap`` of a vector-Jacobian product)
runs the backward ops with batched incoming gradients.
"""

from typing import Optional, Sequence

import torch
from torch import Tensor

_LIB = "iwae_fused::"


def _logical_rank(t: Optional[Tensor], bdim: Optional[int]) -> int:
    if t is None:
        return 0
    return t.dim() - (0 if bdim is None else 1)


def _pad(in_dims, n):
    """in_dims for the first n arguments (arguments left at their defaults
    are not in in_dims)."""
    return (tuple(in_dims) + (None,) * n)[:n]


def _front(t: Optional[Tensor], bdim: Optional[int], rank: int, size: Optional[int] = None):
    """t as [batch, 1 ... 1, *logical shape] of rank 1 + rank (batch size 1 when
    t is not batched, or `size` when given: an expanded view)."""
    if t is None:
        return None
    t = t.unsqueeze(0) if bdim is None else t.movedim(bdim, 0)
    pad = rank - (t.dim() - 1)
    if pad > 0:
        t = t.reshape(t.shape[:1] + (1,) * pad + t.shape[1:])
    if size is not None and t.shape[0] != size:
        t = t.expand((size,) + t.shape[1:])
    return t


def _sample_dim(op: str, dim: int, rank: int) -> int:
    """The sample dim of the batched call (rank: the logical broadcast rank),
    with the op's IndexError for a dim out of the logical range."""
    span = max(rank, 1)
    if not -span <= dim < span:
        raise IndexError(
            f"{op}(): dim={dim} is out of range for log-weights of rank {rank} "
            f"under vmap (expected dim in [{-span}, {span - 1}])"
        )
    return 1 if rank == 0 else dim % rank + 1


def _weights_inputs(op, in_dims, log_p, log_q, dim, size=None):
    """(log_p, log_q, dim, scalar) for the batched call. A 0-dim (one-sample)
    input gets a trailing sample dim of size 1."""
    bp, bq = _pad(in_dims, 2)
    rank = max(_logical_rank(log_p, bp), _logical_rank(log_q, bq))
    d = _sample_dim(op, dim, rank)
    p = _front(log_p, bp, rank, size)
    q = _front(log_q, bq, rank)
    if rank == 0:
        p = p.unsqueeze(-1)
        q = None if q is None else q.unsqueeze(-1)
    return p, q, d, rank == 0


def _register(name):
    return torch.library.register_vmap(_LIB + name)


@_register("iwelbo")
def _iwelbo_vmap(info, in_dims, log_p, log_q=None, dim=0, keepdim=False, alpha=0.0):
    p, q, d, scalar = _weights_inputs("iwelbo", in_dims, log_p, log_q, dim)
    out = torch.ops.iwae_fused.iwelbo(p, q, d, keepdim and not scalar, alpha)
    return out, 0


@_register("normalized_weights")
def _normalized_weights_vmap(info, in_dims, log_p, log_q=None, dim=0):
    p, q, d, scalar = _weights_inputs("normalized_weights", in_dims, log_p, log_q, dim)
    out = torch.ops.iwae_fused.normalized_weights(p, q, d)
    return (out.squeeze(-1) if scalar else out), 0


@_register("weight_diagnostics")
def _weight_diagnostics_vmap(info, in_dims, log_p, log_q=None, dim=0):
    p, q, d, _ = _weights_inputs("weight_diagnostics", in_dims, log_p, log_q, dim)
    ess, top = torch.ops.iwae_fused.weight_diagnostics(p, q, d)
    return (ess, top), (0, 0)


@_register("logsumexp_stats")
def _logsumexp_stats_vmap(info, in_dims, log_p, log_q=None, dim=0):
    p, q, d, _ = _weights_inputs("iwelbo_state", in_dims, log_p, log_q, dim)
    # [2, batch, *bound shape]: the batch dim is the stats' second.
    return torch.ops.iwae_fused.logsumexp_stats(p, q, d), 1


@_register("_iwelbo_forward")
def _iwelbo_forward_vmap(info, in_dims, log_p, log_q, dim, keepdim, alpha=0.0):
    p, q, d, scalar = _weights_inputs("iwelbo", in_dims, log_p, log_q, dim)
    out, stats = torch.ops.iwae_fused._iwelbo_forward(p, q, d, keepdim and not scalar, alpha)
    return (out, stats), (0, 1)


@_register("vimco")
def _vimco_vmap(info, in_dims, log_p, log_q, dim=0, keepdim=False):
    p, q, d, scalar = _weights_inputs("vimco", in_dims, log_p, log_q, dim)
    return torch.ops.iwae_fused.vimco(p, q, d, keepdim and not scalar), 0


@_register("_vimco_forward")
def _vimco_forward_vmap(info, in_dims, log_p, log_q, dim, keepdim):
    p, q, d, scalar = _weights_inputs("vimco", in_dims, log_p, log_q, dim)
    out, state = torch.ops.iwae_fused._vimco_forward(p, q, d, keepdim and not scalar)
    return (out, state), (0, 1)


@_register("dreg")
def _dreg_vmap(info, in_dims, log_p, log_q, z, dim=0, z_weight="dreg"):
    p, q, d, _ = _weights_inputs("dreg", in_dims, log_p, log_q, dim)
    # z is read only by the backward, as the target of a vector-Jacobian
    # product through log_p's and log_q's graphs; with gradients recorded
    # outside vmap, those graphs reach the physical z itself, not a view of
    # it made here (the product with respect to a new view is zero), so z
    # goes as it is, batch dim wherever it is.
    return torch.ops.iwae_fused.dreg(p, q, z, d, z_weight), 0


def _backward_inputs(op, info, in_dims, grad, state, log_p, log_q, dim, keepdim):
    """Everything batched with the full batch size at the front: the incoming
    gradient and the saved state are often batched when the inputs are not
    (vmap over grad_outputs), and the kernels need them to agree."""
    n = info.batch_size
    bg, bs = _pad(in_dims, 2)
    p, q, d, scalar = _weights_inputs(op, in_dims[2:], log_p, log_q, dim, size=n)
    g = _front(grad, bg, _logical_rank(grad, bg), n)
    if scalar:
        g = g.reshape(n)
    # state: [S, *reduced] -> [S, batch, *reduced]; iwelbo's [0] (stats not
    # saved: the backward recomputes them) stays as it is.
    if bs is None and state.dim() == 1 and state.shape[0] == 0:
        return g, state, p, q, d, keepdim and not scalar, scalar
    s = state.unsqueeze(1) if bs is None else state.movedim(bs, 1)
    if s.shape[1] != n:
        s = s.expand((s.shape[0], n) + s.shape[2:])
    return g, s, p, q, d, keepdim and not scalar, scalar


def _backward_outputs(outs: Sequence[Tensor], mask, scalar):
    res, dims = [], []
    for out, on in zip(outs, mask):
        if on:
            res.append(out.squeeze(-1) if scalar else out)
            dims.append(0)
        else:
            res.append(out)  # the empty placeholder, not batched
            dims.append(None)
    return tuple(res), tuple(dims)


@_register("iwelbo_backward")
def _iwelbo_backward_vmap(info, in_dims, grad, stats, log_p, log_q, dim, keepdim, alpha, output_mask):
    g, s, p, q, d, kd, scalar = _backward_inputs(
        "iwelbo_backward", info, in_dims, grad, stats, log_p, log_q, dim, keepdim)
    outs = torch.ops.iwae_fused.iwelbo_backward(g, s, p, q, d, kd, alpha, output_mask)
    return _backward_outputs(outs, output_mask, scalar)


@_register("vimco_backward")
def _vimco_backward_vmap(info, in_dims, grad, state, log_p, log_q, dim, keepdim, output_mask):
    g, s, p, q, d, kd, scalar = _backward_inputs(
        "vimco_backward", info, in_dims, grad, state, log_p, log_q, dim, keepdim)
    outs = torch.ops.iwae_fused.vimco_backward(g, s, p, q, d, kd, output_mask)
    return _backward_outputs(outs, output_mask, scalar)


@_register("dreg_backward")
def _dreg_backward_vmap(info, in_dims, grad, stats, log_p, log_q, dim, z_weight):
    g, s, p, q, d, _, scalar = _backward_inputs(
        "dreg_backward", info, in_dims, grad, stats, log_p, log_q, dim, False)
    outs = torch.ops.iwae_fused.dreg_backward(g, s, p, q, d, z_weight)
    return _backward_outputs(outs, (True, True), scalar)
