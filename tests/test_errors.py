"""Every bad input gets a clear error naming the argument, on real tensors
(the C++ checks) and on meta tensors (the fake implementations)."""

import pytest
import torch

import iwae_fused

OPS = [iwae_fused.iwelbo, iwae_fused.normalized_weights]
DEVICES = ["cpu", "meta"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dev", DEVICES)
def test_shapes_that_do_not_broadcast(op, dev):
    p, q = torch.zeros(5, 3, device=dev), torch.zeros(5, 4, device=dev)
    with pytest.raises(ValueError, match=r"log_p of shape \[5, 3\] and log_q of shape \[5, 4\] do not broadcast"):
        op(p, q)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dev", DEVICES)
def test_empty_sample_dim(op, dev):
    with pytest.raises(ValueError, match=r"sample dimension dim=0 has size 0.*at least one"):
        op(torch.zeros(0, 4, device=dev), torch.zeros(0, 4, device=dev))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("dim", [2, -3, 10])
def test_dim_out_of_range(op, dev, dim):
    with pytest.raises(IndexError, match=rf"dim={dim} is out of range.*expected dim in \[-2, 1\]"):
        op(torch.zeros(5, 4, device=dev), None, dim)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_floating_dtype(op, dev, dtype):
    bad = torch.zeros(5, 4, dtype=dtype, device=dev)
    good = torch.zeros(5, 4, device=dev)
    name = str(dtype)
    with pytest.raises(TypeError, match=rf"expected log_p to be a floating-point tensor.*got {name}"):
        op(bad, good)
    with pytest.raises(TypeError, match=rf"expected log_q to be a floating-point tensor.*got {name}"):
        op(good, bad)


@pytest.mark.parametrize("op", OPS)
def test_inputs_on_different_devices(op):
    with pytest.raises(RuntimeError, match=r"same device.*log_p is on (cpu|meta).*log_q is on (meta|cpu)"):
        op(torch.zeros(5, 4), torch.zeros(5, 4, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("op", OPS)
def test_inputs_on_cpu_and_cuda(op):
    with pytest.raises(RuntimeError, match=r"same device"):
        op(torch.zeros(5, 4, device="cuda"), torch.zeros(5, 4))


def test_non_tensor_argument_is_named():
    with pytest.raises((TypeError, RuntimeError), match="log_p"):
        iwae_fused.iwelbo([1.0, 2.0])


@pytest.mark.parametrize("dev", DEVICES)
def test_empty_batch_returns_empty(dev):
    out = iwae_fused.iwelbo(torch.zeros(8, 0, device=dev), torch.zeros(8, 0, device=dev))
    assert out.shape == (0,)
    assert iwae_fused.normalized_weights(torch.zeros(8, 0, 3, device=dev)).shape == (8, 0, 3)
    assert iwae_fused.iwelbo(torch.zeros(0, 8, device=dev), dim=1, keepdim=True).shape == (0, 1)


def test_empty_batch_backward():
    p = torch.zeros(8, 0, requires_grad=True)
    iwae_fused.iwelbo(p).sum().backward()
    assert p.grad.shape == (8, 0)


def test_backward_op_checks_grad_shape():
    p = torch.randn(6, 3)
    _, stats = torch.ops.iwae_fused._iwelbo_forward(p, None, 0, False)
    with pytest.raises(ValueError, match=r"expected grad of shape \[3\]"):
        torch.ops.iwae_fused.iwelbo_backward(torch.ones(4), stats, p, None, 0, False, 0.0, [True, False])
    with pytest.raises(ValueError, match=r"expected stats of shape \[2, 3\]"):
        torch.ops.iwae_fused.iwelbo_backward(torch.ones(3), stats[:, :2], p, None, 0, False, 0.0, [True, False])


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("alpha", [float("inf"), float("-inf"), float("nan")])
def test_alpha_must_be_finite(dev, alpha):
    with pytest.raises(ValueError, match="expected a finite alpha"):
        iwae_fused.iwelbo(torch.zeros(5, 4, device=dev), alpha=alpha)


def test_double_backward_of_iwelbo_is_the_derivative_of_its_gradient():
    # It used to raise "not implemented"; tests/test_autograd_features.py checks
    # it against the eager expression at every order. Here: it no longer raises.
    p = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(iwae_fused.iwelbo(p).sum(), p, create_graph=True)
    (h,) = torch.autograd.grad(g[0].sum(), p)
    assert torch.isfinite(h).all() and h.abs().sum() > 0


@pytest.mark.parametrize("dim", [0.0, "0", None], ids=["float", "str", "None"])
@pytest.mark.parametrize("name", ["iwelbo", "normalized_weights", "weight_diagnostics",
                                  "effective_sample_size", "vimco"])
def test_non_int_dim_names_the_argument(name, dim):
    op = getattr(iwae_fused, name)
    with pytest.raises(TypeError, match=rf"{name}\(\): expected dim to be an int, but got {type(dim).__name__}"):
        op(torch.zeros(5, 4), torch.zeros(5, 4), dim=dim)


@pytest.mark.parametrize("value", [[[0.0] * 4] * 500, "np"], ids=["list", "numpy"])
def test_non_tensor_input_names_its_type_not_its_value(value):
    import numpy as np

    value = np.zeros((5, 4)) if value == "np" else value
    with pytest.raises(TypeError) as err:
        iwae_fused.iwelbo(value, torch.zeros(5, 4))
    msg = str(err.value)
    assert msg.startswith("iwelbo(): expected log_p to be a torch.Tensor, but got ")
    assert msg.endswith("numpy.ndarray" if not isinstance(value, list) else "list")
    assert len(msg) < 120  # the type, not the value
    with pytest.raises(TypeError, match=r"dreg\(\): expected z to be a torch.Tensor, but got list"):
        iwae_fused.dreg(torch.zeros(5, 4), torch.zeros(5, 4), [1.0])
