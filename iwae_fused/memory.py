"""The CPU output cache: where the CPU kernels' large outputs come from.

A training step allocates fresh gradients every step. torch's CPU allocator
returns a large freed block to the operating system, which then faults in and
zeroes a fresh one on the next step before any kernel writes it: on the
machines measured that costs about as much as the backward itself (an
``[8, 2**20]`` float32 step on a 2-core machine: 6.5 ms with fresh
gradients, 4.0 ms from the cache; ``benchmarks/cache_step.py``). So, as the
CUDA caching allocator does on GPUs, iwae_fused keeps the CPU blocks of 1 MB
and more that held its outputs (the gradients of ``iwelbo``, ``dreg`` and
``vimco``, their bounds and the statistics they save for the backward,
``normalized_weights``) when their tensors are freed, and hands them out
again for the same size. Every element of such a block is overwritten by the
kernel that receives it, so no old value can leak.

The free blocks are bounded: at most 1 GiB by default, the oldest released
first. Set the environment variable ``IWAE_FUSED_CPU_CACHE_MB`` before the
first backward to change the budget (``0`` turns the cache off). Memory held
by live tensors is not counted against it and is never touched.

Where a backward's operands and gradients together exceed half the CPU's
last-level cache, its float32 and float64 gradients are written with
non-temporal stores, which skip reading each line into the cache first: such
a gradient would mostly be evicted before the next operation read it anyway
(the cache holds more than this one call), and the backward moves a third
less memory in either call form. The
cache size is what the C library reports (L3, else L2, else 32 MiB); set
``IWAE_FUSED_LLC_BYTES`` (bytes) before import to override it, say on a
virtual machine that reports its host's whole cache; ``0`` streams every
such gradient. ``iwae_fused._C.last_level_cache_bytes()`` gives the size in
use.
"""

from iwae_fused._build import _C

# Reads IWAE_FUSED_CPU_CACHE_MB and IWAE_FUSED_LLC_BYTES now, so a bad value
# fails at import, naming it.
_C.cache_stats()
_C.last_level_cache_bytes()


def empty_cache():
    """Return the CPU output cache's free blocks to the system.

    Blocks held by live tensors stay theirs. Call it after training, before
    memory-hungry work that does not call iwae_fused's backward, as you would
    ``torch.cuda.empty_cache()``.
    """
    _C.empty_cache()


def cache_stats():
    """The CPU output cache's state, as a dict.

    Keys: ``budget_bytes`` (free blocks kept at most), ``cached_bytes`` (free
    blocks kept now), ``live_bytes`` (cache-made blocks held by tensors now),
    ``hits`` and ``misses`` (allocations served from a free block, and those
    that took new memory, since the process started).
    """
    return dict(_C.cache_stats())
