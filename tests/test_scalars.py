"""Python numbers as log_q (or log_p), taken as the eager expression
``log_p - c`` takes them: the dtype, the broadcast shape, 0-dim tensors, and
every way the ops are reached (eager, meta tensors, vmap, torch.func,
torch.compile, opcheck of the operator with the 0-dim operand it receives)."""

import math

import numpy as np
import pytest
import torch

import iwae_fused
from conftest import DTYPES, close

ops = torch.ops.iwae_fused


def _state(log_p, log_q=None, dim=0):
    return iwae_fused.iwelbo_state(log_p, log_q, dim).finalize()


# name -> op(log_p, log_q, dim) returning a tensor or a tuple of tensors
OPS = {
    "iwelbo": iwae_fused.iwelbo,
    "normalized_weights": iwae_fused.normalized_weights,
    "weight_diagnostics": iwae_fused.weight_diagnostics,
    "effective_sample_size": iwae_fused.effective_sample_size,
    "vimco": iwae_fused.vimco,
    "dreg": lambda p, q, dim=0: iwae_fused.dreg(p, q, p if isinstance(p, torch.Tensor) else q, dim),
    "iwelbo_state": _state,
    "pareto_k": iwae_fused.pareto_k,
    "psis_weights": iwae_fused.psis_weights,
}
# Ops whose log_q may be left out: the eager expression is then op(log_p - c).
WEIGHTS_ONLY = {"iwelbo", "normalized_weights", "weight_diagnostics", "effective_sample_size",
                "iwelbo_state", "pareto_k", "psis_weights"}
NUMBERS = [0.0, 3, -2.5, np.float64(1.5), np.int32(2), np.float32(0.25)]


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def assert_identical(a, b):
    for x, y in zip(as_tuple(a), as_tuple(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape and x.device == y.device
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)


def log_p_of(dtype, shape=(24, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


@pytest.mark.parametrize("c", NUMBERS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(OPS))
def test_number_log_q_is_log_p_minus_c(name, dtype, c):
    op = OPS[name]
    lp = log_p_of(dtype)
    out = op(lp, c)
    # exactly the op on the 0-dim tensor of log_p's dtype the number becomes
    assert_identical(out, op(lp, torch.tensor(float(c), dtype=dtype)))
    # the eager expression's dtype, and its value within the dtype's tolerance
    eager_dtype = (lp - c).dtype
    assert all(t.dtype == eager_dtype for t in as_tuple(out) if name not in ("pareto_k", "iwelbo_state"))
    if name in WEIGHTS_ONLY:
        for a, b in zip(as_tuple(out), as_tuple(op((lp.double() - float(c)).to(dtype)))):
            assert a.shape == b.shape
            close(a, b, dtype, scale=4.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(OPS))
def test_number_log_p_minus_a_tensor(name, dtype):
    op = OPS[name]
    lq = log_p_of(dtype, seed=1)
    out = op(1.5, lq)
    assert_identical(out, op(torch.tensor(1.5, dtype=dtype), lq))
    if name in WEIGHTS_ONLY:
        for a, b in zip(as_tuple(out), as_tuple(op((1.5 - lq.double()).to(dtype)))):
            close(a, b, dtype, scale=4.0)


@pytest.mark.parametrize("shape, dim", [((), 0), ((5,), 0), ((5, 3), 1), ((5, 1, 4), -2), ((1, 3), 0)])
@pytest.mark.parametrize("keepdim", [False, True])
def test_broadcast_shape_is_the_eager_one(shape, dim, keepdim):
    lp = log_p_of(torch.float64, shape)
    out = iwae_fused.iwelbo(lp, 2.0, dim, keepdim)
    expected = torch.logsumexp(lp - 2.0, dim, keepdim) - math.log(lp.shape[dim] if lp.dim() else 1)
    assert out.shape == expected.shape
    close(out, expected, torch.float64)
    assert iwae_fused.normalized_weights(lp, 2.0, dim).shape == (lp - 2.0).shape


@pytest.mark.parametrize("p_dtype, q, expected", [
    (torch.float16, torch.tensor(0.5, dtype=torch.float64), torch.float16),
    (torch.bfloat16, torch.tensor(0.5, dtype=torch.float32), torch.bfloat16),
    (torch.float32, torch.tensor(0.5, dtype=torch.float64), torch.float32),
    (torch.float64, torch.tensor(0.5, dtype=torch.float16), torch.float64),
    (torch.float32, torch.tensor(2), torch.float32),  # an integer 0-dim tensor, as eager takes it
    (torch.float16, torch.tensor(2, dtype=torch.uint8), torch.float16),
])
def test_0dim_tensor_log_q_promotes_as_eager(p_dtype, q, expected):
    lp = log_p_of(p_dtype)
    assert (lp - q).dtype == expected
    for name in ("iwelbo", "normalized_weights", "vimco"):
        out = OPS[name](lp, q)
        assert out.dtype == expected
        assert_identical(out, OPS[name](lp, q.to(p_dtype)))


def test_cpu_0dim_tensor_beside_another_device():
    # eager: a CPU 0-dim tensor goes with a tensor on any device
    lp = torch.zeros(5, 3, device="meta")
    q = torch.tensor(0.5)
    assert (lp - q).device.type == "meta"
    assert iwae_fused.iwelbo(lp, q).device.type == "meta"
    assert iwae_fused.normalized_weights(lp, q).shape == (5, 3)
    # and a number with a meta tensor: the fake implementations
    out = iwae_fused.iwelbo(lp, 3, keepdim=True)
    assert out.device.type == "meta" and out.shape == (1, 3)


@pytest.mark.parametrize("q", [True, torch.tensor(True)], ids=["bool", "tensor"])
def test_bools_are_refused_as_eager_refuses_them(q):
    lp = torch.zeros(5, 3)
    with pytest.raises((TypeError, RuntimeError)):
        lp - q  # noqa: B018 - eager refuses subtraction with a bool
    with pytest.raises(TypeError, match=r"iwelbo\(\): expected log_q to be"):
        iwae_fused.iwelbo(lp, q)


def test_numpy_bool_is_taken_as_eager_takes_it():
    lp = log_p_of(torch.float32)
    assert (lp - np.bool_(True)).dtype == torch.float32
    assert_identical(iwae_fused.iwelbo(lp, np.bool_(True)), iwae_fused.iwelbo(lp, 1.0))


def test_gradients_with_a_number_operand():
    lp = log_p_of(torch.float64).requires_grad_()
    iwae_fused.iwelbo(lp, 3.0).sum().backward()
    g = lp.grad.clone()
    lp.grad = None
    iwae_fused.iwelbo(lp - 3.0).sum().backward()
    torch.testing.assert_close(g, lp.grad, rtol=1e-14, atol=1e-15)
    lq = log_p_of(torch.float64, seed=2).requires_grad_()
    iwae_fused.iwelbo(0.5, lq, alpha=0.3).sum().backward()
    torch.testing.assert_close(lq.grad, -torch.softmax(0.7 * (0.5 - lq.detach()), 0), rtol=1e-12, atol=1e-14)
    lp.grad = None
    iwae_fused.vimco(lp, 1.0).sum().backward()
    torch.testing.assert_close(lp.grad, torch.softmax(lp.detach(), 0), rtol=1e-12, atol=1e-14)


def test_vmap_and_torch_func_with_a_number_log_q():
    x = log_p_of(torch.float64, (4, 6, 3))
    out = torch.vmap(lambda a: iwae_fused.iwelbo(a, 0.5, alpha=0.2))(x)
    torch.testing.assert_close(out, torch.stack([iwae_fused.iwelbo(a, 0.5, alpha=0.2) for a in x]))
    g = torch.func.grad(lambda a: iwae_fused.iwelbo(a, 0.5).sum())(x[0])
    torch.testing.assert_close(g, torch.softmax(x[0], 0))
    w = torch.vmap(lambda a: iwae_fused.normalized_weights(a, 2))(x)
    torch.testing.assert_close(w, torch.softmax(x, 1))


COMPILED = {
    "iwelbo": lambda a: iwae_fused.iwelbo(a, 0.5, alpha=0.2),
    "iwelbo-number-log_p": lambda a: iwae_fused.iwelbo(0.5, a, 0),
    "normalized_weights": lambda a: iwae_fused.normalized_weights(a, 2),
    "weight_diagnostics": lambda a: iwae_fused.weight_diagnostics(a, -1.0),
    "effective_sample_size": lambda a: iwae_fused.effective_sample_size(a, 1.0),
    "vimco": lambda a: iwae_fused.vimco(a, 0.25),
}


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("name", list(COMPILED))
def test_compile_fullgraph_with_a_number(name, backend):
    fn = COMPILED[name]
    x = log_p_of(torch.float32, (6, 3)).requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    for a, b in zip(as_tuple(compiled(x)), as_tuple(fn(x))):
        torch.testing.assert_close(a, b)
    if name in ("iwelbo", "iwelbo-number-log_p", "vimco"):
        (g,) = torch.autograd.grad(compiled(x).sum(), x)
        (e,) = torch.autograd.grad(fn(x).sum(), x)
        torch.testing.assert_close(g, e)


def test_compile_dynamic_shapes_with_a_number():
    torch._dynamo.reset()
    f = torch.compile(lambda a: iwae_fused.iwelbo(a, 2.0), fullgraph=True, backend="aot_eager",
                      dynamic=True)
    for K, B in [(5, 3), (9, 4), (17, 2)]:
        a = torch.randn(K, B)
        close(f(a), torch.logsumexp(a.double() - 2.0, 0) - math.log(K), torch.float32)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_with_the_0dim_operand_a_number_becomes(requires_grad):
    for dtype in (torch.float32, torch.float64, torch.float16):
        p = log_p_of(dtype, (9, 4)).requires_grad_(requires_grad)
        q = torch.tensor(0.75, dtype=dtype)
        for dim, keepdim in ((0, False), (1, True)):
            torch.library.opcheck(ops.iwelbo.default, (p, q, dim, keepdim, 0.0))
            torch.library.opcheck(ops.iwelbo.default, (q, p, dim, keepdim, 0.5))
            torch.library.opcheck(ops.normalized_weights.default, (p, q, dim))
            torch.library.opcheck(ops.weight_diagnostics.default, (p, q, dim))
            torch.library.opcheck(ops.logsumexp_stats.default, (p.detach(), q, dim))
            torch.library.opcheck(ops.vimco.default, (p, q, dim, keepdim))


@pytest.mark.parametrize("strict", [True, False])
def test_export_with_numbers(strict):
    class M(torch.nn.Module):
        def forward(self, a):
            return iwae_fused.iwelbo(a, 0.5, alpha=0.2), iwae_fused.normalized_weights(1.0, a)

    x = log_p_of(torch.float32, (6, 3))
    ep = torch.export.export(M(), (x,), strict=strict)
    for a, b in zip(ep.module()(x), M()(x)):
        torch.testing.assert_close(a, b)
