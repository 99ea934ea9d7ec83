"""Log-likelihood estimation with many importance samples, chunk by chunk and
across processes, exactly.

Burda et al. (2016) estimate test log-likelihoods with K = 5000 samples per
data point; with real models the [K, B] log-weights (and the activations
behind them) do not fit at once. The bound over K samples is

    L_K = log (1/K) sum_k w_k = shift + log sum_k exp(log w_k - shift) - log K,

and the pair (shift, log-sum) of a chunk of samples is a mergeable state:
two chunks combine exactly, in any order, and an all -inf chunk changes
nothing. So K can be split into chunks, or across ranks, and the result is
the one-shot iwelbo up to float rounding.

With diagnostics=True the estimate comes with the effective sample size, the
largest normalized weight and the PSIS k-hat over all samples. They need the
state of the squared weights (another IwelboState, of 2 log w) and the M + 1
largest log-weights per example (TopState): the union of two chunks' top sets
holds the top set of both, so that state merges exactly too, and across
processes by an all-gather.
"""

import math
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from iwae_fused import _args
from iwae_fused import ops as _ops  # noqa: F401  (registers the fakes)
from iwae_fused import psis as _psis
from iwae_fused.stream_diagnostics import LogLikelihoodEstimate, TopState, weight_summary

__all__ = [
    "IwelboState",
    "iwelbo_state",
    "TopState",
    "LogLikelihoodEstimate",
    "estimate_log_likelihood",
]

_logsumexp_stats = torch.ops.iwae_fused.logsumexp_stats.default


@dataclass(frozen=True)
class IwelboState:
    """Per-example state of the bound over ``count`` samples.

    Attributes:
        shift: ``[*batch]`` float64, the largest log-weight seen (0 where none
            is finite: an empty or +inf slice).
        log_sum: ``[*batch]`` float64, log sum_k exp(log w_k - shift); -inf
            where every log-weight was -inf (the identity of merge()).
        count: the number of samples K so far (the same for every example).
    """

    shift: Tensor
    log_sum: Tensor
    count: int

    @staticmethod
    def empty(batch_shape, device=None) -> "IwelboState":
        """The identity of merge(): no samples."""
        zeros = torch.zeros(batch_shape, dtype=torch.float64, device=device)
        return IwelboState(zeros, torch.full_like(zeros, -math.inf), 0)

    def _max(self) -> Tensor:
        # The shift of a slice that holds samples; -inf for an empty one, so
        # it never raises the shift of a merge.
        return torch.where(self.log_sum == -math.inf, -math.inf, self.shift)

    def merge(self, other: "IwelboState") -> "IwelboState":
        """The state of both chunks' samples. Associative and commutative up
        to rounding; an empty (all -inf) chunk is the identity."""
        if not isinstance(other, IwelboState):
            raise TypeError(
                f"IwelboState.merge(): expected other to be an IwelboState, but got "
                f"{_args.describe(other)}")
        if self.shift.shape != other.shift.shape:
            raise ValueError(
                f"IwelboState.merge(): states of batch shape {list(self.shift.shape)} and "
                f"{list(other.shift.shape)} cannot be merged"
            )
        top = torch.maximum(self._max(), other._max())
        top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
        log_sum = torch.logaddexp(
            self.log_sum + (self.shift - top), other.log_sum + (other.shift - top)
        )
        return IwelboState(top, log_sum, self.count + other.count)

    def all_reduce(self, group=None) -> "IwelboState":
        """Merge this state across the ranks of `group` (torch.distributed):
        an all-reduce of the max, then of the rescaled sums. Every rank gets
        the state of all ranks' samples."""
        import torch.distributed as dist

        top = self._max().clone()
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
        total = torch.exp(self.log_sum + (self.shift - top))
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        count = torch.tensor([self.count], dtype=torch.int64, device=top.device)
        dist.all_reduce(count, op=dist.ReduceOp.SUM, group=group)
        return IwelboState(top, torch.log(total), int(count.item()))

    def finalize(self) -> Tensor:
        """The bound log((1/K) sum_k w_k) per example, float64."""
        if self.count < 1:
            raise ValueError("IwelboState.finalize(): the state holds no samples")
        return self.shift + (self.log_sum - math.log(self.count))


def iwelbo_state(
    log_p: Union[Tensor, float], log_q: Union[Tensor, float, None] = None, dim: int = 0
) -> IwelboState:
    """The mergeable state of the bound over the samples along `dim`, from the
    same fused kernel as iwelbo (arguments, broadcasting and errors as there).

    ``iwelbo_state(a).merge(iwelbo_state(b)).finalize()`` equals
    ``iwelbo(torch.cat([a, b]))`` to float rounding. ``log_q`` (or ``log_p``)
    may be a Python number, taken as ``log_p - log_q`` takes it.
    """
    # Not a per-step call: the types are checked and numbers converted first.
    log_p, log_q = _args.operands("iwelbo_state", log_p, log_q)
    _args.check("iwelbo_state", (("dim", "op int", dim),))
    stats = _logsumexp_stats(log_p, log_q, dim).double()  # checks the rest
    shape = log_p.shape if log_q is None else torch.broadcast_shapes(log_p.shape, log_q.shape)
    K = shape[dim] if len(shape) else 1
    return IwelboState(stats[0], stats[1], int(K))


def _share(num_samples: int, group) -> int:
    """This rank's share of the samples (the first ranks take the remainder)."""
    if group is None:
        return num_samples
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "estimate_log_likelihood(): a group was given but torch.distributed is "
            "not initialized (call torch.distributed.init_process_group first)"
        )
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if num_samples < world:
        raise ValueError(
            f"estimate_log_likelihood(): num_samples={num_samples} is fewer than the "
            f"{world} ranks of the group; every rank needs at least one sample"
        )
    return num_samples // world + (1 if rank < num_samples % world else 0)


def _progress_bar(total: int, progress: Optional[bool], group):
    if progress is False:
        return None
    if group is not None:
        import torch.distributed as dist

        if dist.get_rank(group) != 0:
            return None
    if progress is None and not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    # Auto mode shows the bar only once a run has lasted two seconds.
    return tqdm(total=total, unit="sample", desc="log-likelihood",
                delay=0.0 if progress else 2.0, leave=False)


def estimate_log_likelihood(
    log_weight_fn: Callable[[int], Tensor],
    num_samples: int,
    chunk_size: Optional[int] = None,
    progress: Optional[bool] = None,
    group=None,
    diagnostics: bool = False,
) -> Union[Tensor, LogLikelihoodEstimate]:
    """Estimate log p(x) per example with `num_samples` importance samples.

    Args:
        log_weight_fn: ``log_weight_fn(n)`` returns log-weights ``[n, *batch]``
            (log p(x, z) - log q(z | x) for n fresh samples z ~ q(z | x); sample
            dim 0). Called under ``torch.no_grad()`` with n <= chunk_size.
        num_samples: K, the total number of samples (Burda et al. use 5000).
        chunk_size: the most samples drawn at once (default: all); memory is
            bounded by one chunk. The last chunk may be smaller.
        progress: a tqdm bar: None shows one on runs longer than two seconds
            when stderr is a terminal, True always, False never.
        group: a torch.distributed process group (e.g.
            ``torch.distributed.group.WORLD``) to split the samples across its
            ranks; states merge by all-reduce, so every rank returns the
            estimate of all num_samples samples. None: this process only.
        diagnostics: also return the weight diagnostics over all num_samples
            samples: ESS, the largest normalized weight and the PSIS k-hat
            (Vehtari et al. 2024; see iwae_fused.pareto_k). Memory grows by the
            M + 1 = tail_length(num_samples) + 1 largest log-weights per example
            (214 for K = 5000); the results equal those of weight_diagnostics
            and pareto_k on all samples at once (k-hat exactly, ESS to rounding).

    Returns:
        The estimate L_K = log((1/K) sum_k w_k), ``[*batch]`` float64. By
        Jensen's inequality E[L_K] <= log p(x), and L_K rises to log p(x) as
        K grows (Burda et al. 2016, Theorem 1). With diagnostics=True, a
        :class:`LogLikelihoodEstimate` named tuple ``(log_likelihood, ess,
        max_weight, pareto_k)`` instead; the default return is unchanged.
    """
    op = "estimate_log_likelihood"
    if not callable(log_weight_fn):
        raise TypeError(f"{op}(): expected log_weight_fn to be callable (n -> log-weights "
                        f"[n, *batch]), but got {_args.describe(log_weight_fn)}")
    _args.check(op, (("num_samples", "int", num_samples),
                     ("chunk_size", "optional int", chunk_size),
                     ("progress", "optional bool", progress),
                     ("diagnostics", "bool", diagnostics)))
    if num_samples < 1:
        raise ValueError(f"{op}(): num_samples must be a positive int, got {num_samples!r}")
    if chunk_size is None:
        chunk_size = num_samples
    if chunk_size < 1:
        raise ValueError(f"{op}(): chunk_size must be a positive int, got {chunk_size!r}")
    num_samples, chunk_size = int(num_samples), int(chunk_size)
    local = _share(num_samples, group)
    bar = _progress_bar(local, progress, group)
    keep = _psis.tail_length(num_samples) + 1
    state = squares = top = None
    done = 0
    try:
        with torch.no_grad():
            while done < local:
                n = min(chunk_size, local - done)
                log_w = log_weight_fn(n)
                if not isinstance(log_w, Tensor) or log_w.dim() < 1 or log_w.shape[0] != n:
                    got = tuple(log_w.shape) if isinstance(log_w, Tensor) else type(log_w).__name__
                    raise ValueError(
                        f"estimate_log_likelihood(): log_weight_fn({n}) must return "
                        f"log-weights of shape [{n}, *batch], but returned {got}"
                    )
                chunk = iwelbo_state(log_w, dim=0)
                state = chunk if state is None else state.merge(chunk)
                if diagnostics:
                    # w^2 = exp(2 log w): doubling is exact in floating point.
                    sq = iwelbo_state(2.0 * log_w, dim=0)
                    squares = sq if squares is None else squares.merge(sq)
                    t = TopState.of(log_w, keep)
                    top = t if top is None else top.merge(t)
                done += n
                if bar is not None:
                    bar.update(n)
    finally:
        if bar is not None:
            bar.close()
    if group is not None:
        state = state.all_reduce(group)
        if diagnostics:
            squares = squares.all_reduce(group)
            top = top.all_gather(group)
    if not diagnostics:
        return state.finalize()
    ess, max_weight = weight_summary(state, squares, top)
    return LogLikelihoodEstimate(state.finalize(), ess, max_weight, top.pareto_k())
