"""torch.vmap batching rules (iwae_fused/batching.py) for every op, against a
Python loop over the vmapped dim, with functorch's per-sample fallback turned
off, so an op without a rule raises instead of passing slowly."""

import pytest
import torch

import iwae_fused

ops = torch.ops.iwae_fused


@pytest.fixture(autouse=True)
def no_vmap_fallback():
    before = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    yield
    torch._C._functorch._set_vmap_fallback_enabled(before)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def loop(fn, in_dims, args, out_dims=0):
    """What vmap must equal: fn on each slice, stacked at out_dims."""
    n = next(a.shape[d] for a, d in zip(args, in_dims) if d is not None)
    outs = [
        fn(*[a if d is None else a.select(d, i) for a, d in zip(args, in_dims)])
        for i in range(n)
    ]
    if isinstance(outs[0], tuple):
        od = out_dims if isinstance(out_dims, tuple) else (out_dims,) * len(outs[0])
        return tuple(torch.stack([o[j] for o in outs], od[j]) for j in range(len(outs[0])))
    return torch.stack(outs, out_dims)


def check(fn, in_dims, args, out_dims=0):
    got = torch.vmap(fn, in_dims=in_dims, out_dims=out_dims)(*args)
    want = loop(fn, in_dims, args, out_dims)
    torch.testing.assert_close(got, want, equal_nan=True)


# (log_p shape, log_q shape or None, in_dims, dim, keepdim): log_q broadcast,
# either input unbatched, vmapped dims first, middle and last, negative dims.
CASES = [
    ((4, 6, 3), (4, 6, 3), (2, 2), 0, False),
    ((4, 6, 3), (6, 3), (0, None), 1, True),
    ((6, 4, 3), (6, 3), (1, None), -1, False),
    ((6, 3), (5, 6, 3), (None, 0), 0, False),
    ((5, 6, 1), (1, 3), (0, None), 0, True),  # log_q broadcast in both dims
    ((6, 5), None, (1, None), -1, False),
    ((7,), None, (0, None), 0, False),  # one sample per example (0-dim slices)
    ((7,), (7,), (0, 0), 0, True),  # 0-dim slices with log_q
]


def _inputs(case, dtype=torch.float64):
    p_shape, q_shape, in_dims, dim, keepdim = case
    g = _gen(sum(p_shape))
    p = torch.randn(p_shape, generator=g, dtype=dtype)
    q = None if q_shape is None else torch.randn(q_shape, generator=g, dtype=dtype)
    return p, q, in_dims, dim, keepdim


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_iwelbo(case, alpha):
    p, q, in_dims, dim, keepdim = _inputs(case)
    check(lambda a, b: iwae_fused.iwelbo(a, b, dim, keepdim, alpha), in_dims, (p, q))


@pytest.mark.parametrize("case", CASES)
def test_normalized_weights_and_diagnostics(case):
    p, q, in_dims, dim, _ = _inputs(case)
    check(lambda a, b: iwae_fused.normalized_weights(a, b, dim), in_dims, (p, q))
    check(lambda a, b: iwae_fused.weight_diagnostics(a, b, dim), in_dims, (p, q))
    check(lambda a, b: ops.logsumexp_stats(a, b, dim), in_dims, (p, q))


@pytest.mark.parametrize("case", CASES)
def test_internal_forward(case):
    p, q, in_dims, dim, keepdim = _inputs(case)
    check(lambda a, b: ops._iwelbo_forward(a, b, dim, keepdim, 0.5), in_dims, (p, q))


@pytest.mark.parametrize("case", [c for c in CASES if c[1] is not None and len(c[0]) > 1])
def test_vimco_and_dreg_values(case):
    p, q, in_dims, dim, keepdim = _inputs(case)
    sp = p.shape if in_dims[0] is None else p.select(in_dims[0], 0).shape
    sq = q.shape if in_dims[1] is None else q.select(in_dims[1], 0).shape
    if torch.broadcast_shapes(sp, sq)[dim] < 2:
        pytest.skip("VIMCO needs K >= 2 after the vmapped dim is removed")
    check(lambda a, b: iwae_fused.vimco(a, b, dim, keepdim), in_dims, (p, q))
    z = torch.randn(3)
    check(lambda a, b: iwae_fused.dreg(a, b, z, dim), in_dims, (p, q))


def test_half_precision():
    p = torch.randn(4, 50, 3, dtype=torch.float16)
    check(lambda a: iwae_fused.iwelbo(a, None, 0), (2,), (p,))


def test_nested_vmap():
    p = torch.randn(3, 4, 6, 5, dtype=torch.float64)
    got = torch.vmap(torch.vmap(lambda a: iwae_fused.iwelbo(a, None, 0)))(p)
    torch.testing.assert_close(got, iwae_fused.iwelbo(p, None, 2))


def test_dim_out_of_range_under_vmap_is_an_index_error():
    p = torch.randn(3, 6, 5)
    with pytest.raises(IndexError, match=r"iwelbo\(\): dim=-3 is out of range"):
        torch.vmap(lambda a: iwae_fused.iwelbo(a, None, -3))(p)


# ---- the backward ops: batched incoming gradients ---------------------------


def _batched_vjp(f, inputs, n=4, seed=5):
    """autograd.grad with is_grads_batched (vmap over grad_outputs), against a
    loop of plain VJPs: reaches the backward ops with a batched gradient."""
    out = f(*inputs)
    v = torch.randn((n,) + out.shape, generator=_gen(seed), dtype=out.dtype)
    got = torch.autograd.grad(out, inputs, v, retain_graph=True, is_grads_batched=True)
    for i in range(n):
        want = torch.autograd.grad(out, inputs, v[i], retain_graph=True)
        for a, b in zip(got, want):
            torch.testing.assert_close(a[i], b)


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_iwelbo_backward_batched_grad(keepdim, alpha):
    g = _gen(6)
    p = torch.randn(6, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(4, 1, generator=g, dtype=torch.float64, requires_grad=True)
    _batched_vjp(lambda a, b: iwae_fused.iwelbo(a, b, 1, keepdim, alpha), (p, q))


def test_vimco_backward_batched_grad():
    g = _gen(7)
    p = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    _batched_vjp(lambda a, b: iwae_fused.vimco(a, b, 0), (p, q))


def test_dreg_backward_batched_grad():
    g = _gen(8)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    theta = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)

    def f(z, theta):
        return iwae_fused.dreg(-((z - theta) ** 2), -(z**2).detach() * 0.5 - z.detach(), z, 0)

    _batched_vjp(f, (z, theta))


def test_backward_op_directly_under_vmap():
    p = torch.randn(6, 4, dtype=torch.float64)
    out, stats = ops._iwelbo_forward(p, None, 0, False, 0.0)
    grads = torch.randn(3, 4, dtype=torch.float64)
    got = torch.vmap(
        lambda gr: ops.iwelbo_backward(gr, stats, p, None, 0, False, 0.0, [True, False])[0]
    )(grads)
    for i in range(3):
        want = ops.iwelbo_backward(grads[i], stats, p, None, 0, False, 0.0, [True, False])[0]
        torch.testing.assert_close(got[i], want)
