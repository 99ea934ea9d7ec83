"""Helpers for the tests that run the CUDA kernels on the emulated GPU:
availability, the launch log, and running one computation on the emulated
device and on the CPU kernels."""

import os
import re

import pytest
import torch

from iwae_fused import cuda_emulator

OPS = torch.ops.iwae_fused

# CI builds the emulator (scripts/run.sh test); a local build without it
# skips these tests, CI must not.
if not cuda_emulator.available() and os.environ.get("CI"):
    raise RuntimeError("CI must run the emulated CUDA tests: build with IWAE_FUSED_CUDA_EMU=1")

# Test modules import this as their own pytestmark.
pytestmark = pytest.mark.skipif(
    not cuda_emulator.available(), reason="built without the CUDA emulator (IWAE_FUSED_CUDA_EMU=1)"
)


def parse(name):
    """'reduce_rows_kernel<float, 4, 32, true>' -> ('reduce_rows_kernel', ['float', '4', '32', 'true'])."""
    m = re.fullmatch(r"([\w:]+)<(.*)>", name)
    if not m:
        return name, []
    return m.group(1), [a.strip() for a in m.group(2).split(",")]


def run_emulated(fn, **device):
    """fn() on the emulated GPU; returns its result and the launches it made."""
    cuda_emulator.clear_launches()
    with cuda_emulator.emulated(**device):
        out = fn()
    return out, cuda_emulator.launches(clear=True)


# node id -> the kernel instantiations that test launched (launch_census).
CENSUS = {}


@pytest.fixture(autouse=True)
def launch_census(request):
    """Autouse in the emulated test modules (they import it): records which
    kernel instantiations each test launched, and fails a test that launched
    none unless it is marked ``no_launch`` (a test that claims to exercise
    the emulated GPU must run a kernel on it)."""
    before = cuda_emulator.launch_counts()
    yield
    after = cuda_emulator.launch_counts()
    launched = {k for k, n in after.items() if n > before.get(k, 0)}
    CENSUS[request.node.nodeid] = launched
    marker = request.node.get_closest_marker("no_launch")
    if marker is None and not launched:
        pytest.fail("launched no kernel on the emulated GPU: the test exercises nothing there "
                    "(mark it no_launch, saying why, if that is its point)")
    if marker is not None and launched:
        pytest.fail(f"marked no_launch ({marker.args[0] if marker.args else ''}) but launched {sorted(launched)}")


def instantiation(kernel, dtype, *args):
    """The launch log's name of a kernel instantiation:
    instantiation("reduce_rows_kernel", torch.float32, 4, 32, True) ->
    'reduce_rows_kernel<float, 4, 32, true>'."""
    names = {torch.float32: "float", torch.float64: "double", torch.float16: "Half",
             torch.bfloat16: "BFloat16"}
    parts = [names[dtype]] + [("true" if a else "false") if isinstance(a, bool) else str(a) for a in args]
    return f"{kernel}<{', '.join(parts)}>"


def kernels(launches, base):
    return [(parse(r["kernel"])[1], r) for r in launches if parse(r["kernel"])[0] == base]


def vec_width(dtype):
    return 16 // torch.empty((), dtype=dtype).element_size()
