"""The CPU weights pass without saved stats (dense_rows.h: rows of 2, 4 or 8
samples with AVX-512 recompute them; other layouts get them from a
reduction in the op glue): the backward op given stats of shape [0], and
normalized_weights, against the backward from saved stats and the float64
reference. The CPU training step itself always saves them
(csrc/saved_stats.h)."""

import math

import pytest
import torch

import iwae_fused
from iwae_fused import reference as R

from conftest import close

OPS = torch.ops.iwae_fused


def forward_ops(p, q, dim, alpha=0.0):
    """The iwae_fused ops the training forward calls (by the profiler)."""
    with torch.autograd.profiler.profile() as prof:
        iwae_fused.iwelbo(p, q, dim=dim, alpha=alpha)
    return {e.name for e in prof.function_events if e.name.startswith("iwae_fused::")}


def test_cpu_training_step_saves_stats():
    for K in (2, 3, 4, 8):
        p = torch.randn(40, K, requires_grad=True)
        assert "iwae_fused::_iwelbo_forward" in forward_ops(p, p.detach(), 1), K
    with torch.no_grad():  # not differentiated: no stats
        assert "iwae_fused::_iwelbo_forward" not in forward_ops(torch.randn(40, 2), None, 1)


@pytest.mark.parametrize("alpha", [0.0, 0.5, -1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("K", [2, 4, 8])
def test_recomputed_backward(K, dtype, alpha):
    """The backward op given stats of shape [0], against autograd's (saved
    stats): every tail of the 16-row tiles, -inf/+inf/NaN rows, the
    incoming gradient contiguous, a broadcast scalar (.sum()) and strided,
    either output alone."""
    gen = torch.Generator().manual_seed(K)
    for n in (1, 5, 16, 23, 64, 131):
        p0 = (torch.randn(n, K, generator=gen, dtype=torch.float64) * 3).to(dtype)
        q0 = torch.randn(n, K, generator=gen, dtype=torch.float64).to(dtype)
        if n >= 4:
            p0[0] = -math.inf
            p0[1, 0] = math.inf
            p0[1, 1] = 300.0  # exp overflows against the +inf row's shift of 0
            p0[2, K - 1] = math.nan
        for g_form in ("contiguous", "sum", "strided"):
            for wrt in ("both", "p", "q"):
                p = p0.clone().requires_grad_(wrt != "q")
                q = q0.clone().requires_grad_(wrt != "p")
                out = iwae_fused.iwelbo(p, q, dim=1, alpha=alpha)
                if g_form == "contiguous":
                    g = torch.randn(n, generator=gen).to(dtype)
                elif g_form == "sum":
                    g = torch.ones((), dtype=dtype).expand(n)
                else:
                    g = torch.randn(2 * n, generator=gen).to(dtype)[::2]
                grads = torch.autograd.grad(out, [t for t in (p, q) if t.requires_grad], g)
                not_saved = OPS.iwelbo_backward(
                    g, torch.empty(0, dtype=torch.float64 if dtype == torch.float64 else torch.float32),
                    p0, q0, 1, False, alpha, [wrt != "q", wrt != "p"])
                # From saved stats, the same op glue.
                _, stats = OPS._iwelbo_forward(p0, q0, 1, False, alpha)
                gp, gq = OPS.iwelbo_backward(g, stats, p0, q0, 1, False, alpha, [True, True])
                want = [x for x, on in ((gp, wrt != "q"), (gq, wrt != "p")) if on]
                for a, b in zip(grads, want):
                    close(a, b, dtype)
                not_saved = [x for x in not_saved if x.numel()]
                assert len(not_saved) == len(want)
                for a, b in zip(not_saved, want):
                    close(a, b, dtype)
                grads = not_saved  # the checks below on the recomputed ones
                # The finite rows against the float64 reference.
                rows = slice(3, None) if n >= 4 else slice(None)
                p64 = p0[rows].double().requires_grad_()
                q64 = q0[rows].double().requires_grad_()
                R.iwelbo(p64, q64, 1, False, alpha).backward(g[rows].double())
                ref = [x for x, on in ((p64.grad, wrt != "q"), (q64.grad, wrt != "p")) if on]
                for a, b in zip(grads, ref):
                    close(a[rows], b, dtype, scale=1 + g.abs().max().item())
                if n >= 4 and wrt != "q":
                    assert torch.all(grads[0][0] == 0)  # all -inf row
                    # +inf: NaN there, 0 beside it
                    assert torch.isnan(grads[0][1, 0]) and torch.all(grads[0][1, 1:] == 0)
                    assert torch.isnan(grads[0][2]).all()  # NaN row


def test_normalized_weights_of_short_rows():
    """normalized_weights over rows of 2, 4, 8 (one pass on AVX-512) against
    the softmax."""
    for K in (2, 4, 8):
        for dtype in (torch.float32, torch.bfloat16):
            p = torch.randn(37, K, dtype=torch.float64) * 4
            w = iwae_fused.normalized_weights(p.to(dtype), dim=1)
            close(w, torch.softmax(p.to(dtype).double(), 1), dtype)
