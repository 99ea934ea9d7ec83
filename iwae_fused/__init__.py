"""iwae_fused: fused, dispatcher-registered importance-weighted bounds.

    bound = iwae_fused.iwelbo(log_p, log_q, dim=0)    # [K, B] -> [B]
    loss = -bound.mean()

Every op is a registered torch operator (torch.ops.iwae_fused.*) with CPU
kernels, C++ autograd and fake implementations, so it runs eagerly, on meta
tensors and under torch.compile. Pure-PyTorch definitions of the same ops are
in iwae_fused.reference (imported on demand; the ops never use it).
"""

from iwae_fused._build import _C
from iwae_fused.evaluation import (
    IwelboState,
    LogLikelihoodEstimate,
    TopState,
    estimate_log_likelihood,
    iwelbo_state,
)
from iwae_fused.memory import cache_stats, empty_cache
from iwae_fused.ops import (
    dreg,
    effective_sample_size,
    iwelbo,
    normalized_weights,
    vimco,
    weight_diagnostics,
)
from iwae_fused.psis import pareto_k, psis_weights, tail_length

__all__ = [
    "iwelbo",
    "normalized_weights",
    "effective_sample_size",
    "weight_diagnostics",
    "vimco",
    "dreg",
    "iwelbo_state",
    "IwelboState",
    "estimate_log_likelihood",
    "LogLikelihoodEstimate",
    "TopState",
    "pareto_k",
    "psis_weights",
    "tail_length",
    "empty_cache",
    "cache_stats",
]


def _installed_version():
    # The installed distribution's version, local tag included (0.1.0+pt213cpu
    # names the torch and CUDA the build is tied to), as pip reports it.
    from importlib import metadata

    try:
        return metadata.version("iwae_fused")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0.1.0"


__version__ = _installed_version()


def __getattr__(name):
    # `iwae_fused.reference` on demand, so importing the ops never loads it.
    if name == "reference":
        import importlib

        return importlib.import_module("iwae_fused.reference")
    raise AttributeError(f"module 'iwae_fused' has no attribute {name!r}")
