"""Loads the compiled extension, and says clearly when it does not fit.

An extension is tied to the torch (and CUDA) it was compiled against: loaded
under another it fails with undefined symbols, or worse, misbehaves. Check
before anything calls into it, and name both versions and the fix.
"""

import re

import torch

_FIXES = (
    "Fix it in one of these ways: install the iwae_fused wheel built for torch {running} "
    "(its version ends in +{tag}; with a find-links index of wheels: "
    "`pip install --force-reinstall --no-deps iwae_fused -f <index>`); or install the torch "
    "this build was made for{want}; or build iwae_fused against the torch in this environment "
    "(`pip install --no-build-isolation --force-reinstall --no-deps iwae_fused`, or "
    "`pip install --no-build-isolation -e .` from a checkout)."
)


def running_tag(version, cuda):
    """The local version tag of a build for torch `version` with CUDA `cuda`
    (None: a CPU-only torch), e.g. 'pt215cu130', 'pt213cpu'."""
    major, minor = version.split("+")[0].split(".")[:2]
    return f"pt{major}{minor}" + ("cu" + cuda.replace(".", "") if cuda else "cpu")


def _fixes(running, running_cuda, want):
    return _FIXES.format(running=running, tag=running_tag(running, running_cuda),
                         want=f" (`pip install torch=={want}`)" if want else "")


def built_for(package_version, pinned_torch=None):
    """What an installed iwae_fused says it was built for, from its version's
    local tag ('0.1.0+pt215cu130' -> 'torch 2.15 with CUDA 13.0'), with the
    exact torch a release wheel requires when given ('2.15.0'); None when the
    version has no such tag (a checkout that was never installed)."""
    m = re.fullmatch(r"[^+]*\+pt(\d)(\d+)(?:cu(\d+?)(\d)|cpu)", package_version or "")
    if not m:
        return None
    text = f"torch {pinned_torch or m.group(1) + '.' + m.group(2)}"
    return text + (f" with CUDA {m.group(3)}.{m.group(4)}" if m.group(3) else " (CPU only)")


def mismatch(ext_torch, ext_cuda, with_cuda, running, running_cuda):
    """The ImportError message for an extension built for torch `ext_torch`
    (CUDA `ext_cuda` when `with_cuda`) loaded under torch `running` (CUDA
    `running_cuda`, None for a CPU-only torch); None when they fit."""
    base = running.split("+")[0]
    if ext_torch != base:
        return (f"iwae_fused was built for torch {ext_torch} but torch {running} is running; "
                "a build works only with the torch it was compiled against. "
                + _fixes(running, running_cuda, ext_torch))
    if with_cuda and running_cuda != ext_cuda:
        return (f"iwae_fused was built with CUDA kernels for torch {ext_torch} with CUDA {ext_cuda}, "
                f"but the running torch {running} has "
                + (f"CUDA {running_cuda}" if running_cuda else "no CUDA (a CPU-only build)")
                + ". " + _fixes(running, running_cuda, f"{ext_torch} (CUDA {ext_cuda})"))
    return None


def _installed():
    """(version, exactly required torch or None) of the installed iwae_fused;
    (None, None) for a checkout on sys.path that was never installed."""
    try:
        from importlib import metadata

        version, requires = metadata.version("iwae_fused"), metadata.requires("iwae_fused") or []
    except Exception:
        return None, None
    pins = [m.group(1) for r in requires for m in [re.match(r"torch\s*\(?\s*==\s*([^\s;)]+)", r)] if m]
    return version, (pins[0] if pins else None)


def _load():
    try:
        from iwae_fused import _C
    except ImportError as e:
        version, pinned = _installed()
        made_for = built_for(version, pinned)
        raise ImportError(
            "iwae_fused: the compiled extension iwae_fused._C could not be loaded under torch "
            f"{torch.__version__}" + (f"; this build of iwae_fused is for {made_for}" if made_for else "")
            + f" ({e}). It is usually built for another torch or CUDA version, or not built at all. "
            + _fixes(torch.__version__, torch.version.cuda, pinned)
        ) from e
    message = mismatch(_C.torch_version, _C.cuda_version, _C.with_cuda, torch.__version__,
                       torch.version.cuda)
    if message:
        raise ImportError(message)
    return _C


_C = _load()
