"""Loads the compiled extension, and says clearly when it does not fit.

An extension is tied to the torch (and CUDA) it was compiled against: loaded
under another it fails with undefined symbols, or worse, misbehaves. Check
before anything calls into it.
"""

import torch

_REBUILD = (
    "Rebuild it against the torch in this environment: "
    "`pip install --no-build-isolation --force-reinstall --no-deps .` "
    "(or `pip install --no-build-isolation -e .` from a checkout)."
)


def _load():
    try:
        from iwae_fused import _C
    except ImportError as e:
        raise ImportError(
            f"iwae_fused: the compiled extension iwae_fused._C could not be loaded "
            f"under torch {torch.__version__} ({e}). It is usually built for "
            f"another torch or CUDA version, or not built at all. {_REBUILD}"
        ) from e
    running = torch.__version__.split("+")[0]
    if _C.torch_version != running:
        raise ImportError(
            f"iwae_fused was built for torch {_C.torch_version} but torch "
            f"{running} is running. {_REBUILD}"
        )
    if _C.with_cuda and torch.version.cuda != _C.cuda_version:
        raise ImportError(
            f"iwae_fused was built with CUDA kernels for CUDA {_C.cuda_version}, but "
            f"the running torch {torch.__version__} has CUDA {torch.version.cuda}. "
            f"{_REBUILD}"
        )
    return _C


_C = _load()
