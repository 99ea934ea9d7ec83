"""The weights pass over dense rows (csrc/cpu/dense_rows.h) and the forward's
transposed tiles (short_rows.h, reduce_rows_transposed) against the float64
reference, where the paths differ from the other tests' cases: every
incoming-gradient layout the pass reads in place (contiguous, the expanded
scalar of .sum(), a strided one it must not take), only one of log_p and
log_q requiring grad, DReG's z-path modes, batches that end part-way through
a period of rows, and wide log-weights.

Test ids name the path: `short` (K < L: lanes hold several rows, the rows'
values permuted into them), `long` (K >= L: one row at a time); L is 16
float lanes (8 for float64) under AVX-512. The same tests run under
ATEN_CPU_CAPABILITY=avx2 and =default (L = 8 / the portable build).
"""

import pytest
import torch

import iwae_fused
from iwae_fused import reference as R

from conftest import close, log_weights_like

KS = [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 50, 130]
BS = [1, 5, 67, 131]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def lanes(dtype):
    return 8 if dtype == torch.float64 else 16


def kid(K):
    return f"K{K}-{'short' if K < 16 else 'long'}"


def rows(B, K, dtype, seed, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return (log_weights_like((B, K), dtype, "cpu", scale=scale, gen=gen),
            log_weights_like((B, K), dtype, "cpu", scale=scale, gen=gen))


def reference_grads(p, q, g, alpha=0.0):
    p64 = p.detach().double().requires_grad_()
    q64 = None if q is None else q.detach().double().requires_grad_()
    R.iwelbo(p64, q64, 1, alpha=alpha).backward(g.double())
    return p64.grad, None if q is None else q64.grad


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B", BS, ids=[f"B{b}" for b in BS])
@pytest.mark.parametrize("K", KS, ids=[kid(k) for k in KS])
@pytest.mark.parametrize("g_layout", ["contiguous", "sum", "strided"])
def test_incoming_gradient_layouts(K, B, dtype, g_layout):
    p, q = rows(B, K, dtype, seed=K * 1000 + B)
    for q_arg in (q, None):  # both call forms
        pg = p.clone().requires_grad_()
        qg = None if q_arg is None else q_arg.clone().requires_grad_()
        out = iwae_fused.iwelbo(pg, qg, 1)
        if g_layout == "sum":  # an expanded scalar: read in place
            g = torch.full((B,), 1.0, dtype=dtype)
            out.sum().backward()
        elif g_layout == "strided":  # every other element of a buffer
            g = torch.randn(2 * B, generator=torch.Generator().manual_seed(B)).to(dtype)[::2]
            out.backward(g)
        else:
            g = torch.randn(B, generator=torch.Generator().manual_seed(B)).to(dtype)
            out.backward(g)
        rp, rq = reference_grads(p, q_arg, g)
        close(pg.grad, rp, dtype)
        if qg is not None:
            close(qg.grad, rq, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("K", KS, ids=[kid(k) for k in KS])
@pytest.mark.parametrize("which", ["log_p", "log_q"])
def test_one_input_requires_grad(K, dtype, which):
    p, q = rows(67, K, dtype, seed=K)
    pg = p.clone().requires_grad_(which == "log_p")
    qg = q.clone().requires_grad_(which == "log_q")
    g = torch.randn(67, generator=torch.Generator().manual_seed(3)).to(dtype)
    iwae_fused.iwelbo(pg, qg, 1).backward(g)
    rp, rq = reference_grads(p, q, g)
    if which == "log_p":
        close(pg.grad, rp, dtype)
        assert qg.grad is None
    else:
        close(qg.grad, rq, dtype)
        assert pg.grad is None


@pytest.mark.parametrize("K", KS, ids=[kid(k) for k in KS])
@pytest.mark.parametrize("z_weight", ["dreg", "rws", "stl"])
def test_dreg_modes(K, z_weight):
    # z = log_p itself: the z-path correction comes straight back to log_p,
    # so it checks the pass's second output (the correction, not -g w).
    p, q = rows(131, K, torch.float64, seed=K)
    pg = p.clone().requires_grad_()
    qg = q.clone().requires_grad_()
    g = torch.randn(131, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    iwae_fused.dreg(pg, qg, pg, 1, z_weight=z_weight).backward(g)
    p2 = p.clone().requires_grad_()
    q2 = q.clone().requires_grad_()
    R.dreg(p2, q2, p2, 1, z_weight=z_weight).backward(g)
    close(pg.grad, p2.grad, torch.float64)
    close(qg.grad, q2.grad, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("K", [2, 5, 16, 50], ids=[kid(k) for k in (2, 5, 16, 50)])
def test_wide_log_weights_and_renyi(K, dtype):
    # Log-weights hundreds of nats apart (weights flushed to exactly 0, one
    # per row near 1), a -inf row and a +inf sample, under the Renyi scaling.
    p, q = rows(131, K, dtype, seed=K, scale=200.0)
    p[7] = -float("inf")
    p[11, 0] = float("inf")
    for alpha in (0.0, 0.5):
        pg = p.clone().requires_grad_()
        qg = q.clone().requires_grad_()
        out = iwae_fused.iwelbo(pg, qg, 1, alpha=alpha)
        g = torch.randn(131, generator=torch.Generator().manual_seed(K)).to(dtype)
        out.backward(g)
        close(out, R.iwelbo(p.double(), q.double(), 1, alpha=alpha), dtype, scale=100)
        rp, rq = reference_grads(p, q, g, alpha)
        # Where the eager expression gives NaN for the whole row, the op
        # gives 0 (all -inf) and NaN only at the +inf sample (its docstring).
        assert torch.all(pg.grad[7] == 0) and torch.all(qg.grad[7] == 0)
        assert torch.isnan(pg.grad[11, 0]) and torch.all(pg.grad[11, 1:] == 0)
        keep = torch.ones(131, dtype=torch.bool)
        keep[[7, 11]] = False
        close(pg.grad[keep], rp[keep], dtype)
        close(qg.grad[keep], rq[keep], dtype)


@pytest.mark.parametrize("K", [3, 16, 50], ids=[kid(k) for k in (3, 16, 50)])
def test_normalized_weights_rows(K):
    # The weights pass with no incoming gradient (g = 1).
    p, q = rows(131, K, torch.float32, seed=K)
    close(iwae_fused.normalized_weights(p, q, 1), R.normalized_weights(p.double(), q.double(), 1),
          torch.float32)
