"""Streamed weight diagnostics: a mergeable state of the largest log-weights
(for PSIS k-hat), and what estimate_log_likelihood(..., diagnostics=True)
returns.

k-hat needs only the M + 1 largest log-weights of an example (iwae_fused.psis),
and the M + 1 largest of a union of chunks are among the M + 1 largest of each
chunk, so keeping them is a state that merges exactly, in any order and across
processes; ESS and the largest weight come from the IwelboStates of w and w^2.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from iwae_fused import psis as _psis

__all__ = ["TopState", "LogLikelihoodEstimate", "weight_summary"]


@dataclass(frozen=True)
class TopState:
    """The ``size`` largest log-weights per example among the samples seen.

    Attributes:
        values: ``[min(size, count), *batch]`` float64, descending along dim 0
            (NaN sorts first, as in torch.topk).
        size: how many to keep; PSIS needs tail_length(S) + 1 for S samples.
        count: the number of samples seen (the same for every example).

    The top ``size`` of a union is the top ``size`` of the two top sets, so
    merge() is exact: associative and commutative, as the values it keeps are
    the same numbers, not rounded sums. Memory is ``size`` values per example.
    """

    values: Tensor
    size: int
    count: int

    @staticmethod
    def of(log_w: Tensor, size: int) -> "TopState":
        """The state of log-weights ``[n, *batch]`` (sample dim 0)."""
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
        """PSIS k-hat ``[*batch]`` over the ``count`` samples (see iwae_fused.pareto_k)."""
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
    is ``[*batch]`` float64, over all num_samples samples (and all ranks).

    Attributes:
        log_likelihood: the estimate L_K, as returned without diagnostics.
        ess: the effective sample size (sum w)^2 / sum w^2, 1..K (0 for an all
            -inf slice), as iwae_fused.weight_diagnostics.
        max_weight: the largest normalized weight, 1/K..1 (0 for all -inf).
        pareto_k: the PSIS k-hat, as iwae_fused.pareto_k; above 0.7 the
            estimate is unreliable.
    """

    log_likelihood: Tensor
    ess: Tensor
    max_weight: Tensor
    pareto_k: Tensor


def weight_summary(state, squares, top: TopState):
    """(ess, max_weight) [*batch] from the IwelboStates of log w and 2 log w
    and the TopState (its first row is the largest log w):
    ESS = (sum w)^2 / sum w^2 and max w / sum w, 0 and 0 where every weight is 0."""
    log_sum = state.shift + state.log_sum
    ess = torch.exp(2.0 * log_sum - (squares.shift + squares.log_sum))
    max_weight = torch.exp(top.values[0] - log_sum)
    empty = log_sum == -math.inf
    zero = torch.zeros_like(ess)
    return torch.where(empty, zero, ess), torch.where(empty, zero, max_weight)
