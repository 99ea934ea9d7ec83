"""Forward and backward round the scaled log-weights identically: the weights
the backward writes are the softmax of exactly what the forward reduced, so a
lone sample's weight is exactly 1 and every slice's weights sum to 1 within a
few ulps, at every Renyi alpha, dtype and backend, and on the CPU under each
instruction set (the AVX2 and AVX-512 kernels are where a contracted
multiply-add could round one pass differently: setup.py turns contraction
off for every compiler of the kernels)."""

import contextlib
import os
import subprocess
import sys

import pytest
import torch

import iwae_fused
from iwae_fused import cuda_emulator

from conftest import DTYPES

BACKENDS = ["cpu", "cuda-emu"]
# Near-ELBO path (|1 - alpha| < 1/4) and fused kernels, both signs of beta.
ALPHAS = [-1.0, 0.26, 0.5, 0.74, 0.8, 0.9999, 1.0001, 1.26, 2.0]
# (K, B, dim): every CPU path (lane tiles, rows, columns) and CUDA path
# (tiles, rows, columns) that the shapes reach.
SHAPES = [(5, 300, 0), (300, 5, 0), (5, 300, 1), (50, 64, 1), (1000, 3, 1)]


def on(backend):
    if backend == "cpu":
        return contextlib.nullcontext()
    if not cuda_emulator.available():
        pytest.skip("built without the CUDA emulator (IWAE_FUSED_CUDA_EMU=1)")
    return cuda_emulator.emulated()


def opmath_eps(dtype):
    return torch.finfo(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype).eps


def single_sample_weights(dtype, alpha):
    """Gradients of iwelbo over one sample, for log-weights of every size
    (rows and columns, with and without log_q): each must be exactly 1
    (-1 for log_q)."""
    values = torch.tensor([123.456, -7321.25, 1e-3, 0.7, 3e4, -2.5e-7, 61.0], dtype=torch.float64)
    if dtype in (torch.float32, torch.float64):
        values = torch.cat([values, torch.tensor([3.3e30, -1.7e-30], dtype=torch.float64)])
    x = values.to(dtype)
    out = []
    for dim in (0, 1):
        p = (x[None] if dim == 0 else x[:, None]).clone().requires_grad_()
        q = torch.full_like(p, 0.3).requires_grad_()
        iwae_fused.iwelbo(p, dim=dim, alpha=alpha).sum().backward()
        out.append(p.grad)
        p.grad = None
        iwae_fused.iwelbo(p, q, dim=dim, alpha=alpha).sum().backward()
        out += [p.grad, -q.grad]
    return out


def weight_sums(dtype, alpha, seed=0):
    """The largest |sum_k w_k - 1| over slices, in units of the computation's
    eps, where |log w| is ~1e3 (the product beta log w then has a rounding
    error of ~1e-4 in float32: what a contracted FMA kept in one pass)."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for K, B, dim in SHAPES:
        x = torch.randn(K, B, generator=g, dtype=torch.float64) * 3
        x = (x + 1e3 * torch.randn(1, B, generator=g, dtype=torch.float64)).to(dtype)
        if dim == 1:
            x = x.T.contiguous()
        p = x.clone().requires_grad_()
        iwae_fused.iwelbo(p, dim=dim, alpha=alpha).sum().backward()
        err = (p.grad.double().sum(dim) - 1).abs().max().item()
        # The rounding of each weight to the dtype adds at most eps(dtype) / 2.
        worst = max(worst, (err - torch.finfo(dtype).eps / 2) / opmath_eps(dtype))
    return worst


SUM_ULPS = 8


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_one_sample_has_weight_exactly_one(dtype, alpha, backend):
    with on(backend):
        grads = single_sample_weights(dtype, alpha)
    for gr in grads:
        assert torch.equal(gr, torch.ones_like(gr)), gr


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weights_sum_to_one(dtype, alpha, backend):
    with on(backend):
        assert weight_sums(dtype, alpha) <= SUM_ULPS


def check_every_case():
    """Both checks for every dtype and alpha on the CPU kernels of this
    process's instruction set (for test_every_instruction_set)."""
    for dtype in DTYPES:
        for alpha in ALPHAS:
            for gr in single_sample_weights(dtype, alpha):
                assert torch.equal(gr, torch.ones_like(gr)), (dtype, alpha, gr)
            worst = weight_sums(dtype, alpha)
            assert worst <= SUM_ULPS, (dtype, alpha, worst)
    print(torch.backends.cpu.get_cpu_capability())


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_every_instruction_set(isa):
    # One process per instruction set (ATen picks it once per process, capped
    # at what the CPU runs; the printed name says which ran).
    here = os.path.dirname(os.path.abspath(__file__))
    script = f"import sys; sys.path.insert(0, {here!r}); import test_extremes_rounding as t; t.check_every_case()"
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa)
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    picked = res.stdout.split()[-1]
    if isa == "default":
        assert picked == "DEFAULT"


# ---- the real CUDA build: what nvcc emits ------------------------------------
# The emulator compiles the CUDA sources with the host compiler, so it cannot
# show what nvcc does. nvcc contracts a * b + c by default, in NVVM and again
# in ptxas: PTX's mul/add/sub *without* a rounding modifier "may be optimized
# aggressively", e.g. fused into an fma (PTX ISA, "Floating Point
# Instructions"). With setup.py's --fmad=false every one of them is emitted
# with .rn, which ptxas may not fuse. This compiles the CUDA sources to PTX
# with setup.py's flags and checks that no contractible instruction is left
# (and that the check finds them in a build without the flag). It runs where
# nvcc is on PATH (~15 s of CPU: two CUDA sources to PTX); set
# IWAE_FUSED_NVCC_CHECKS=0 to skip it.

import ast  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402

NVCC = shutil.which("nvcc")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRACTIBLE = re.compile(r"^\s*(?:@%p\d+\s+)?(mul|add|sub)\.f(32|64)\s", re.M)

# Library headers that torch's ATen/cuda headers include and a bare toolkit
# (or the CPU build of torch) lacks; the kernels use none of them.
STUBS = {
    "cusparse.h": "typedef int cusparseStatus_t; typedef struct cusparseContext* cusparseHandle_t;",
    "cublas_v2.h": "#include <cuda_runtime.h>\ntypedef struct cublasContext* cublasHandle_t;\n"
                   "typedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;",
    "cublasLt.h": "typedef struct cublasLtContext* cublasLtHandle_t;",
    "cusolverDn.h": "typedef struct cusolverDnContext* cusolverDnHandle_t;",
    "cusolver_common.h": "typedef int cusolverStatus_t;",
    "c10/cuda/impl/cuda_cmake_macros.h": "",
}


def setup_nvcc_contraction_flags():
    src = open(os.path.join(ROOT, "setup.py")).read()
    m = re.search(r"^_NO_CONTRACTION = (\{.*\})$", src, re.M)
    return ast.literal_eval(m.group(1))["nvcc"]


def ptx(source, flags, tmp):
    inc = tmp / "stubs"
    for name, text in STUBS.items():
        (inc / name).parent.mkdir(parents=True, exist_ok=True)
        (inc / name).write_text("#pragma once\n" + text + "\n")
    tinc = os.path.join(os.path.dirname(torch.__file__), "include")
    out = tmp / (os.path.basename(source) + ".ptx")
    cmd = [NVCC, "-arch=sm_90", "--ptx", "-std=c++20", "-O3", "--expt-relaxed-constexpr",
           *flags, "-I", str(inc), "-I", os.path.join(ROOT, "csrc"), "-I", tinc,
           "-I", os.path.join(tinc, "torch", "csrc", "api", "include"), source, "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return out.read_text()


@pytest.mark.skipif(NVCC is None or os.environ.get("IWAE_FUSED_NVCC_CHECKS") == "0",
                    reason="needs nvcc on PATH (and not IWAE_FUSED_NVCC_CHECKS=0)")
def test_nvcc_leaves_no_contractible_arithmetic(tmp_path):
    flags = setup_nvcc_contraction_flags()
    assert "--fmad=false" in flags
    # The check fires: a multiply-subtract as the kernels write it, compiled
    # without the flag, is left to ptxas to contract (or already fused).
    probe = tmp_path / "probe.cu"
    probe.write_text("__global__ void k(float* x, float b, float s) { x[0] = x[0] * b - s; }\n")
    loose = ptx(str(probe), [], tmp_path)
    assert CONTRACTIBLE.search(loose) or "fma.rn.f32" in loose
    strict = ptx(str(probe), flags, tmp_path)
    assert not CONTRACTIBLE.search(strict) and "fma.rn" not in strict
    for name in ("kernels_cuda.cu", "vimco_cuda.cu"):
        text = ptx(os.path.join(ROOT, "csrc", "cuda", name), flags, tmp_path)
        found = CONTRACTIBLE.findall(text)
        assert not found, f"{name}: {len(found)} contractible instructions, e.g. {found[:3]}"
