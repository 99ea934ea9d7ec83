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
from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from iwae_fused import ops as _ops  # noqa: F401  (registers the fakes)
from iwae_fused import psis as _psis

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
    """Per-example state of the bound over `count` samples.

    shift:   [*batch] float64, the largest log-weight seen (0 where none is
             finite: an empty or +inf slice).
    log_sum: [*batch] float64, log sum_k exp(log w_k - shift); -inf where every
             log-weight was -inf (the identity of merge()).
    count:   the number of samples K so far (the same for every example).
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


def iwelbo_state(log_p: Tensor, log_q: Optional[Tensor] = None, dim: int = 0) -> IwelboState:
    """The mergeable state of the bound over the samples along `dim`, from the
    same fused kernel as iwelbo (arguments, broadcasting and errors as there).

    ``iwelbo_state(a).merge(iwelbo_state(b)).finalize()`` equals
    ``iwelbo(torch.cat([a, b]))`` to float rounding.
    """
    stats = _logsumexp_stats(log_p, log_q, dim).double()  # checks the arguments
    shape = log_p.shape if log_q is None else torch.broadcast_shapes(log_p.shape, log_q.shape)
    K = shape[dim] if len(shape) else 1
    return IwelboState(stats[0], stats[1], int(K))


@dataclass(frozen=True)
class TopState:
    """The `size` largest log-weights per example among the samples seen.

    values: [min(size, count), *batch] float64, descending along dim 0 (NaN
            sorts first, as in torch.topk).
    size:   how many to keep; PSIS needs tail_length(S) + 1 for S samples.
    count:  the number of samples seen (the same for every example).

    The top `size` of a union is the top `size` of the two top sets, so merge()
    is exact: associative and commutative, as the values it keeps are the same
    numbers, not rounded sums. Memory is `size` values per example.
    """

    values: Tensor
    size: int
    count: int

    @staticmethod
    def of(log_w: Tensor, size: int) -> "TopState":
        """The state of log-weights [n, *batch] (sample dim 0)."""
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"TopState.of(): size must be a positive int, got {size!r}")
        n = log_w.shape[0]
        values = torch.topk(log_w.to(torch.float64), min(size, n), dim=0).values
        return TopState(values, size, n)

    def merge(self, other: "TopState") -> "TopState":
        """The state of both chunks' samples, exactly."""
        if self.size != other.size or self.values.shape[1:] != other.values.shape[1:]:
            raise ValueError(
                f"TopState.merge(): states of size {self.size}, batch shape "
                f"{list(self.values.shape[1:])} and size {other.size}, batch shape "
                f"{list(other.values.shape[1:])} cannot be merged"
            )
        both = torch.cat([self.values, other.values])
        keep = min(self.size, both.shape[0])
        return TopState(torch.topk(both, keep, dim=0).values, self.size, self.count + other.count)

    def all_gather(self, group=None) -> "TopState":
        """Merge this state across the ranks of `group` (torch.distributed).

        Each rank pads its values to `size` rows with -inf (so all ranks send
        the same shape) and gathers everyone's; the padding can only enter the
        kept rows where fewer than `size` samples exceed -inf, and then it is
        the same number as the real -inf samples it stands beside. Every rank
        gets the state of all ranks' samples."""
        import torch.distributed as dist

        pad = self.size - self.values.shape[0]
        mine = self.values
        if pad:
            filler = mine.new_full((pad, *mine.shape[1:]), -math.inf)
            mine = torch.cat([mine, filler])
        mine = mine.contiguous()
        parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, mine, group=group)
        count = torch.tensor([self.count], dtype=torch.int64, device=mine.device)
        dist.all_reduce(count, op=dist.ReduceOp.SUM, group=group)
        total = int(count.item())
        values = torch.topk(torch.cat(parts), min(self.size, total), dim=0).values
        return TopState(values, self.size, total)

    def pareto_k(self) -> Tensor:
        """PSIS k-hat [*batch] over the `count` samples (see iwae_fused.pareto_k)."""
        need = _psis.tail_length(max(self.count, 1)) + 1
        if self.count < 1:
            raise ValueError("TopState.pareto_k(): the state holds no samples")
        if need > self.size and self.count >= need:
            raise ValueError(
                f"TopState.pareto_k(): {self.count} samples need their {need} largest "
                f"log-weights, but the state keeps {self.size}"
            )
        batch = self.values.shape[1:]
        k = _psis._fit_top(self.values.reshape(self.values.shape[0], -1), self.count)[0]
        return k.reshape(batch)


class LogLikelihoodEstimate(NamedTuple):
    """What estimate_log_likelihood(..., diagnostics=True) returns; each field
    is [*batch] float64, over all num_samples samples (and all ranks).

    log_likelihood: the estimate L_K, as returned without diagnostics.
    ess:            the effective sample size (sum w)^2 / sum w^2, 1..K (0 for
                    an all -inf slice), as iwae_fused.weight_diagnostics.
    max_weight:     the largest normalized weight, 1/K..1 (0 for all -inf).
    pareto_k:       the PSIS k-hat, as iwae_fused.pareto_k; above 0.7 the
                    estimate is unreliable.
    """

    log_likelihood: Tensor
    ess: Tensor
    max_weight: Tensor
    pareto_k: Tensor


def _weight_summary(state: IwelboState, squares: IwelboState, top: TopState):
    """(ess, max_weight) from the states of w and w^2 and the largest log w."""
    log_sum = state.shift + state.log_sum
    ess = torch.exp(2.0 * log_sum - (squares.shift + squares.log_sum))
    max_weight = torch.exp(top.values[0] - log_sum)
    empty = log_sum == -math.inf
    zero = torch.zeros_like(ess)
    return torch.where(empty, zero, ess), torch.where(empty, zero, max_weight)


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
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(
            f"estimate_log_likelihood(): num_samples must be a positive int, got {num_samples!r}"
        )
    if chunk_size is None:
        chunk_size = num_samples
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(
            f"estimate_log_likelihood(): chunk_size must be a positive int, got {chunk_size!r}"
        )
    local = _share(num_samples, group)
    bar = _progress_bar(local, progress, group)
    if not isinstance(diagnostics, bool):
        raise TypeError(
            f"estimate_log_likelihood(): diagnostics must be a bool, got {diagnostics!r}"
        )
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
    ess, max_weight = _weight_summary(state, squares, top)
    return LogLikelihoodEstimate(state.finalize(), ess, max_weight, top.pareto_k())
