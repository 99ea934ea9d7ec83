"""The cases where the op is defined to behave better than the eager
expression: -inf slices and samples, NaN isolation, +inf, huge magnitudes."""

import math
import platform
import subprocess
import sys

import pytest
import torch

import iwae_fused
from iwae_fused import reference as R

from conftest import DTYPES, close

INF = math.inf


def grads(p, q, dim=0):
    p = p.clone().requires_grad_()
    q = q.clone().requires_grad_()
    out = iwae_fused.iwelbo(p, q, dim)
    out.backward(torch.ones_like(out))
    return out.detach(), p.grad, q.grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["rows", "cols"])
def test_all_neg_inf_slice_gives_neg_inf_and_zero_grad(dtype, layout, device):
    K, B = 37, 20
    p = torch.randn(K, B, dtype=dtype, device=device)
    q = torch.randn(K, B, dtype=dtype, device=device)
    p[:, 3] = -INF  # example 3 has no sample with positive weight
    if layout == "rows":
        p, q = p.t().contiguous(), q.t().contiguous()
    dim = 0 if layout == "cols" else 1
    out, gp, gq = grads(p, q, dim)
    assert out[3].item() == -INF
    sl = (slice(None), 3) if layout == "cols" else (3, slice(None))
    assert torch.all(gp[sl] == 0) and torch.all(gq[sl] == 0)
    assert torch.isfinite(gp).all() and torch.isfinite(gq).all()
    others = [b for b in range(B) if b != 3]
    ref = R.iwelbo(p.double(), q.double(), dim)
    close(out[others], ref[others], dtype, scale=10)

    # What the eager expression does there, which the op improves on.
    pe = p.double().clone().requires_grad_()
    R.iwelbo(pe, q.double(), dim).sum().backward()
    assert torch.isnan(pe.grad[sl]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_neg_inf_sample_has_weight_exactly_zero(dtype, device):
    p = torch.randn(64, 9, dtype=dtype, device=device)
    p[:, 2] = torch.where(torch.arange(64, device=device) % 3 == 0, -INF, 0.5).to(dtype)
    p[5, :] = -INF
    w = iwae_fused.normalized_weights(p, dim=0)
    assert torch.all(w[5] == 0)
    assert torch.all(w[::3, 2] == 0)
    _, gp, _ = grads(p, torch.zeros_like(p))
    assert torch.all(gp[5] == 0)
    close(w.sum(0), torch.ones(9, dtype=torch.float64), dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [0, 1])
def test_nan_stays_in_its_slice(dtype, dim, device):
    x = torch.randn(300, 300, dtype=dtype, device=device)
    idx = (17, 4) if dim == 0 else (4, 17)
    x[idx] = math.nan  # the slice of output 4 holds a NaN
    out, gp, gq = grads(x, torch.zeros_like(x), dim)
    assert math.isnan(out[4].item())
    nan_out = torch.isnan(out)
    assert nan_out.sum().item() == 1
    g_slice = gp[:, 4] if dim == 0 else gp[4]
    assert torch.isnan(g_slice).all()
    assert torch.isnan(gp).sum().item() == 300


def test_nan_in_k_split_reduction_stays_in_its_slice():
    # Few outputs and many samples: the NaN is found by one thread's piece and
    # must survive the merge of the pieces.
    x = torch.randn(200_000, 2, dtype=torch.float64)
    x[123_456, 1] = math.nan
    out = iwae_fused.iwelbo(x)
    assert not math.isnan(out[0].item()) and math.isnan(out[1].item())
    close(out[0], R.iwelbo(x[:, 0]), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pos_inf_gives_pos_inf(dtype, device):
    x = torch.randn(10, 4, dtype=dtype, device=device)
    x[3, 1] = INF
    out = iwae_fused.iwelbo(x)
    assert out[1].item() == INF
    assert torch.isfinite(out[[0, 2, 3]]).all()
    assert out[1].item() == R.iwelbo(x)[1].item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("magnitude", [1e4, 1e6, -1e4, -1e6, 1e30])
def test_large_magnitudes_neither_overflow_nor_lose_accuracy(dtype, magnitude, device):
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(1000, 16, generator=gen, dtype=torch.float64)
    x = (magnitude + noise).to(dtype).to(device)
    out = iwae_fused.iwelbo(x)
    ref = R.iwelbo(x.double())
    assert torch.isfinite(out).all()
    # Relative to the magnitude, as float rounding of the inputs allows.
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(
        out.double().cpu(), ref.cpu(), atol=4 * eps * abs(magnitude) + 1e-4, rtol=0
    )
    # The weights keep full relative precision: they are taken against the
    # max shift, not against a log-sum-exp rounded at the magnitude's ulp.
    close(iwae_fused.normalized_weights(x), R.normalized_weights(x.double()), dtype)
    xg = x.clone().requires_grad_()
    iwae_fused.iwelbo(xg).sum().backward()
    close(xg.grad, R.normalized_weights(x.double()), dtype)


def test_all_neg_inf_normalized_weights_are_zero_not_nan(device):
    x = torch.full((5, 3), -INF, device=device)
    w = iwae_fused.normalized_weights(x)
    assert torch.all(w == 0)
    assert torch.isnan(torch.softmax(x, 0)).all()  # what softmax gives instead


def test_single_sample_is_identity(device):
    x = torch.randn(1, 7, device=device, dtype=torch.float64)
    close(iwae_fused.iwelbo(x), x[0], torch.float64)
    assert torch.all(iwae_fused.normalized_weights(x) == 1)


def test_float32_exponentials_are_accurate_over_their_range(device):
    # Weights of [0, x] for x across the whole float32 exp range, against
    # float64 on the same float32 inputs: the kernels' exp is within a few
    # ulp (<= 20 ulp, 2.4e-6, where the AVX2 kernels use at::vec's exp_u20).
    x = torch.linspace(-100, 80, 200_001).float()
    v = torch.stack([torch.zeros_like(x), x]).to(device)
    w = iwae_fused.normalized_weights(v)[1].double().cpu()
    ref = torch.softmax(v.double().cpu(), 0)[1]
    normal = ref > 1e-37  # near and below FLT_MIN, flushing to 0 is allowed
    rel = ((w - ref).abs() / ref)[normal]
    assert rel.max().item() < 3e-6
    assert torch.all(w[~normal] <= 1e-37)


@pytest.mark.parametrize("K", [2, 8])
def test_float32_logs_are_accurate_over_their_range(K, device):
    # One output per column: a 0 (the max) and K - 1 copies of x <= 0, so the
    # sum the kernels take the log of, 1 + (K - 1) exp(x), runs over (1, K].
    # The AVX-512 kernels' inline log is <= 1 ulp; with exp and sum rounding
    # the result stays within a few float32 ulp of float64 on the same inputs
    # (a 20-ulp log would miss by ~1e-6).
    x = torch.linspace(-30, 0, 100_001).float()
    v = torch.cat([torch.zeros(1, x.numel()), x.expand(K - 1, -1)]).to(device)
    out = iwae_fused.iwelbo(v, dim=0).double().cpu()
    ref = R.iwelbo(v.double().cpu(), dim=0)
    err = (out - ref).abs().max().item()
    assert err < (4e-7 if K == 2 else 1e-6), err


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64"),
    reason="the flush is x86's MXCSR (csrc/cpu/denormals.h); elsewhere denormals are kept",
)
@pytest.mark.parametrize(
    "dtype,gap", [(torch.float32, 100.0), (torch.float64, 720.0)], ids=["float32", "float64"]
)
def test_weights_below_the_smallest_normal_are_exactly_zero(dtype, gap):
    # exp(-gap) is a denormal (float32: 3.7e-44; float64: 1.6e-313). The CPU
    # kernels flush denormal results to 0 (csrc/cpu/denormals.h): computing
    # them costs a microcode assist each, 10x the forward's time for
    # log-weights spread over 100 nats. The bound is unaffected.
    x = torch.tensor([[0.0] * 3, [-gap, -gap / 2, 0.0]], dtype=dtype)
    w = iwae_fused.normalized_weights(x)
    assert w[1, 0].item() == 0.0
    assert w[1, 1].item() > 0  # exp(-gap / 2) is a normal number: kept
    xg = x.clone().requires_grad_()
    iwae_fused.iwelbo(xg).sum().backward()
    assert xg.grad[1, 0].item() == 0.0
    close(iwae_fused.iwelbo(x), R.iwelbo(x), dtype)


def test_float16_subnormals_survive_the_flush():
    # Flush-to-zero acts on float32/float64 arithmetic; float16's subnormal
    # range (below 6.1e-5) is normal in the float32 the kernels compute in,
    # and the conversions keep it: a weight of 1e-6 stored as float16, and a
    # float16 log-weight of 1e-6, are not lost.
    x = torch.tensor([[0.0, 0.0], [math.log(1e-6), 1e-6]], dtype=torch.float16)
    w = iwae_fused.normalized_weights(x)
    ref = torch.softmax(x.double(), 0)
    assert w[1, 0].item() > 0
    close(w, ref, torch.float16)
    close(iwae_fused.iwelbo(x), R.iwelbo(x.double()), torch.float16)
    assert iwae_fused.iwelbo(x)[1].item() > 0  # log((2 + 1e-6) / 2), from the 1e-6 input


def test_the_callers_denormal_mode_is_restored():
    # The kernels set flush-to-zero per thread and must put it back: torch ops
    # after them, on the calling thread and on the worker threads, still
    # produce denormals. In a fresh process, so that the intra-op pool's
    # threads are created inside our first call (threads inherit the
    # creating thread's mode: a guard around the parallel region leaked so).
    script = """
import torch, iwae_fused
torch.set_num_threads(2)
x = torch.randn(64, 100_000)  # no parallel op before ours: it makes the pool
iwae_fused.iwelbo(x)
x = x * 100
iwae_fused.normalized_weights(x)
xg = x.clone().requires_grad_()
iwae_fused.iwelbo(xg, dim=1).sum().backward()
iwae_fused.iwelbo(torch.randn(100_000, 2) * 100, dim=0)  # split-K tail
tiny = torch.full((1 << 20,), 1e-30) * 1e-10  # 1e-40, a denormal float32
assert bool(torch.all(tiny > 0)), "a worker thread kept flush-to-zero"
assert (torch.tensor([1e-30]) * 1e-10).item() > 0, "the caller kept flush-to-zero"
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
