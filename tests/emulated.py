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


def kernels(launches, base):
    return [(parse(r["kernel"])[1], r) for r in launches if parse(r["kernel"])[0] == base]


def vec_width(dtype):
    return 16 // torch.empty((), dtype=dtype).element_size()
