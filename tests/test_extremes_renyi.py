"""The Renyi bound near alpha = 1 at every spread of the log-weights: values
and gradients against 50-digit mpmath (mp_reference.py), alpha in (0.5, 1.5)
x spreads from 1e-6 to 1e4 nats x K from 2 to 10^4, every dtype, on the CPU
and the emulated CUDA kernels.

For |1 - alpha| < 1/4 the bound goes through the near-ELBO path
(csrc/log_mean_exp.h), which picks its form per slice by the spread; beyond
that through the fused kernels. Each slice holds few distinct values (with
multiplicities), so a K = 10^4 reference costs a few exponentials; the
samples are shuffled so the kernels see them in no particular order."""

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
C = 8  # ulps of the computation per unit of condition (see tolerances)


def on(backend):
    if backend == "cpu":
        return contextlib.nullcontext()
    if not cuda_emulator.available():
        pytest.skip("built without the CUDA emulator (IWAE_FUSED_CUDA_EMU=1)")
    return cuda_emulator.emulated()


def opmath(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def column(pattern, spread, loc, K, gen):
    """(values, counts) of one slice: `spread` nats from its largest value to
    its smallest, at most 16 distinct values."""
    if pattern == "one-above":  # one sample at the top, the rest `spread` below
        return [loc, loc - spread], [1, K - 1]
    n = min(K, 16)
    u = torch.rand(n, generator=gen, dtype=torch.float64).tolist()
    u[0], u[-1] = 0.0, 1.0
    values = [loc - spread * v for v in u]
    counts = [1] * n
    for _ in range(K - n):
        counts[int(torch.randint(n, (1,), generator=gen))] += 1
    return values, counts


@functools.lru_cache(maxsize=None)
def reference(values, counts, alpha):
    return mp.renyi(list(values), alpha, list(counts))


def run_and_check(columns, alpha, dtype, backend, dim, gen):
    """The columns [(values, counts)] as the slices of one [K, C] (dim 0) or
    [C, K] (dim 1) tensor, shuffled; the bound and its gradient against the
    reference. Returns the worst error / tolerance."""
    K = sum(columns[0][1])
    x = torch.empty(len(columns), K, dtype=torch.float64)
    for c, (values, counts) in enumerate(columns):
        row = torch.cat([torch.full((n,), v, dtype=torch.float64) for v, n in zip(values, counts)])
        x[c] = row[torch.randperm(K, generator=gen)]
    x = x.to(dtype)
    if dim == 0:
        x = x.T.contiguous()
    p = x.clone().requires_grad_()
    with on(backend):
        out = iwae_fused.iwelbo(p, dim=dim, alpha=alpha)
        out.backward(torch.ones_like(out))
    out = out.detach().double().reshape(-1)
    rows = x.double().movedim(dim, -1).contiguous()
    grads = p.grad.double().movedim(dim, -1).contiguous()
    beta = 1.0 - alpha
    fused = alpha != 1.0 and abs(beta) >= 0.25
    eps_c, eps_o = torch.finfo(opmath(dtype)).eps, torch.finfo(dtype).eps
    tiny = torch.finfo(dtype).tiny
    logk = math.log(K + 1)
    worst = 0.0
    for c in range(len(columns)):
        # The distinct values as rounded to the dtype, and where they are.
        vals, where, counts = torch.unique(rows[c], return_inverse=True, return_counts=True)
        bound, w = reference(tuple(vals.tolist()), tuple(counts.tolist()), alpha)
        big, top = rows[c].abs().max().item(), rows[c].max().item()
        # The bound: a few ulps of the computation relative to |B| + max|x|
        # (the rounding of y = beta x, shifted and summed), times log K
        # (the sums); the fused kernels add ~eps log K / |beta| (log s - log K).
        cond = (abs(float(bound)) + big) * logk + (logk / abs(beta) if fused else 0.0)
        err = abs(float(out[c]) - bound)
        tol = eps_o * abs(bound) + C * eps_c * cond + tiny
        assert err <= tol, ("bound", c, alpha, float(bound), float(out[c]), err, tol)
        worst = max(worst, float(err / tol))
        # Each weight: exp of beta (x_i - max) - log(sum): relative to
        # |beta| (max|x| + |x_i - max|) + log K.
        exact = torch.tensor([float(v) for v in w], dtype=torch.float64)[where]
        cond = exact * (abs(beta) * (big + (rows[c] - top).abs()) + logk)
        tol = eps_o * exact + C * eps_c * cond + tiny
        err = (grads[c] - exact).abs()
        i = int(torch.argmax(err / tol))
        assert err[i] <= tol[i], ("weight", c, alpha, rows[c, i].item(), exact[i].item(),
                                  grads[c, i].item(), err[i].item(), tol[i].item())
        worst = max(worst, (err[i] / tol[i]).item())
    return worst


ALPHAS = [0.51, 0.74, 0.76, 0.8, 0.99, 1 - 1e-6, 1 - 1e-9, 1.0, 1 + 1e-9, 1 + 1e-6, 1.01, 1.2,
          1.24, 1.26, 1.49]
# The large K take a subset (both routes, both sides of 1, near and far).
ALPHAS_LARGE_K = [0.51, 0.76, 0.99, 1 - 1e-9, 1 + 1e-6, 1.24, 1.26]
SPREADS = [1e-6, 1e-3, 1.0, 30.0, 300.0, 1e4]
KS = [2, 3, 17, 226, 3000, 10_000]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("K", KS)
def test_renyi_grid(K, dtype, backend):
    # Every alpha of the grid at every spread (two slice patterns, three
    # locations): one call per alpha, the slices side by side.
    gen = torch.Generator().manual_seed(K)
    columns = []
    for spread in SPREADS:
        for pattern in ("one-above", "spread"):
            loc = [0.0, -100.0, 37.5][len(columns) % 3]
            columns.append(column(pattern, spread, loc, K, gen))
    for i, alpha in enumerate(ALPHAS if K < 1000 else ALPHAS_LARGE_K):
        run_and_check(columns, alpha, dtype, backend, dim=i % 2, gen=gen)


@pytest.mark.parametrize("backend", BACKENDS)
def test_renyi_near_one_of_the_issue(backend):
    # x = [0, -60 x 2999] at alpha = 0.8 (float32): -39.94358 and a gradient
    # of 0.982490 before (the near-ELBO form cancelled), -39.94054 and
    # 0.981907 exact.
    x = torch.full((3000,), -60.0)
    x[0] = 0.0
    x.requires_grad_()
    with on(backend):
        v = iwae_fused.iwelbo(x, alpha=0.8)
        v.backward()
    bound, w = mp.renyi([0.0, -60.0], 0.8, [1, 2999])
    assert abs(v.item() - float(bound)) <= 4e-6 * abs(float(bound))
    assert abs(x.grad[0].item() - float(w[0])) <= 4e-6
    assert abs(x.grad.double().sum().item() - 1.0) <= 1e-5


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    alpha=st.one_of(
        st.floats(0.5, 1.5, exclude_min=True, exclude_max=True),
        st.integers(2, 12).flatmap(lambda e: st.sampled_from([1 - 10.0**-e, 1 + 10.0**-e])),
    ),
    log_spread=st.floats(-6, 4),
    log_k=st.floats(math.log10(2), 4),
    loc=st.floats(-1e3, 1e3),
    pattern=st.sampled_from(["one-above", "spread"]),
    dtype=st.sampled_from(DTYPES),
    backend=st.sampled_from(BACKENDS),
    seed=st.integers(0, 2**31 - 1),
)
def test_renyi_random(alpha, log_spread, log_k, loc, pattern, dtype, backend, seed):
    if backend == "cuda-emu" and not cuda_emulator.available():
        return
    gen = torch.Generator().manual_seed(seed)
    K = max(2, int(round(10**log_k)))
    col = column(pattern, 10**log_spread, loc, K, gen)
    run_and_check([col, column("spread", 10**log_spread, -loc, K, gen)], alpha, dtype,
                  backend, dim=seed % 2, gen=gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("alpha,spread", [(0.8, 60.0), (1 - 1e-6, 0.1), (1 + 1e-9, 1e4)])
def test_renyi_near_one_under_forward_ad_and_double_backward(alpha, spread, dtype):
    # Forward-mode AD (and torch.func) take the differentiable composite
    # (csrc/autograd_composite.cpp), double backward differentiates the
    # weights: the value, the tangent along a sample (its weight) and the
    # weights are as accurate there as on the fused path.
    import torch.autograd.forward_ad as fwAD

    gen = torch.Generator().manual_seed(3)
    values, counts = column("spread", spread, -50.0, 300, gen)
    x = torch.cat([torch.full((n,), v, dtype=torch.float64) for v, n in zip(values, counts)]).to(dtype)
    vals = x.double().tolist()
    bound, w = mp.renyi(vals, alpha)
    eps = torch.finfo(dtype).eps
    K, big = x.numel(), x.abs().max().item()
    tol = 8 * eps * math.log(K + 1) * (abs(float(bound)) + big)
    tangent = torch.zeros_like(x)
    tangent[0] = 1.0
    with fwAD.dual_level():
        out = iwae_fused.iwelbo(fwAD.make_dual(x, tangent), alpha=alpha)
        value, jvp = fwAD.unpack_dual(out)
    assert abs(value.item() - float(bound)) <= tol, (value.item(), float(bound))
    # A weight's relative error: |1 - alpha| (max|x| + |x_i - max|) + log K ulps.
    rtol = 8 * eps * (math.log(K + 1) + abs(1 - alpha) * 2 * big)
    assert abs(jvp.item() - float(w[0])) <= rtol * float(w[0])
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(iwae_fused.iwelbo(xg, alpha=alpha), xg, create_graph=True)
    exact = torch.tensor([float(v) for v in w], dtype=torch.float64)
    torch.testing.assert_close(g.double(), exact, rtol=rtol, atol=0)
