"""Every bad input gets a clear error naming the argument, on real tensors
(the C++ checks) and on meta tensors (the fake implementations)."""

import numpy as np
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
    with pytest.raises(ValueError, match=r"expected stats of shape \[2, 3\].*or of shape \[0\] \(not saved\)"):
        torch.ops.iwae_fused.iwelbo_backward(torch.ones(3), stats[:, :2], p, None, 0, False, 0.0, [True, False])
    with pytest.raises(ValueError, match=r"expected stats of shape \[2, 3\]"):
        torch.ops.iwae_fused.iwelbo_backward(torch.ones(3), torch.empty(0, 2), p, None, 0, False, 0.0, [True, False])


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
    given = "None" if dim is None else type(dim).__name__
    with pytest.raises(TypeError, match=rf"{name}\(\): expected dim to be an int, but got {given}"):
        op(torch.zeros(5, 4), torch.zeros(5, 4), dim=dim)


@pytest.mark.parametrize("value", [[[0.0] * 4] * 500, "np"], ids=["list", "numpy"])
def test_non_tensor_input_names_its_type_not_its_value(value):
    import numpy as np

    value = np.zeros((5, 4)) if value == "np" else value
    with pytest.raises(TypeError) as err:
        iwae_fused.iwelbo(value, torch.zeros(5, 4))
    msg = str(err.value)
    assert msg.startswith("iwelbo(): expected log_p to be a torch.Tensor or a real number, but got ")
    assert msg.endswith("numpy.ndarray" if not isinstance(value, list) else "list")
    assert len(msg) < 120  # the type, not the value
    with pytest.raises(TypeError, match=r"dreg\(\): expected z to be a torch.Tensor, but got list"):
        iwae_fused.dreg(torch.zeros(5, 4), torch.zeros(5, 4), [1.0])


# -- every argument of a wrong type: the op, the argument, the type expected
# and what was given -------------------------------------------------------------

P = torch.zeros(5, 4)
WRONG = {  # argument -> (what the message says is expected, wrong values)
    "dim": ("an int", [1.0, "0", None, [0], 1j]),
    "keepdim": ("a bool", ["x", [True]]),
    "alpha": ("a float", ["x", None, [0.5], 1j]),
    "z_weight": ("a str", [3, None, ["dreg"]]),
    "z": ("a torch.Tensor", [[1.0], 0.5, None]),
    "log_q": ("a torch.Tensor, a real number or None", ["x", [0.0], 1j, True]),
}
CALLS = {  # op -> (call with one argument replaced, its arguments)
    "iwelbo": (lambda **kw: iwae_fused.iwelbo(**{"log_p": P, **kw}), ["log_q", "dim", "keepdim", "alpha"]),
    "normalized_weights": (lambda **kw: iwae_fused.normalized_weights(**{"log_p": P, **kw}), ["log_q", "dim"]),
    "weight_diagnostics": (lambda **kw: iwae_fused.weight_diagnostics(**{"log_p": P, **kw}), ["log_q", "dim"]),
    "effective_sample_size": (lambda **kw: iwae_fused.effective_sample_size(**{"log_p": P, **kw}),
                              ["log_q", "dim"]),
    "vimco": (lambda **kw: iwae_fused.vimco(**{"log_p": P, "log_q": P, **kw}), ["log_q", "dim", "keepdim"]),
    "dreg": (lambda **kw: iwae_fused.dreg(**{"log_p": P, "log_q": P, "z": P, **kw}),
             ["log_q", "z", "dim", "z_weight"]),
    "iwelbo_state": (lambda **kw: iwae_fused.iwelbo_state(**{"log_p": P, **kw}), ["log_q", "dim"]),
    "pareto_k": (lambda **kw: iwae_fused.pareto_k(**{"log_p": P, **kw}), ["log_q", "dim"]),
    "psis_weights": (lambda **kw: iwae_fused.psis_weights(**{"log_p": P, **kw}), ["log_q", "dim"]),
}
CASES = [(op, arg, v) for op, (_, args) in CALLS.items() for arg in args for v in WRONG[arg][1]
         if not (arg == "log_q" and v is None)]


def given(v):
    return "None" if v is None else type(v).__name__


@pytest.mark.parametrize("op, arg, value", CASES, ids=[f"{o}-{a}-{given(v)}" for o, a, v in CASES])
def test_wrong_type_names_op_argument_expected_and_given(op, arg, value):
    call, _ = CALLS[op]
    expected = WRONG[arg][0]
    if arg == "log_q" and op in ("vimco", "dreg"):
        expected = "a torch.Tensor or a real number"
    with pytest.raises(TypeError, match=rf"^{op}\(\): expected {arg} to be {expected}, but got {given(value)}"):
        call(**{arg: value})


@pytest.mark.parametrize("value", [[0.5], "x"], ids=["list", "str"])
def test_wrong_type_under_compile_fullgraph(value):
    # The same check runs while torch.compile traces: its error carries the message.
    torch._dynamo.reset()
    f = torch.compile(lambda a: iwae_fused.iwelbo(a, alpha=value), fullgraph=True, backend="eager")
    with pytest.raises(Exception, match=r"iwelbo\(\): expected alpha to be a float"):
        f(P)


def test_iwelbo_state_and_estimate_log_likelihood_argument_types():
    from iwae_fused import estimate_log_likelihood

    fn = lambda n: torch.zeros(n, 2)  # noqa: E731
    for kw, pattern in [
        (dict(num_samples=2.0), "expected num_samples to be an int, but got float"),
        (dict(num_samples=True), "expected num_samples to be an int, but got bool"),
        (dict(num_samples=8, chunk_size="4"), "expected chunk_size to be an int or None, but got str"),
        (dict(num_samples=8, progress=1), "expected progress to be a bool or None, but got int"),
        (dict(num_samples=8, diagnostics="yes"), "expected diagnostics to be a bool, but got str"),
    ]:
        with pytest.raises(TypeError, match=rf"estimate_log_likelihood\(\): {pattern}"):
            estimate_log_likelihood(fn, **kw)
    with pytest.raises(TypeError, match=r"expected log_weight_fn to be callable.*got a tensor of shape \[3, 2\]"):
        estimate_log_likelihood(torch.zeros(3, 2), 8)
    # NumPy integers are ints
    assert estimate_log_likelihood(fn, np.int64(8), chunk_size=np.int32(3)).shape == (2,)
    state = iwae_fused.iwelbo_state(P)
    with pytest.raises(TypeError, match=r"IwelboState.merge\(\): expected other to be an IwelboState, but got "
                                        r"a tensor of shape \[4\]"):
        state.merge(torch.zeros(4))


CANDIDATES = [0, 1, True, np.int64(1), np.bool_(True), 1.0, np.float64(1.0), np.float32(1.0), "1", b"1",
              None, 1j, [1], (1,), {1}, torch.tensor(1), torch.tensor(1.0), torch.tensor([1]),
              torch.tensor(True)]


@pytest.mark.parametrize("arg, kind", [("dim", "op int"), ("keepdim", "op bool"), ("alpha", "op real")])
def test_argument_checks_refuse_what_the_dispatcher_refuses(arg, kind):
    # The checks that run before a compiled call (and after a refused eager
    # one) refuse exactly what the operator itself refuses, so an eager call
    # and a compiled one take the same arguments.
    from iwae_fused import _args

    for value in CANDIDATES:
        kw = {"dim": 0, "keepdim": False, "alpha": 0.0, arg: value}
        try:
            torch.ops.iwae_fused.iwelbo.default(P, None, kw["dim"], kw["keepdim"], kw["alpha"])
            taken = True
        except (TypeError, RuntimeError):
            taken = False
        assert _args._OK[kind](value) == taken, (arg, value)
