"""VIMCO: value and both gradients against the O(K^2) float64 reference,
stability when one weight dominates, edge cases and registration."""

import math

import pytest
import torch
from hypothesis import assume, given

import iwae_fused
from iwae_fused import reference as R

from conftest import DTYPES, close
from test_against_reference import SETTINGS, as64, cases, make_inputs

ops = torch.ops.iwae_fused


def grads(fn, p, q, dim=0, g=None):
    p = p.detach().clone().requires_grad_()
    q = q.detach().clone().requires_grad_()
    out = fn(p, q, dim)
    out.backward(torch.ones_like(out) if g is None else g)
    return out.detach(), p.grad, q.grad


@SETTINGS
@given(cases())
def test_vimco_matches_reference(c):
    c = dict(c, with_q=True)
    p, q = make_inputs(c)
    shape = torch.broadcast_shapes(p.shape, q.shape)
    assume(len(shape) > 0 and shape[c["dim"]] >= 2 and shape[c["dim"]] <= 300)
    out, gp, gq = grads(iwae_fused.vimco, p, q, c["dim"])
    rout, rgp, rgq = grads(R.vimco, as64(p), as64(q), c["dim"])
    dt = c["dtype"]
    close(out, rout, dt, scale=1 + rout.abs().max().item())
    close(gp, rgp, dt, scale=4)
    close(gq, rgq, dt, scale=4 * (1 + rgq.abs().max().item()))


def signals_mp(log_w, digits=50):
    """L - L_-j for every sample of one example, in mpmath at `digits` digits:
    an independent check where float64 itself cancels (the O(K^2) reference
    subtracts two bounds ~60 nats apart from the signal's 1e-14)."""
    import mpmath

    mpmath.mp.dps = digits
    x = [mpmath.mpf(float(v)) for v in log_w]
    K = len(x)
    total = mpmath.fsum(mpmath.exp(v) for v in x)
    out = []
    for j in range(K):
        others = x[:j] + x[j + 1 :]
        f = mpmath.exp(mpmath.fsum(others) / (K - 1))
        out.append(float(mpmath.log(total) - mpmath.log(total - mpmath.exp(x[j]) + f)))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [2, 3, 50])
def test_vimco_is_stable_when_one_weight_dominates(dtype, K, device):
    # A sample 60 nats above the rest: the naive sum-minus-one cancels all of
    # the others' weight, even in float64; the op keeps every signal to its
    # dtype's relative precision.
    g = torch.Generator().manual_seed(K)
    log_p = torch.randn(K, 8, generator=g, dtype=torch.float64)
    log_p[0] += 60.0
    log_q = torch.randn(K, 8, generator=g, dtype=torch.float64)
    _, gp, gq = grads(iwae_fused.vimco, log_p.to(dtype).to(device), log_q.to(dtype).to(device))
    log_w = log_p.to(dtype).double() - log_q.to(dtype).double()
    w = torch.softmax(log_w, 0)
    expected = torch.tensor([signals_mp(log_w[:, b]) for b in range(8)], dtype=torch.float64).T - w
    rel = ((gq.double().cpu() - expected).abs() / expected.abs()).max().item()
    assert rel < (1e-5 if dtype == torch.float32 else 1e-12), rel
    close(gp, w, dtype)


def test_vimco_all_neg_inf_example_and_nan(device):
    p = torch.randn(5, 4, dtype=torch.float64, device=device)
    q = torch.zeros(5, 4, dtype=torch.float64, device=device)
    p[:, 1] = -math.inf
    p[2, 3] = math.nan
    out, gp, gq = grads(iwae_fused.vimco, p, q)
    assert out[1].item() == -math.inf
    assert torch.all(gp[:, 1] == 0) and torch.all(gq[:, 1] == 0)
    assert math.isnan(out[3].item()) and torch.isnan(gq[:, 3]).all()
    assert torch.isfinite(gq[:, [0, 2]]).all()


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("K", [2, 3, 5, 17])
@pytest.mark.parametrize("B", [1, 7, 8, 9, 17])
def test_vimco_lane_tails_ties_and_neg_inf(B, K, dim, device):
    # The CPU kernels put L consecutive examples in the lanes of a vector of
    # doubles (csrc/cpu/vimco_lanes.h) from 8 examples on, and run one example
    # per thread below that (B = 1, 7 here): batches that are not a multiple of L,
    # an example with one -inf sample (the geometric mean of the others then
    # excludes it, or is 0 for the others), tied maxima (the first is the
    # argmax) and examples where the max is sample 0 or the last.
    g = torch.Generator().manual_seed(B * 100 + K)
    p = torch.randn(K, B, generator=g, dtype=torch.float64) * 3
    q = torch.randn(K, B, generator=g, dtype=torch.float64)
    p[K // 2, 0] = -math.inf
    if B > 1:
        p[:, 1] = 0.0
        q[:, 1] = 0.0  # all tied
    if B > 2:
        p[0, 2] += 50.0  # the max at sample 0
    if B > 3:
        p[K - 1, 3] += 50.0  # the max at the last sample
    if dim == 1:
        p, q = p.T.contiguous(), q.T.contiguous()
    p, q = p.to(device), q.to(device)
    out, gp, gq = grads(iwae_fused.vimco, p, q, dim)
    _, rgp, rgq = grads(R.vimco, p, q, dim)
    # The value is the IWAE bound (the reference's surrogate gives NaN at
    # K = 2 with a -inf sample: its other sample's signal is +inf).
    close(out, R.iwelbo(p, q, dim), torch.float64)
    close(gp, rgp, torch.float64)
    close(gq, rgq, torch.float64, scale=1 + rgq.abs().max().item())


@pytest.mark.parametrize("dev", ["cpu", "meta"])
def test_vimco_needs_two_samples(dev):
    with pytest.raises(ValueError, match=r"vimco\(\): needs at least 2 samples.*K = 1"):
        iwae_fused.vimco(torch.zeros(1, 3, device=dev), torch.zeros(1, 3, device=dev))


def test_vimco_registration(device):
    gen = torch.Generator().manual_seed(0)
    for shape, dim in [((6, 4), 0), ((4, 6), 1), ((3, 5, 2), -2)]:
        p = torch.randn(shape, generator=gen).to(device)
        q = torch.randn(shape, generator=gen).to(device)
        for rg in (False, True):
            torch.library.opcheck(
                ops.vimco.default, (p.clone().requires_grad_(rg), q.clone().requires_grad_(rg), dim, False)
            )
        out, state = ops._vimco_forward(p, q, dim, False)
        torch.library.opcheck(ops._vimco_forward.default, (p, q, dim, True))
        for mask in ([True, True], [True, False], [False, True]):
            torch.library.opcheck(
                ops.vimco_backward.default, (torch.randn_like(out), state, p, q, dim, False, mask)
            )
    close(iwae_fused.vimco(p.double(), q.double()), iwae_fused.iwelbo(p.double(), q.double()), torch.float64)
    meta = iwae_fused.vimco(torch.empty(7, 3, device="meta"), torch.empty(7, 3, device="meta"))
    assert meta.shape == (3,)


def test_vimco_torch_compile():
    torch._dynamo.reset()
    f = torch.compile(lambda p, q: -iwae_fused.vimco(p, q).mean(), fullgraph=True, backend="aot_eager")
    p = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    q = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    f(p, q).backward()
    _, rgp, rgq = grads(lambda a, b, d: -R.vimco(a, b, d).mean(), p, q)
    close(p.grad, rgp, torch.float64)
    close(q.grad, rgq, torch.float64)
