"""Every autograd feature on every op (issue 14): forward-mode AD, double
backward, gradcheck/gradgradcheck with the forward-AD and batched checks, the
all -inf slice at every order, the surrogate estimators' errors, the constant
ops' tangents, and that the training path stays on the fused C++ Function."""

import math

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import iwae_fused
from iwae_fused import reference as R

ALPHAS = [0.0, 0.5, 1.0, -1.0, 2.0]

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def eager(log_p, log_q=None, dim=0, keepdim=False, alpha=0.0):
    """The expression iwelbo is a drop-in for (the reference, any alpha)."""
    return R.iwelbo(log_p, log_q, dim, keepdim, alpha)


@st.composite
def cases(draw):
    """Small float64 problems: random rank, dim, keepdim, broadcast, alpha."""
    ndim = draw(st.integers(0, 3))
    shape = draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim))
    dim = draw(st.integers(-max(ndim, 1), max(ndim, 1) - 1))
    bcast = draw(st.sampled_from(["none", "q", "p", "no_q"]))
    small = list(shape)
    if bcast in ("q", "p") and ndim:
        ones = draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim))
        small = [1 if o else s for s, o in zip(shape, ones)]
        if draw(st.booleans()) and small and small[0] == 1:
            small.pop(0)
    p_shape, q_shape = (small, shape) if bcast == "p" else (shape, small)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    p = torch.randn(p_shape, generator=g, dtype=torch.float64)
    q = None if bcast == "no_q" else torch.randn(q_shape, generator=g, dtype=torch.float64)
    return p, q, dim, draw(st.booleans()), draw(st.sampled_from(ALPHAS))


# ---- the silent zero tangent (the worst bug of issue 14) ---------------------


@pytest.mark.parametrize("alpha", ALPHAS)
def test_regression_forward_ad_tangent_is_not_silently_zero(alpha):
    g = torch.Generator().manual_seed(0)
    p, q, tp, tq = (torch.randn(8, 5, generator=g, dtype=torch.float64) for _ in range(4))
    with fwAD.dual_level():
        out = iwae_fused.iwelbo(fwAD.make_dual(p, tp), fwAD.make_dual(q, tq), 0, False, alpha)
        tangent = fwAD.unpack_dual(out).tangent
    assert tangent is not None  # was None: an absent tangent read as zero
    # sum_k w~_k (t_p - t_q)_k, w~ = softmax((1 - alpha) log w); the mean at alpha = 1
    w = torch.softmax((1 - alpha) * (p - q), 0)
    torch.testing.assert_close(tangent, (w * (tp - tq)).sum(0))
    assert tangent.abs().min() > 0


def test_regression_jvp_and_jacfwd_match_eager():
    g = torch.Generator().manual_seed(1)
    p, q, t = (torch.randn(8, 5, generator=g, dtype=torch.float64) for _ in range(3))
    _, tangent = torch.func.jvp(lambda x: iwae_fused.iwelbo(x, q), (p,), (t,))
    _, expected = torch.func.jvp(lambda x: eager(x, q), (p,), (t,))
    torch.testing.assert_close(tangent, expected)
    torch.testing.assert_close(
        torch.func.jacfwd(lambda x: iwae_fused.iwelbo(x, q))(p),
        torch.autograd.functional.jacobian(lambda x: eager(x, q), p),
    )


# ---- gradcheck / gradgradcheck over random problems -------------------------


@SETTINGS
@given(cases())
def test_gradcheck_with_forward_ad_and_batched_checks(case):
    p, q, dim, keepdim, alpha = case
    inputs = [p.requires_grad_()] + ([] if q is None else [q.requires_grad_()])

    def f(*xs):
        return iwae_fused.iwelbo(xs[0], xs[1] if len(xs) > 1 else None, dim, keepdim, alpha)

    assert torch.autograd.gradcheck(
        f, inputs, check_forward_ad=True, check_batched_grad=True,
        check_batched_forward_grad=True,
    )


@SETTINGS
@given(cases())
def test_gradgradcheck_forward_over_reverse_and_batched(case):
    p, q, dim, keepdim, alpha = case
    inputs = [p.requires_grad_()] + ([] if q is None else [q.requires_grad_()])

    def f(*xs):
        return iwae_fused.iwelbo(xs[0], xs[1] if len(xs) > 1 else None, dim, keepdim, alpha)

    assert torch.autograd.gradgradcheck(
        f, inputs, check_batched_grad=True, check_fwd_over_rev=True, check_rev_over_rev=True,
    )


@SETTINGS
@given(cases())
def test_second_order_equals_eager_expression(case):
    p, q, dim, keepdim, alpha = case
    q = torch.zeros((), dtype=torch.float64) if q is None else q
    p.requires_grad_()
    out, ref = iwae_fused.iwelbo(p, q, dim, keepdim, alpha), eager(p, q, dim, keepdim, alpha)
    v = torch.randn_like(out)
    (g1,) = torch.autograd.grad(out, p, v, create_graph=True)
    (g2,) = torch.autograd.grad(ref, p, v, create_graph=True)
    torch.testing.assert_close(g1, g2)
    u = torch.randn_like(g1)

    def second(g):  # alpha = 1 is linear: no graph is a zero second derivative
        if not g.requires_grad:
            return torch.zeros_like(p)
        return torch.autograd.grad(g, p, u, allow_unused=True, materialize_grads=True)[0]

    torch.testing.assert_close(second(g1), second(g2))


@pytest.mark.parametrize("alpha", [0.0, 0.5, -1.0, 2.0])
def test_hessian_is_g_beta_diag_w_minus_w_wT(alpha):
    # d2/dlogw^2 of g * iwelbo along the sample dim: g beta (diag(w~) - w~ w~^T)
    x = torch.randn(6, dtype=torch.float64)
    H = torch.autograd.functional.hessian(lambda v: 3.0 * iwae_fused.iwelbo(v, alpha=alpha), x)
    beta = 1 - alpha
    w = torch.softmax(beta * x, 0)
    torch.testing.assert_close(H, 3.0 * beta * (torch.diag(w) - torch.outer(w, w)))


def test_third_order():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    for f in (iwae_fused.iwelbo, eager):
        (g,) = torch.autograd.grad(f(x), x, create_graph=True)
        (h,) = torch.autograd.grad(g[0], x, create_graph=True)
        (t,) = torch.autograd.grad(h[1], x)
        if f is iwae_fused.iwelbo:
            fused = t
    torch.testing.assert_close(fused, t)


# ---- the all -inf slice at every order ---------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.5, -1.0])
def test_all_minus_inf_slice_zero_at_every_order(alpha):
    x = torch.randn(4, 3, dtype=torch.float64)
    x[:, 1] = -math.inf
    x.requires_grad_()
    out = iwae_fused.iwelbo(x, None, 0, False, alpha)
    assert out[1] == -math.inf
    (g_all,) = torch.autograd.grad(out, x, torch.ones(3, dtype=torch.float64), create_graph=True)
    assert torch.equal(g_all[:, 1], torch.zeros(4, dtype=torch.float64))
    (h,) = torch.autograd.grad(g_all.sum(), x)
    assert not h.isnan().any() and torch.equal(h[:, 1], torch.zeros(4, dtype=torch.float64))
    # tangents: zero on the empty slice, finite elsewhere
    with fwAD.dual_level():
        t = fwAD.unpack_dual(
            iwae_fused.iwelbo(fwAD.make_dual(x.detach(), torch.ones_like(x)), None, 0, False, alpha)
        ).tangent
    assert t[1] == 0 and torch.isfinite(t).all()
    # Hessian: finite, zero on the slice
    H = torch.func.hessian(lambda v: iwae_fused.iwelbo(v, None, 0, False, alpha).sum())(x.detach())
    assert not H.isnan().any() and H[:, 1].abs().sum() == 0 and H[..., 1].abs().sum() == 0


def test_all_minus_inf_slice_at_alpha_one_is_the_mean():
    # alpha = 1 is exactly mean(log w): linear, derivative 1/K everywhere
    # (also on an all -inf slice, as the kernel's backward gives), second order 0.
    x = torch.full((4, 2), -math.inf, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(iwae_fused.iwelbo(x, alpha=1.0).sum(), x, create_graph=True)
    assert torch.equal(g.detach(), torch.full_like(x, 0.25))
    assert not g.requires_grad or torch.autograd.grad(g.sum(), x, allow_unused=True)[0] is None


# ---- vimco and dreg: surrogates, not derivatives ----------------------------


def _surrogates():
    g = torch.Generator().manual_seed(2)
    p, q, z = (torch.randn(6, 3, generator=g, dtype=torch.float64) for _ in range(3))
    return {
        "vimco": (lambda a: iwae_fused.vimco(a, q), p),
        "dreg": (lambda a: iwae_fused.dreg(a, q, z), p),
    }


@pytest.mark.parametrize("op", ["vimco", "dreg"])
@pytest.mark.parametrize(
    "transform",
    ["forward_ad", "jvp", "jacfwd", "grad", "vjp", "jacrev", "hessian", "vmap_grad"],
)
def test_surrogate_ops_raise_under_derivative_transforms(op, transform):
    f, x = _surrogates()[op]
    runs = {
        "jvp": lambda: torch.func.jvp(f, (x,), (x,)),
        "jacfwd": lambda: torch.func.jacfwd(f)(x),
        "grad": lambda: torch.func.grad(lambda a: f(a).sum())(x),
        "vjp": lambda: torch.func.vjp(f, x)[1](torch.ones(3, dtype=torch.float64)),
        "jacrev": lambda: torch.func.jacrev(f)(x),
        "hessian": lambda: torch.func.hessian(lambda a: f(a).sum())(x),
        "vmap_grad": lambda: torch.func.vmap(torch.func.grad(lambda a: f(a).sum()))(x[None]),
    }

    def forward_ad():
        with fwAD.dual_level():
            f(fwAD.make_dual(x, torch.ones_like(x)))

    runs["forward_ad"] = forward_ad
    with pytest.raises(RuntimeError, match=rf"{op}\(\).*surrogate"):
        runs[transform]()


@pytest.mark.parametrize("op", ["vimco", "dreg"])
def test_surrogate_ops_raise_on_double_backward(op):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    log_p = a * z
    if op == "vimco":
        out = iwae_fused.vimco(log_p, (z * z).detach().requires_grad_())
        (ga,) = torch.autograd.grad(out.sum(), a, create_graph=True)
        target = ga
    else:
        out = iwae_fused.dreg(log_p, (z * z).detach(), z)
        ga, gz = torch.autograd.grad(out.sum(), [a, z], create_graph=True)
        target = gz  # the z path (its VJP used to be computed without a graph)
    with pytest.raises(RuntimeError, match=rf"{op}\(\): double backward.*surrogate"):
        torch.autograd.grad(target.sum(), a)


@pytest.mark.parametrize("op", ["vimco", "dreg"])
def test_surrogate_ops_first_order_and_create_graph_unchanged(op):
    # create_graph=True alone (e.g. a penalty elsewhere in the loss) must not
    # raise and must give the same first-order gradients.
    g = torch.Generator().manual_seed(4)
    p = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=op == "vimco")
    f = (lambda: iwae_fused.vimco(p, q)) if op == "vimco" else (lambda: iwae_fused.dreg(p, q, p))
    (a,) = torch.autograd.grad(f().sum(), p)
    (b,) = torch.autograd.grad(f().sum(), p, create_graph=True)
    torch.testing.assert_close(a, b.detach())


# ---- the constants ------------------------------------------------------------


def test_constant_ops_have_no_tangent_by_design():
    p = torch.randn(6, 3, dtype=torch.float64)
    with fwAD.dual_level():
        d = fwAD.make_dual(p, torch.ones_like(p))
        assert fwAD.unpack_dual(iwae_fused.normalized_weights(d)).tangent is None
        ess, top = iwae_fused.weight_diagnostics(d)
        assert fwAD.unpack_dual(ess).tangent is None and fwAD.unpack_dual(top).tangent is None
        # logsumexp_stats (iwelbo_state's kernel) is not differentiable: it says so.
        with pytest.raises(NotImplementedError, match="logsumexp_stats"):
            torch.ops.iwae_fused.logsumexp_stats(d)
    # torch.func.jvp reports an absent tangent as zeros
    _, t = torch.func.jvp(iwae_fused.normalized_weights, (p,), (torch.ones_like(p),))
    assert torch.equal(t, torch.zeros_like(p))
    # reverse mode: the constants give zero gradients, logsumexp_stats raises
    jac = torch.func.jacrev(lambda x: iwae_fused.weight_diagnostics(x)[0])(p)
    assert torch.equal(jac, torch.zeros_like(jac))
    with pytest.raises(RuntimeError, match="logsumexp_stats is not implemented"):
        torch.func.grad(lambda x: torch.ops.iwae_fused.logsumexp_stats(x).sum())(p)


# ---- the training path stays fused ------------------------------------------


def _ops_run(fn):
    with torch.profiler.profile() as prof:
        fn()
    return {e.name for e in prof.events()}


def test_training_path_uses_the_fused_cpp_function_only():
    p = torch.randn(50, 128, requires_grad=True)
    q = torch.randn(50, 128, requires_grad=True)
    names = _ops_run(lambda: iwae_fused.iwelbo(p, q).mean().backward())
    assert "iwae_fused::iwelbo_backward" in names
    assert "IwelboBackward" in names
    # none of the composite's ops (used only for forward AD / torch.func / create_graph)
    assert not names & {"aten::exp", "aten::amax", "aten::logsumexp", "aten::where"}


def test_forward_ad_and_transforms_take_the_composite():
    p = torch.randn(5, 4, dtype=torch.float64)
    names = _ops_run(lambda: torch.func.grad(lambda x: iwae_fused.iwelbo(x).sum())(p))
    assert "aten::exp" in names and "iwae_fused::iwelbo_backward" not in names


def test_errors_on_the_composite_path_name_the_op():
    # under a transform / with tangents the composite runs; its argument
    # errors keep the op's types and name it
    p = torch.randn(5, 4, dtype=torch.float64)
    with pytest.raises(IndexError, match=r"iwelbo\(\): dim=2 is out of range"):
        torch.func.grad(lambda x: iwae_fused.iwelbo(x, None, 2).sum())(p)
    with pytest.raises(ValueError, match=r"iwelbo\(\): log_p of shape .* do not broadcast"):
        torch.func.grad(lambda x: iwae_fused.iwelbo(x, torch.zeros(3)).sum())(p)
    with pytest.raises(ValueError, match="expected a finite alpha"):
        torch.func.jvp(lambda x: iwae_fused.iwelbo(x, alpha=float("inf")), (p,), (p,))
