"""The vmap batching rules (iwae_fused/batching.py) under the vmap settings
that change how they are reached: out_dims, chunk_size, a per-example 0-dim
log_q, nesting with the operands batched at different levels, a number
operand, and vmap around torch.func.grad / jvp. Each against a Python loop
over the vmapped dim, with functorch's per-sample fallback off (an op
reaching it raises instead of passing slowly)."""

import pytest
import torch

import iwae_fused


@pytest.fixture(autouse=True)
def no_vmap_fallback():
    before = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    yield
    torch._C._functorch._set_vmap_fallback_enabled(before)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def looped(fn, in_dims, args, out_dims=0):
    n = next(a.shape[d] for a, d in zip(args, in_dims) if d is not None)
    outs = [fn(*[a if d is None else a.select(d, i) for a, d in zip(args, in_dims)]) for i in range(n)]
    if isinstance(outs[0], tuple):
        od = out_dims if isinstance(out_dims, tuple) else (out_dims,) * len(outs[0])
        return tuple(torch.stack([o[j] for o in outs], od[j]) for j in range(len(outs[0])))
    return torch.stack(outs, out_dims)


def check(fn, in_dims, args, out_dims=0, chunk_size=None):
    got = torch.vmap(fn, in_dims=in_dims, out_dims=out_dims, chunk_size=chunk_size)(*args)
    torch.testing.assert_close(got, looped(fn, in_dims, args, out_dims), equal_nan=True)


OPS = {
    "iwelbo": lambda p, q: iwae_fused.iwelbo(p, q, 0, True, 0.3),
    "normalized_weights": lambda p, q: iwae_fused.normalized_weights(p, q, -2),
    "weight_diagnostics": lambda p, q: iwae_fused.weight_diagnostics(p, q, 0),
    "vimco": lambda p, q: iwae_fused.vimco(p, q, 0),
    "dreg": lambda p, q: iwae_fused.dreg(p, q, p, 0),
}


@pytest.mark.parametrize("name", list(OPS))
def test_out_dims_and_chunk_size(name):
    p, q = randn(4, 6, 3), randn(4, 6, 3, seed=1)
    out_dims = (1, 1) if name == "weight_diagnostics" else 1
    check(OPS[name], (0, 0), (p, q), out_dims=out_dims)
    check(OPS[name], (0, 0), (p, q), chunk_size=3)


@pytest.mark.parametrize("name", list(OPS))
def test_per_example_0dim_log_q(name):
    # log_q one number per vmapped example: a 0-dim operand inside vmap
    p, q = randn(4, 6, 3), randn(4, seed=1)
    check(OPS[name], (0, 0), (p, q))


@pytest.mark.parametrize("name", list(OPS))
def test_number_operand_inside_vmap(name):
    p = randn(4, 6, 3)
    check(lambda a: OPS[name](a, 0.25), (0,), (p,))
    if name != "dreg":  # dreg's z is the tensor operand
        check(lambda a: OPS[name](1.5, a), (2,), (p,))


def test_nested_vmap_operands_batched_at_different_levels():
    # log_p batched by the outer vmap only, log_q by the inner only
    p, q = randn(3, 6, 2), randn(5, 6, 2, seed=1)
    f = lambda a, b: iwae_fused.iwelbo(a, b, 0, False, 0.5)  # noqa: E731
    got = torch.vmap(lambda a: torch.vmap(lambda b: f(a, b))(q))(p)
    want = torch.stack([torch.stack([f(a, b) for b in q]) for a in p])
    torch.testing.assert_close(got, want)
    q = randn(6, 2, 5, seed=1)  # the inner vmap over its last dim
    got = torch.vmap(lambda a: torch.vmap(lambda b: iwae_fused.normalized_weights(a, b, 1), in_dims=2)(q))(p)
    want = torch.stack([torch.stack([iwae_fused.normalized_weights(a, q[:, :, j], 1) for j in range(5)])
                        for a in p])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_vmap_around_grad_and_jvp(alpha):
    p, q = randn(4, 6, 3), randn(6, 3, seed=1)
    g = torch.func.grad(lambda a: iwae_fused.iwelbo(a, q, 0, False, alpha).sum())
    check(g, (0,), (p,))
    t = randn(4, 6, 3, seed=2)
    j = lambda a, da: torch.func.jvp(lambda x: iwae_fused.iwelbo(x, q, 0, False, alpha), (a,), (da,))[1]  # noqa: E731
    check(j, (0, 0), (p, t))
    # grad with respect to log_q, vmapped over log_p's batch with log_q shared
    gq = torch.func.grad(lambda b, a: iwae_fused.iwelbo(a, b, 0, False, alpha).sum())
    check(gq, (None, 0), (q, p))


def _reparameterized(name):
    def f(mu, eps):
        z = mu + eps
        log_p = -0.5 * z**2 - 0.1 * z**4
        if name == "dreg":
            return iwae_fused.dreg(log_p, -0.5 * (z - mu.detach()) ** 2, z).sum()
        log_q = -0.5 * (z - mu) ** 2
        if name == "vimco":
            return iwae_fused.vimco(log_p, log_q).sum()
        return iwae_fused.iwelbo(log_p, log_q, alpha=0.3 if name == "renyi" else 0.0).sum()

    return f


@pytest.mark.parametrize("in_dims", [(0, 0), (None, 0), (0, None), (1, 2)])
@pytest.mark.parametrize("name", ["iwelbo", "renyi", "vimco", "dreg"])
def test_backward_outside_vmap(name, in_dims):
    # Gradients recorded outside vmap, backward after it: the ops' autograd
    # nodes see the physical (batched) tensors. DReG's z-path correction is a
    # vector-Jacobian product through log_p's graph to z, which reaches the
    # physical z only: a view of z made by the batching rule got none of it.
    f = _reparameterized(name)
    shapes = {0: (4, 3), None: (3,), 1: (3, 4)}
    mu = randn(*shapes[in_dims[0]]).requires_grad_()
    eps = randn(*{0: (4, 6, 3), None: (6, 3), 2: (6, 3, 4)}[in_dims[1]], seed=1)
    torch.vmap(f, in_dims=in_dims)(mu, eps).sum().backward()
    got, mu.grad = mu.grad, None
    looped(f, in_dims, (mu, eps)).sum().backward()
    torch.testing.assert_close(got, mu.grad, rtol=1e-10, atol=1e-12)


def test_dreg_z_off_the_graph_is_an_error():
    mu = randn(3).requires_grad_()
    z = mu + randn(6, 3, seed=1)
    log_p, log_q = -0.5 * z**2, -0.5 * (z - mu.detach()) ** 2
    out = iwae_fused.dreg(log_p, log_q, z.view(6, 3))  # a view made after: not in the graphs
    with pytest.raises(ValueError, match="z is not an input of log_p's or log_q's autograd graph"):
        out.sum().backward()
