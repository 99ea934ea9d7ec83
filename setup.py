"""Builds iwae_fused._C: the CPU kernels always, CUDA ones when asked or found.

Install against the torch already installed (build isolation would fetch
another torch, and the extension would then fail to load):

    pip install --no-build-isolation -e .

Environment:
    FORCE_CPU=1          build the CPU kernels only
    FORCE_CUDA=1         build the CUDA kernels too, or fail saying why
    CUDA_HOME            the CUDA toolkit (default: /usr/local/cuda if present)
    TORCH_CUDA_ARCH_LIST GPU architectures (default "8.0;9.0;10.0;12.0+PTX", see
                         DEFAULT_CUDA_ARCHS)
    MAX_JOBS             parallel compile jobs (ninja)
    IWAE_FUSED_CUDA_EMU=1  also build iwae_fused._cuda_emu: the CUDA kernels compiled
                         by the host compiler and run on the CPU by an emulator (the
                         test suite's CUDA cases; scripts/run.sh test sets it)
    IWAE_FUSED_DEBUG=1   -O0 -g, for debugging the kernels
    IWAE_FUSED_LINEINFO=1  line tables in an optimised build (-g1, nvcc -lineinfo),
                         for profilers (perf annotate, Nsight Compute)
    IWAE_FUSED_PIN_TORCH=1 the wheel requires exactly the torch it is built against
                         (release wheels: scripts/build_wheels.sh sets it)
    IWAE_FUSED_EMU_COVERAGE=1  build only iwae_fused._cuda_emu, instrumented for gcov
                         (line and branch coverage of the CUDA device code); for
                         `setup.py build_ext` into a folder of its own, as
                         scripts/emu_coverage.sh does, never for an install

Builds are release builds unless IWAE_FUSED_DEBUG is set: -O3, no debug
information (Python's own CFLAGS carry -g; -g0 comes after them).
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"
# The oldest torch the test suite has passed against (scripts/check_torch_versions.sh).
TORCH_MIN = "2.13"
# The GPU architectures of a CUDA build when TORCH_CUDA_ARCH_LIST is unset.
# Native code (SASS) runs on its own architecture and on later minor versions
# of the same major one, so sm_80 covers every 8.x GPU (A100, A10, A40, L4,
# L40, RTX 30/40), sm_90 the H100/H200/GH200, sm_100 the B200/GB200/B300
# (10.x), sm_120 the RTX 50 series, RTX PRO Blackwell and GB10 (12.x). The PTX
# of 12.0 is compiled by the driver at first launch on any newer GPU (a major
# version above 12). CUDA 13 compiles nothing below sm_75.
DEFAULT_CUDA_ARCHS = "8.0;9.0;10.0;12.0+PTX"


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


# No contraction of a * b + c into one fused multiply-add, by any compiler of
# the kernels. The forward and the backward each compute the scaled
# log-weights y = beta * (log_p - log_q) and then y - shift; contracted in one
# pass and not in the other (GCC contracts by default wherever FMA is
# available: the AVX2/AVX-512 kernels, any aarch64 build; nvcc does by
# default), the backward's y differs from the forward's by the product's
# rounding error, and a lone sample's weight came out as 1.0000012. Off
# everywhere, every expression rounds as written, in both passes and on every
# backend, and the emulated CUDA kernels (host compiler) round as the real
# ones (nvcc) do. What it costs: the kernels' explicit FMAs (the exp and log
# polynomials) are intrinsics and stay; the rest are memory-bound
# (benchmarks/NOTES.md, numerics 2).
_NO_CONTRACTION = {"cxx": ["-ffp-contract=off"], "nvcc": ["--fmad=false"]}


def _extension():
    with_cuda = _want_cuda()
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    debug = _env_flag("IWAE_FUSED_DEBUG")
    lineinfo = _env_flag("IWAE_FUSED_LINEINFO")
    # -g0 / -g1 override the -g in Python's CFLAGS, which come first on the
    # command line: debug information made the library ~48 MB.
    cxx = ["-O0", "-g"] if debug else ["-O3", "-g1" if lineinfo else "-g0"]
    cxx += ["-fdiagnostics-color=always", "-Wno-unknown-pragmas"] + _NO_CONTRACTION["cxx"]
    # Nothing of ours is looked up from outside but the module's init, which
    # PYBIND11_MODULE exports itself: hidden symbols let the linker bind the
    # C++ sources' calls to one another (the CPU kernels') directly instead
    # of through the PLT (benchmarks/NOTES.md CPU 42). The CUDA sources keep
    # nvcc's default visibility; their entry points are called once a launch.
    cxx += ["-fvisibility=hidden", "-fvisibility-inlines-hidden"]
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
        nvcc = ["-O3", "--expt-relaxed-constexpr"] + _NO_CONTRACTION["nvcc"]
        if debug or lineinfo:
            nvcc += ["-lineinfo"]
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            # Unset, torch would build for the GPU it sees, or for every
            # architecture of its own build when it sees none.
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        print(f"iwae_fused: CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
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
    cxx += _NO_CONTRACTION["cxx"]
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


def _torch_requirement():
    """A source build: the tested lower bound and no cap. The build is tied to
    the torch installed when it was compiled (iwae_fused/_build.py checks at
    import); a cap would make pip replace a newer torch after the extension was
    compiled against it, breaking a build that most likely works, and would
    add nothing the import check does not enforce. The tested versions are in
    the docs. A release wheel (IWAE_FUSED_PIN_TORCH=1) requires exactly its
    torch, so pip picks the wheel that matches the torch a user names, and
    `pip check` flags a later torch upgrade."""
    if torch is not None and _env_flag("IWAE_FUSED_PIN_TORCH") and "sdist" not in sys.argv[1:]:
        return f"torch=={torch.__version__.split('+')[0]}"
    return f"torch>={TORCH_MIN}"


def _requirements(name):
    """The packages of requirements/<name>.txt, following its -r includes:
    the extras and scripts/run.sh read the same files."""
    out = []
    with open(os.path.join(ROOT, "requirements", name + ".txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line.startswith("-r "):
                out += [r for r in _requirements(line[3:].strip()[: -len(".txt")]) if r not in out]
            elif line and line not in out:
                out.append(line)
    return out


def _build_ext_class():
    """torch's ninja build, with each extension's objects kept in build/obj-*.

    An editable install (pip install -e .) compiles in a fresh temporary
    folder every time, so every rebuild was a full one. With a fixed folder
    per extension, Python and torch version, ninja recompiles only what
    changed: building the emulator after the main extension compiles the
    emulator alone, and a rebuild after editing one kernel compiles that file.
    """
    base = cpp_extension.BuildExtension.with_options(use_ninja=True)
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}"

    class BuildExt(base):
        def build_extension(self, ext):
            self.build_temp = os.path.join(ROOT, "build", f"obj-{tag}", ext.name)
            super().build_extension(ext)

    return BuildExt


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
    CMDCLASS = {"build_ext": _build_ext_class()}
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
    install_requires=[_torch_requirement()],
    extras_require={name: _requirements(name) for name in ("test", "examples", "pyro", "bench", "docs")},
    zip_safe=False,
)
