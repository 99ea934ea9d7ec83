"""setup.py's CUDA decision: FORCE_CUDA without a toolkit fails clearly,
FORCE_CPU wins, and nothing is decided from torch.cuda.is_available(); and
the built library keeps one body per instruction set."""

import os
import platform
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_setup(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_CUDA", "FORCE_CPU", "CUDA_HOME")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "setup.py", "--version"], cwd=ROOT, env=env,
        capture_output=True, text=True,
    )


def test_force_cuda_without_toolkit_fails_with_a_clear_message():
    res = run_setup({"FORCE_CUDA": "1", "CUDA_HOME": "/nonexistent/cuda"})
    assert res.returncode != 0
    assert "FORCE_CUDA=1 but no CUDA toolkit was found at CUDA_HOME=/nonexistent/cuda" in res.stderr
    assert "set CUDA_HOME" in res.stderr


def test_force_cpu_builds_cpu_only_and_tags_the_version():
    import torch

    res = run_setup({"FORCE_CPU": "1", "FORCE_CUDA": "1"})
    assert res.returncode == 0, res.stderr
    major, minor = torch.__version__.split(".")[:2]
    assert res.stdout.strip().splitlines()[-1].endswith(f"+pt{major}{minor}cpu")


# ---- one body per instruction set -----------------------------------------
# The CPU kernels are compiled once per instruction set (csrc/cpu/kernels_*.cpp)
# from the same headers. An inline function or template those headers define
# outside the set's own namespace has one mangled name for every set, and the
# linker keeps one body for all: an AVX-512 body called from the DEFAULT
# kernels, with another register ABI (VecIO was such a symbol until session 3,
# and a likely cause of the DEFAULT float16 failure noted in benchmarks/NOTES.md
# CPU 10). The check reads the built library's weak symbols.

_ISA = r"(?:AVX2|AVX512|DEFAULT)"
_LEAK = re.compile(r"iwae_fused::cpu::(?!" + _ISA + r"::)[A-Za-z_]")


def per_isa_leaks(nm_output):
    """Weak symbols (inline functions, template instances) of the CPU kernels'
    namespace that are not inside an instruction set's namespace."""
    leaks = []
    for line in nm_output.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[1] in ("W", "V", "w", "v", "u") and _LEAK.search(parts[2]):
            leaks.append(parts[2])
    return leaks


def test_per_isa_check_fires_on_a_shared_symbol():
    # The symbol that leaked, as nm -C printed it, beside legitimate ones.
    nm = "\n".join([
        "0000000000244aa0 W iwae_fused::cpu::VecIO<c10::Half>::load(c10::Half const*, long)",
        "0000000000245000 W void iwae_fused::cpu::AVX2::Kernels<float>::reduce_cols<true, false>(iwae_fused::ReduceArgs const&)",
        "0000000000246000 T iwae_fused::cpu::kernels()",
        "0000000000247000 W iwae_fused::stats_shape(iwae_fused::Plan const&)",
    ])
    assert per_isa_leaks(nm) == [
        "iwae_fused::cpu::VecIO<c10::Half>::load(c10::Half const*, long)"
    ]


def kernel_objects():
    """The object files of the per-instruction-set kernels behind the imported
    extension, where the build kept them (setup.py: build/obj-<python and
    torch tag>/iwae_fused._C/): the library itself, built with hidden
    visibility, has made every weak symbol a local one, but the linker merged
    same-named bodies across the three objects all the same."""
    import torch

    import iwae_fused._C as ext

    tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}"
    root = os.path.dirname(os.path.dirname(os.path.abspath(ext.__file__)))
    folder = os.path.join(root, "build", f"obj-{tag}", "iwae_fused._C", "csrc", "cpu")
    objs = [os.path.join(folder, f"kernels_{isa}.o") for isa in ("default", "avx2", "avx512")]
    present = [o for o in objs if os.path.exists(o)]
    # Objects newer than the library belong to a later build than this one.
    if not present or min(os.path.getmtime(o) for o in present) > os.path.getmtime(ext.__file__):
        return []
    return present


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm")
def test_cpu_kernels_share_no_symbol_across_instruction_sets():
    import iwae_fused._C as ext

    # The library: a build with default visibility exports the weak symbols.
    res = subprocess.run(
        ["nm", "-C", "--defined-only", ext.__file__], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    if platform.machine() in ("x86_64", "AMD64"):  # the per-set kernels are there
        assert "iwae_fused::cpu::AVX2::" in res.stdout
    assert per_isa_leaks(res.stdout) == []
    # The objects: where the weak symbols still are weak.
    objs = kernel_objects()
    if not objs:
        pytest.skip("the kernels' object files are not beside this build (an installed wheel)")
    for obj in objs:
        res = subprocess.run(["nm", "-C", "--defined-only", obj], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert " W " in res.stdout, obj  # the check has weak symbols to read
        assert per_isa_leaks(res.stdout) == [], obj


# ---- the import-time check: a build under another torch --------------------
# iwae_fused/_build.py compares what the extension says it was built for with
# the running torch. The messages must name both versions and the fixes.

def test_mismatch_is_none_when_the_build_fits():
    from iwae_fused import _build

    assert _build.mismatch("2.15.0", "13.0", True, "2.15.0+cu130", "13.0") is None
    assert _build.mismatch("2.13.0", None, False, "2.13.0+cpu", None) is None
    # a CPU-only build runs under a CUDA build of the same torch
    assert _build.mismatch("2.14.1", None, False, "2.14.1", "13.0") is None


def test_mismatch_of_torch_names_both_versions_and_the_fixes():
    from iwae_fused import _build

    msg = _build.mismatch("2.15.0", "13.0", True, "2.13.0+cpu", None)
    assert "built for torch 2.15.0 but torch 2.13.0+cpu is running" in msg
    assert "+pt213cpu" in msg  # the wheel to look for
    assert "pip install torch==2.15.0" in msg
    assert "pip install --no-build-isolation --force-reinstall --no-deps iwae_fused" in msg
    # a patch release differs too: the check is exact
    assert _build.mismatch("2.14.0", None, False, "2.14.1", "13.0") is not None


def test_mismatch_of_cuda_names_both_versions_and_the_fixes():
    from iwae_fused import _build

    msg = _build.mismatch("2.15.0", "13.0", True, "2.15.0+cu126", "12.6")
    assert "CUDA 13.0" in msg and "has CUDA 12.6" in msg
    assert "+pt215cu126" in msg and "pip install torch==2.15.0 (CUDA 13.0)" in msg
    msg = _build.mismatch("2.15.0", "13.0", True, "2.15.0+cpu", None)
    assert "has no CUDA (a CPU-only build)" in msg and "+pt215cpu" in msg


def test_built_for_reads_the_local_version_tag():
    from iwae_fused import _build

    assert _build.built_for("0.1.0+pt215cu130") == "torch 2.15 with CUDA 13.0"
    assert _build.built_for("0.1.0+pt213cu128") == "torch 2.13 with CUDA 12.8"
    assert _build.built_for("0.1.0+pt213cpu") == "torch 2.13 (CPU only)"
    assert _build.built_for("0.1.0") is None and _build.built_for(None) is None
    assert _build.built_for("0.1.0+pt215cu132", "2.15.0") == "torch 2.15.0 with CUDA 13.2"
    assert _build.running_tag("2.15.0+cu130", "13.0") == "pt215cu130"
    assert _build.running_tag("2.13.0+cpu", None) == "pt213cpu"  # whatever torch runs the test


def _import_with_fake_extension(setup_code):
    """Import iwae_fused in a fresh interpreter after `setup_code` has put a
    stand-in for the compiled extension in place; return the subprocess."""
    code = "import sys, types\n" + setup_code + "\nimport iwae_fused\n"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)


def test_import_under_another_torch_fails_naming_both_versions():
    import torch

    res = _import_with_fake_extension(
        "fake = types.ModuleType('iwae_fused._C')\n"
        "fake.torch_version, fake.with_cuda, fake.cuda_version = '2.99.0', False, None\n"
        "sys.modules['iwae_fused._C'] = fake"
    )
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: iwae_fused was built for torch 2.99.0 but torch "
                           f"{torch.__version__} is running"), res.stderr
    assert "pip install torch==2.99.0" in last


def test_import_of_an_extension_that_does_not_load_names_its_build():
    # A wheel for another torch usually fails in the loader (undefined symbols,
    # libc10_cuda.so missing): the package version's tag still says what it is for.
    import torch

    res = _import_with_fake_extension(
        "sys.modules['iwae_fused._C'] = None  # the import raises ImportError\n"
        "import importlib.metadata as md\n"
        "_real = md.version\n"
        "md.version = lambda name: '0.1.0+pt299cu130' if name == 'iwae_fused' else _real(name)\n"
        "_req = md.requires\n"
        "md.requires = lambda name: ['torch==2.99.1'] if name == 'iwae_fused' else _req(name)"
    )
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: iwae_fused: the compiled extension iwae_fused._C could not "
                           f"be loaded under torch {torch.__version__}; this build of iwae_fused is "
                           "for torch 2.99.1 with CUDA 13.0"), res.stderr
    assert "pip install torch==2.99.1" in last and "--no-build-isolation" in last


# ---- the torch requirement in the metadata ---------------------------------

def _requires(tmp_path, env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("IWAE_FUSED_PIN_TORCH",)}
    env.update({"FORCE_CPU": "1", **env_extra})
    res = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    (req,) = tmp_path.glob("*.egg-info/requires.txt")
    return req.read_text().split("\n\n")[0].split()


def test_source_builds_require_the_tested_lower_bound_only(tmp_path):
    # A cap would make pip replace a newer torch under the extension just built against it.
    assert _requires(tmp_path, {}) == ["torch>=2.13"]


def test_release_wheels_require_exactly_their_torch(tmp_path):
    import torch

    assert _requires(tmp_path, {"IWAE_FUSED_PIN_TORCH": "1"}) == [
        f"torch=={torch.__version__.split('+')[0]}"]
