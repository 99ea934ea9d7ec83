"""Builds iwae_fused._C: the CPU kernels always, CUDA ones when asked or found.

Install against the torch already installed (build isolation would fetch
another torch, and the extension would then fail to load):

    pip install --no-build-isolation -e .

Environment:
    FORCE_CPU=1          build the CPU kernels only
    FORCE_CUDA=1         build the CUDA kernels too, or fail saying why
    CUDA_HOME            the CUDA toolkit (default: /usr/local/cuda if present)
    TORCH_CUDA_ARCH_LIST GPU architectures, e.g. "8.0;9.0"
    MAX_JOBS             parallel compile jobs (ninja)
    IWAE_FUSED_CUDA_EMU=1  also build iwae_fused._cuda_emu: the CUDA kernels compiled
                         by the host compiler and run on the CPU by an emulator (the
                         test suite's CUDA cases; scripts/run.sh test sets it)
    IWAE_FUSED_DEBUG=1   -O0 -g, for debugging the kernels
    IWAE_FUSED_EMU_COVERAGE=1  build only iwae_fused._cuda_emu, instrumented for gcov
                         (line and branch coverage of the CUDA device code); for
                         `setup.py build_ext` into a folder of its own, as
                         scripts/emu_coverage.sh does, never for an install
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"


def _env_flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _prepare_cuda_home():
    # torch guesses CUDA_HOME from the nvcc on PATH when the variable is unset;
    # where that nvcc is a wrapper script (/usr/local/bin/nvcc) the guess is
    # /usr/local, which is wrong. Decide before torch.utils.cpp_extension reads it.
    if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
        if os.path.isdir("/usr/local/cuda"):
            os.environ["CUDA_HOME"] = "/usr/local/cuda"


_prepare_cuda_home()

# Metadata-only commands (an sdist, or pip asking for build requirements in an
# isolated environment) need no torch; every build does, the installed one.
_METADATA_ONLY = bool(set(sys.argv[1:]) & {"sdist", "egg_info", "dist_info", "--version"}) and not (
    set(sys.argv[1:]) & {"bdist_wheel", "build_ext", "build", "develop", "install", "editable_wheel"})
try:
    import torch  # noqa: E402
    from torch.utils import cpp_extension  # noqa: E402
except ImportError:
    if not _METADATA_ONLY:
        raise RuntimeError(
            "iwae_fused builds against the torch already installed: install torch first "
            "(pip install torch), then build without isolation: "
            "pip install --no-build-isolation iwae_fused (or . from a checkout)"
        ) from None
    torch = None


def _toolkit_ok(home):
    return bool(home) and os.path.exists(os.path.join(home, "bin", "nvcc")) and os.path.exists(
        os.path.join(home, "include", "cuda_runtime.h")
    )


def _want_cuda():
    """Never from torch.cuda.is_available(): wheel builders have no GPU."""
    if _env_flag("FORCE_CPU"):
        return False
    # torch drops a CUDA_HOME that does not exist; keep it for the message.
    home = cpp_extension.CUDA_HOME or os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if _env_flag("FORCE_CUDA"):
        if not _toolkit_ok(home):
            raise RuntimeError(
                "FORCE_CUDA=1 but no CUDA toolkit was found"
                + (f" at CUDA_HOME={home}" if home else "")
                + ": set CUDA_HOME to the toolkit's root (the folder holding "
                "bin/nvcc and include/cuda_runtime.h), e.g. CUDA_HOME=/usr/local/cuda."
            )
        if torch.version.cuda is None:
            raise RuntimeError(
                f"FORCE_CUDA=1 but the installed torch {torch.__version__} is a "
                "CPU-only build; install a CUDA build of torch first."
            )
        return True
    if torch.version.cuda is None:
        return False
    if not _toolkit_ok(home):
        print(
            f"iwae_fused: torch {torch.__version__} has CUDA but no CUDA toolkit was "
            f"found (CUDA_HOME={home}); building the CPU kernels only. Set CUDA_HOME "
            "to the toolkit's root, or FORCE_CUDA=1 to make this an error."
        )
        return False
    return True


def _nvidia_include_dirs():
    """Headers of torch's nvidia-* wheels (site-packages/nvidia/*/include).

    ATen's CUDA headers include cusparse.h, cublas_v2.h and friends, which the
    CUDA build of torch carries in its nvidia packages while a bare toolkit
    may lack them. They go on the -isystem path, searched after the toolkit's
    own include dir, so only what the toolkit lacks comes from there.
    """
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs = []
    for root in spec.submodule_search_locations:
        dirs += sorted(glob.glob(os.path.join(root, "*", "include")))
    return [d for d in dirs if os.path.isdir(d)]


def _local_version(with_cuda):
    # The build is tied to one torch (and CUDA) version; say which in the
    # version, as PyTorch's own wheels do (+cpu, +cu130).
    major, minor = torch.__version__.split(".")[:2]
    tag = f"pt{major}{minor}"
    if with_cuda:
        tag += "cu" + torch.version.cuda.replace(".", "")
    else:
        tag += "cpu"
    return f"{VERSION}+{tag}"


def _extension():
    with_cuda = _want_cuda()
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    debug = _env_flag("IWAE_FUSED_DEBUG")
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += ["-fdiagnostics-color=always", "-Wno-unknown-pragmas"]
    macros = []
    kwargs = {}
    link = []
    if "ATen parallel backend: OpenMP" in torch.__config__.parallel_info():
        # at::parallel_for is an inline template over `#pragma omp parallel`
        # with this backend: without -fopenmp it silently runs on one thread.
        # (-fopenmp links libgomp.so.1, which resolves to the copy torch loaded.)
        cxx += ["-fopenmp"]
        link += ["-fopenmp"]
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        cu_major, cu_minor = torch.version.cuda.split(".")[:2]
        macros += [
            ("IWAE_FUSED_WITH_CUDA", None),
            ("IWAE_FUSED_CUDA_MAJOR", cu_major),  # torch.version.cuda at build
            ("IWAE_FUSED_CUDA_MINOR", cu_minor),
        ]
        # No --use_fast_math: it would change expf/logf and denormal handling
        # under the numerical guarantees; the kernels are memory-bound anyway.
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
        for d in _nvidia_include_dirs():
            cxx += ["-isystem", d]
            nvcc += ["-isystem", d]
        kwargs["extra_compile_args"] = {"cxx": cxx, "nvcc": nvcc}
        ext_cls = cpp_extension.CUDAExtension
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx}
        ext_cls = cpp_extension.CppExtension
    ext = ext_cls(
        name="iwae_fused._C",
        sources=sources,
        define_macros=macros,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=link,
        **kwargs,
    )
    return ext, with_cuda


# The device code whose coverage the emulated build measures (gcov instruments
# only functions defined in these files: the emulator itself stays fast).
EMU_COVERAGE_FILES = ["kernels_cuda.cu", "vimco_cuda.cu", "tiles.h", "online_lse.h",
                      "vimco_math.h", "global_memory.h"]


def _emulator_extension(coverage=False):
    """The CUDA sources again, compiled by the host compiler against the
    emulator (csrc/cuda/emu/): no GPU and no CUDA toolkit needed. A module of
    its own, so the emulated kernels never share symbols with the real ones.
    With coverage, the device code is compiled unoptimised (so lines and
    branches are the source's) and instrumented for gcov."""
    sources = [os.path.join("csrc", "plan.cpp")]
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "emu", "*.cpp")))
    cxx = ["-O2", "-fdiagnostics-color=always", "-Wno-unknown-pragmas"]
    link = []
    macros = [("IWAE_CUDA_EMU", None)]
    if _env_flag("IWAE_FUSED_DEBUG"):
        cxx = ["-O0", "-g", "-Wno-unknown-pragmas"]
    if coverage:
        cxx += ["--coverage", "-fprofile-filter-files=" + ";".join(EMU_COVERAGE_FILES)]
        link += ["--coverage"]
        macros += [("IWAE_EMU_COVERAGE", None)]
    return cpp_extension.CppExtension(
        name="iwae_fused._cuda_emu",
        sources=sources,
        define_macros=macros,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
    )


if torch is None or "sdist" in sys.argv[1:]:
    # An sdist is torch-agnostic: no extension decided, no torch tag in the version.
    EXTENSIONS, CMDCLASS, FULL_VERSION = [], {}, VERSION
elif _env_flag("IWAE_FUSED_EMU_COVERAGE"):
    if "build_ext" not in sys.argv[1:] or set(sys.argv[1:]) & {"install", "develop", "bdist_wheel",
                                                              "editable_wheel"}:
        raise RuntimeError(
            "IWAE_FUSED_EMU_COVERAGE=1 builds only the instrumented emulator, for "
            "`setup.py build_ext --build-lib DIR` (scripts/emu_coverage.sh); "
            "install without it."
        )
    EXTENSIONS = [_emulator_extension(coverage=True)]
    CMDCLASS = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
    FULL_VERSION = _local_version(False)
else:
    EXTENSION, WITH_CUDA = _extension()
    EXTENSIONS = [EXTENSION] + ([_emulator_extension()] if _env_flag("IWAE_FUSED_CUDA_EMU") else [])
    CMDCLASS = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
    FULL_VERSION = _local_version(WITH_CUDA)

setup(
    name="iwae_fused",
    version=FULL_VERSION,
    description="Fused, dispatcher-registered importance-weighted bounds for PyTorch",
    long_description=open(os.path.join(ROOT, "README.md")).read(),
    long_description_content_type="text/markdown",
    author="The iwae_fused developers",
    license="BSD-3-Clause",
    license_files=["LICENSE"],
    classifiers=[
        "Development Status :: 4 - Beta",
        "Intended Audience :: Science/Research",
        "License :: OSI Approved :: BSD License",
        "Programming Language :: C++",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Environment :: GPU :: NVIDIA CUDA",
    ],
    keywords=["pytorch", "variational inference", "IWAE", "importance sampling", "CUDA"],
    packages=find_packages(include=["iwae_fused", "iwae_fused.*"]),
    ext_modules=EXTENSIONS,
    cmdclass=CMDCLASS,
    python_requires=">=3.9",
    # A lower bound only: pip must never replace the torch a build was made
    # against (the extension is tied to it; iwae_fused/_build.py checks).
    install_requires=["torch>=2.11"],
    extras_require={
        "test": ["pytest", "hypothesis", "numpy"],
        "bench": ["pytest-benchmark", "matplotlib", "tqdm"],
        "pyro": ["pyro-ppl>=1.9"],
    },
    zip_safe=False,
)
