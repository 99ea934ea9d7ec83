"""VIMCO at any gap between log-weights: the bound, the weights and the
leave-one-out learning signals against 50-digit mpmath (mp_reference.py),
for gaps up to and beyond double's exponent range (exp(-745) is the last
denormal, exp(-1e4) is 0 in every format), on the CPU kernels (the vector
lanes of csrc/cpu/vimco_lanes.h from 8 examples on, vimco_math.h's scalar
loop below) and the emulated CUDA kernels (tiles, a warp per row, a thread
per column, K split in pieces and merged)."""

import contextlib
import functools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import iwae_fused
from iwae_fused import cuda_emulator

import mp_reference as mp
from conftest import DTYPES

BACKENDS = ["cpu", "cuda-emu"]
EPS64 = torch.finfo(torch.float64).eps
# The kernels compute in double whatever the dtype: a few double ulps of the
# quantities each result is conditioned on (see within_bounds), then one
# rounding to the output dtype.
C64 = 16


def on(backend):
    if backend == "cpu":
        return contextlib.nullcontext()
    if not cuda_emulator.available():
        pytest.skip("built without the CUDA emulator (IWAE_FUSED_CUDA_EMU=1)")
    return cuda_emulator.emulated()


def run(x, dim, backend):
    """vimco(x, 0) along dim with its two gradients (g = 1), on a backend."""
    p = x.clone().requires_grad_()
    q = torch.zeros_like(x).requires_grad_()
    with on(backend):
        out = iwae_fused.vimco(p, q, dim)
        out.backward(torch.ones_like(out))
    return out.detach(), p.grad, q.grad


def floor(dtype):
    """Below this a result may come out as 0: the dtype's smallest normal
    number (where the conversion of the double result flushes), and for the
    double computation itself a thousand times DBL_MIN (the CPU kernels flush
    denormals, and exp and log1p flush results a little above DBL_MIN where
    their intermediates are denormal: exp(-707.9) / 1.0 came out as 0)."""
    return max(torch.finfo(dtype).tiny, 1e3 * torch.finfo(torch.float64).tiny)


@functools.lru_cache(maxsize=None)
def reference(row):
    return mp.vimco(list(row))


def within_bounds(x, dim, out, gp, gq, dtype):
    """Every example against mpmath: |error| <= eps(dtype) |exact| (the
    rounding to the dtype) + C64 eps64 cond + FLOOR(dtype) (a result near or
    below the smallest normal number may be flushed to 0), with cond what
    the double computation's rounding is relative to:
      bound:   |L| + max|x| + log K (the max and log K are added to a log1p);
      w_j:     w_j (1 + |x_j - max x|) (exp of a rounded difference);
      q-grad:  |signal_j| + that + f_j sum|x| (the others' mean is a
               rounded sum of the log-weights; f_j, the mean's share of the
               leave-one-out sum, is how much the signal moves with it:
               e^-gap for a sample below a large gap, up to 1/2 for the
               argmax of two samples).
    The q-gradient is signal - w: where the two nearly cancel (a sample well
    below the max, whose gradient is of second order in its weight), its
    error is relative to them, not to itself."""
    eps, tiny = torch.finfo(dtype).eps, floor(dtype)
    K = x.shape[dim]
    rows = x.double().movedim(dim, -1).reshape(-1, K)
    outs = out.double().reshape(-1)
    gps = gp.double().movedim(dim, -1).reshape(-1, K)
    gqs = gq.double().movedim(dim, -1).reshape(-1, K)
    worst = 0.0
    for b in range(rows.shape[0]):
        row = tuple(rows[b].tolist())
        L, w, sig, fs = reference(row)
        big, total = max(abs(v) for v in row), sum(abs(v) for v in row)
        top = max(row)
        checks = [(outs[b].item(), L, abs(L) + big + math.log(K))]
        for j in range(K):
            ew = w[j] * (1 + abs(row[j] - top))
            checks.append((gps[b, j].item(), w[j], ew))
            checks.append((gqs[b, j].item(), sig[j] - w[j], abs(sig[j]) + ew + fs[j] * total))
        for actual, exact, cond in checks:
            assert math.isfinite(actual), (b, row, actual, float(exact))
            err = float(abs(mp.mpmath.mpf(actual) - exact))
            bound = eps * float(abs(exact)) + C64 * EPS64 * float(cond) + tiny
            assert err <= bound, (b, row, actual, float(exact), err, bound)
            worst = max(worst, err / bound)
    return worst


# shape case -> (K, B, dim): which kernel each backend runs.
SHAPES = {
    "K2-B1-rows": (2, 1, 1),  # CPU scalar loop; CUDA tiles
    "K4-B9-rows": (4, 9, 1),  # CPU lanes with a tail; CUDA tiles
    "K4-B9-cols": (4, 9, 0),  # CPU lanes; CUDA a thread per example
    "K70-B9-rows": (70, 9, 1),  # CPU lanes; CUDA a warp per row, K in 2 pieces
    "K600-B1-rows": (600, 1, 1),  # CPU scalar loop; CUDA K split, merge kernel
}


def gap_inputs(gap, K, B, dim, dtype):
    """B examples of K log-weights: one sample `gap` above the next (its
    position and the offset vary per example), the others spread below that
    by up to 50 nats, and a quarter of them another `gap` lower."""
    g = torch.Generator().manual_seed(K * 1000 + B)
    x = torch.empty(B, K, dtype=torch.float64)
    for b in range(B):
        row = -gap - 50.0 * torch.rand(K, generator=g, dtype=torch.float64)
        row[torch.rand(K, generator=g) < 0.25] -= gap
        row[(3 * b) % K] = 0.0
        if K > 2:
            row[(3 * b + 1) % K] = -gap  # exactly the gap
        x[b] = row + 37.25 * b
    x = x.to(dtype)
    return x if dim == 1 else x.T.contiguous()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gap", [700.0, 720.0, 745.0, 800.0, 1e4])
def test_vimco_at_any_gap(gap, dtype, shape, backend):
    K, B, dim = SHAPES[shape]
    x = gap_inputs(gap, K, B, dim, dtype)
    within_bounds(x, dim, *run(x, dim, backend), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("far", [650.0, 1000.0, 1100.0, 2000.0, 1e4])
def test_vimco_near_other_far_mean(far, dtype, shape, backend):
    """The argmax's signal on both sides of its switch of form: the others'
    sum near the max (one sample 2 nats below it) while their geometric mean
    lies `far` x (K - 2) / (K - 1) below (the direct form while that mean is
    above -700 nats, the log form past it)."""
    K, B, dim = SHAPES[shape]
    x = torch.full((B, K), -far, dtype=torch.float64)
    x[:, 0] = 0.0
    x[:, 1] = -2.0
    x += 11.5 * torch.arange(B, dtype=torch.float64)[:, None]
    x = x.to(dtype)
    x = x if dim == 1 else x.T.contiguous()
    within_bounds(x, dim, *run(x, dim, backend), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vimco_signal_of_the_issue(backend):
    # log_p = [0, -720]: the first sample's log_q gradient is its signal
    # L - L_-0 = log((1 + e^-720) / (2 e^-720)) minus its weight, 718.3068...
    # (it was inf on the CPU, 718.306852819443 emulated).
    lp = torch.tensor([0.0, -720.0], dtype=torch.float64, requires_grad=True)
    lq = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    with on(backend):
        iwae_fused.vimco(lp, lq).backward()
    exact = 720.0 - math.log(2.0) - 1.0 / (1.0 + math.exp(-720.0))
    assert abs(lq.grad[0].item() - 718.3068528194401) <= 2 * EPS64 * 718.3
    assert abs(lq.grad[0].item() - exact) <= 2 * EPS64 * 718.3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B", [1, 9])
def test_vimco_pos_inf(B, backend):
    # A +inf log-weight: the bound is +inf (as iwelbo's), the example's
    # gradients NaN (its weights are undefined); other examples unaffected.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(B, 6, generator=g, dtype=torch.float64)
    x[0, 2] = math.inf
    out, gp, gq = run(x, 1, backend)
    assert out[0].item() == math.inf
    assert torch.isnan(gp[0]).all() and torch.isnan(gq[0]).all()
    if B > 1:
        assert torch.isfinite(out[1:]).all() and torch.isfinite(gq[1:]).all()
        within_bounds(x[1:], 1, out[1:], gp[1:], gq[1:], torch.float64)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    K=st.integers(2, 40),
    B=st.integers(1, 12),
    dim=st.sampled_from([0, 1]),
    dtype=st.sampled_from(DTYPES),
    backend=st.sampled_from(BACKENDS),
    scale=st.sampled_from([300.0, 1000.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_vimco_random_log_weights_at_scale(K, B, dim, dtype, backend, scale, seed):
    # Log-weights ~ N(0, scale^2): neighbouring samples hundreds of nats
    # apart, where the signals used to overflow to inf (in float16 and
    # bfloat16 inputs too). Ties come from rounding to the half types.
    if backend == "cuda-emu" and not cuda_emulator.available():
        return
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, K, generator=g, dtype=torch.float64) * scale).to(dtype)
    if dtype == torch.float16:
        x = x.clamp(-6e4, 6e4)
    if dim == 0:
        x = x.T.contiguous()
    within_bounds(x, dim, *run(x, dim, backend), dtype)
