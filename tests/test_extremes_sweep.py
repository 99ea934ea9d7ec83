"""The other places where an exponential of a large negative gap could
underflow into a division or a log: the weight diagnostics (ESS, largest
weight), DReG's weights, the streamed evaluation state (chunks merged, ESS and
largest weight from the states of w and w^2) and PSIS. Log-weights 720, 800
and 1e4 nats apart (beyond double's exponent range), against 50-digit mpmath,
on the CPU and the emulated CUDA kernels."""

import contextlib
import math

import mpmath
import pytest
import torch

import iwae_fused
from iwae_fused import cuda_emulator
from iwae_fused.evaluation import estimate_log_likelihood

import mp_reference as mp

BACKENDS = ["cpu", "cuda-emu"]
GAPS = [720.0, 800.0, 1e4]
EPS = torch.finfo(torch.float64).eps


def on(backend):
    if backend == "cpu":
        return contextlib.nullcontext()
    if not cuda_emulator.available():
        pytest.skip("built without the CUDA emulator (IWAE_FUSED_CUDA_EMU=1)")
    return cuda_emulator.emulated()


def spread_columns(gap):
    """[6, 3] log-weights: per column a sample `gap` above the others."""
    x = torch.tensor([[0.0, -1.0, 5.0], [-gap, 0.0, 5.0 - gap], [-gap - 1, -gap, -gap],
                      [-2 * gap, -gap - 3, 5.0 - gap], [-gap, -gap, -2 * gap], [-gap - 7, -1.5, 4.0]],
                     dtype=torch.float64)
    return x


def mp_diagnostics(col):
    ctx = mpmath.mp.clone()
    ctx.dps = 50
    xs = [ctx.mpf(v) for v in col]
    m = max(xs)
    w = [ctx.exp(v - m) for v in xs]
    s = ctx.fsum(w)
    return s * s / ctx.fsum(v * v for v in w), max(w) / s


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gap", GAPS)
def test_weight_diagnostics_at_any_gap(gap, backend):
    x = spread_columns(gap)
    with on(backend):
        ess, max_w = iwae_fused.weight_diagnostics(x)
    for b in range(x.shape[1]):
        e, mw = mp_diagnostics(x[:, b].tolist())
        assert mp.rel_err(ess[b].item(), e) <= 8 * EPS, (b, ess[b].item(), float(e))
        assert mp.rel_err(max_w[b].item(), mw) <= 8 * EPS, (b, max_w[b].item(), float(mw))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("z_weight", ["dreg", "rws", "stl"])
@pytest.mark.parametrize("gap", GAPS)
def test_dreg_at_any_gap(gap, z_weight, backend):
    # The z-path weights w^2 (dreg), w - w^2 (rws), w (stl) of samples `gap`
    # below the max are 0 to double precision, the max's are 1, 0, 1: the
    # gradients through z are finite and exact, and log_p's are the weights.
    x = spread_columns(gap)
    z = torch.zeros_like(x).requires_grad_()
    theta = torch.zeros_like(x).requires_grad_()  # log_p's direct path
    p = x + z + theta
    q = z * 0.0
    with on(backend):
        iwae_fused.dreg(p, q, z, 0, z_weight).sum().backward()
    w = torch.tensor([[float(v) for v in mp.renyi(x[:, b].tolist(), 0.0)[1]] for b in range(3)],
                     dtype=torch.float64).T
    t = {"dreg": w * w, "rws": w - w * w, "stl": w}[z_weight]
    assert torch.isfinite(z.grad).all() and torch.isfinite(theta.grad).all()
    torch.testing.assert_close(theta.grad, w, rtol=4 * EPS, atol=1e-300)
    torch.testing.assert_close(z.grad, t, rtol=8 * EPS, atol=1e-300)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gap", GAPS)
def test_streamed_evaluation_at_any_gap(gap, backend):
    # Chunks whose largest log-weights are `gap` apart merge in log space:
    # the estimate and the ESS / largest weight from the states of w and w^2
    # are those of all samples at once.
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(4, 3, generator=g, dtype=torch.float64) - gap * k for k in (1, 0, 2, 1)]
    chunks[2][1, 2] = 3.0  # a late chunk holds one column's max
    it = iter(chunks)
    with on(backend):
        est = estimate_log_likelihood(lambda n: next(it), 16, chunk_size=4, diagnostics=True)
    allw = torch.cat(chunks)
    for b in range(3):
        col = allw[:, b].tolist()
        bound, _ = mp.renyi(col, 0.0)
        e, mw = mp_diagnostics(col)
        assert mp.rel_err(est.log_likelihood[b].item(), bound) <= 4 * EPS
        assert mp.rel_err(est.ess[b].item(), e) <= 64 * EPS * (1 + gap / 100)
        assert mp.rel_err(est.max_weight[b].item(), mw) <= 64 * EPS * (1 + gap / 100)


def test_pareto_k_when_the_tail_spans_beyond_double():
    # k-hat fits the M largest weights' exceedances over the (M+1)-th,
    # relative to the largest weight. When the tail's first quartile lies
    # more than ~745 nats below the largest weight, its exceedances are 0 in
    # double and no tail can be fit: k-hat is +inf ("cannot be assessed",
    # also the verdict of k-hat > 0.7: the true k-hat of such a tail is far
    # above 1), never NaN, and the smoothed weights are the raw ones.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100, 2, generator=g, dtype=torch.float64)
    x[7, 0] += 800.0  # one weight e^800 times the others'
    k = iwae_fused.pareto_k(x)
    assert k[0].item() == math.inf
    assert math.isfinite(k[1].item())
    w = iwae_fused.psis_weights(x)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w[:, 0], torch.softmax(x[:, 0], 0), rtol=0, atol=0)
