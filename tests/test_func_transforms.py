"""torch.func on iwelbo against the eager expression (plain autograd) and
against torch.func applied to iwae_fused.reference; and torch.compile of a
training step, a gradient-penalty step and torch.func.grad (fullgraph)."""

import contextlib

import pytest
import torch
import torch.func as F

import iwae_fused
from iwae_fused import reference as R

ALPHAS = [0.0, 0.5, 1.0, -1.0, 2.0]

# (log_p shape, log_q shape, dim, keepdim): [K, B], [B, K], a broadcast log_q.
SHAPES = [((7, 4), (7, 4), 0, False), ((4, 7), (4, 7), 1, True), ((5, 3, 2), (3, 1), -3, False)]


def inputs(case, seed=0):
    p_shape, q_shape, dim, keepdim = case
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(p_shape, generator=g, dtype=torch.float64)
    q = torch.randn(q_shape, generator=g, dtype=torch.float64)
    return p, q, dim, keepdim


def both(case, alpha):
    """(fused, reference) as functions of (log_p, log_q)."""
    _, _, dim, keepdim = case

    def fused(p, q):
        return iwae_fused.iwelbo(p, q, dim, keepdim, alpha)

    def ref(p, q):
        return R.iwelbo(p, q, dim, keepdim, alpha)

    return fused, ref


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_first_order_transforms(case, alpha):
    p, q, _, _ = inputs(case)
    fused, ref = both(case, alpha)
    # grad, against torch.func on the reference and plain autograd on it
    gf = F.grad(lambda a, b: fused(a, b).sum(), argnums=(0, 1))(p, q)
    gr = F.grad(lambda a, b: ref(a, b).sum(), argnums=(0, 1))(p, q)
    pe, qe = p.clone().requires_grad_(), q.clone().requires_grad_()
    ge = torch.autograd.grad(ref(pe, qe).sum(), (pe, qe))
    for a, b, c in zip(gf, gr, ge):
        close(a, b)
        close(a, c)
    # vjp
    out, fn = F.vjp(fused, p, q)
    v = torch.randn_like(out)
    close(out, ref(p, q))
    for a, b in zip(fn(v), F.vjp(ref, p, q)[1](v)):
        close(a, b)
    # jvp
    tp, tq = torch.randn_like(p), torch.randn_like(q)
    of, tf = F.jvp(fused, (p, q), (tp, tq))
    orf, tr = F.jvp(ref, (p, q), (tp, tq))
    close(of, orf)
    close(tf, tr)
    close(tf, torch.autograd.functional.jvp(ref, (p, q), (tp, tq))[1])
    # jacrev and jacfwd, against each other and the eager Jacobian
    jr = F.jacrev(fused, argnums=(0, 1))(p, q)
    jf = F.jacfwd(fused, argnums=(0, 1))(p, q)
    je = torch.autograd.functional.jacobian(ref, (p, q))
    for a, b, c in zip(jr, jf, je):
        close(a, b)
        close(a, c)


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_second_order_transforms(case, alpha):
    p, q, _, _ = inputs(case, seed=1)
    fused, ref = both(case, alpha)
    hf = F.hessian(lambda a: fused(a, q).sum())(p)
    hr = F.hessian(lambda a: ref(a, q).sum())(p)
    close(hf, hr)
    close(hf, torch.autograd.functional.hessian(lambda a: ref(a, q).sum(), p))
    # forward-over-reverse and reverse-over-reverse
    close(F.jacfwd(F.jacrev(lambda a: fused(a, q).sum()))(p), hr)
    close(F.jacrev(F.jacrev(lambda a: fused(a, q).sum()))(p), hr)
    # jvp of grad (a Hessian-vector product)
    t = torch.randn_like(p)
    _, hvp = F.jvp(F.grad(lambda a: fused(a, q).sum()), (p,), (t,))
    close(hvp, (hr.reshape(p.numel(), p.numel()) @ t.reshape(-1)).reshape(p.shape))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_per_example_gradients_vmap_grad(alpha):
    # A [B, K] batch, one example's loss at a time: vmap(grad(f)) gives each
    # example's gradient, which for iwelbo is its own row's weights.
    g = torch.Generator().manual_seed(2)
    p = torch.randn(6, 9, generator=g, dtype=torch.float64)
    q = torch.randn(6, 9, generator=g, dtype=torch.float64)

    def loss(a, b):  # one example: [K] -> scalar
        return -iwae_fused.iwelbo(a, b, 0, False, alpha)

    def loss_ref(a, b):
        return -R.iwelbo(a, b, 0, False, alpha)

    got = F.vmap(F.grad(loss, argnums=(0, 1)))(p, q)
    want = F.vmap(F.grad(loss_ref, argnums=(0, 1)))(p, q)
    for a, b in zip(got, want):
        close(a, b)
    for i in range(6):
        pi, qi = p[i].clone().requires_grad_(), q[i].clone().requires_grad_()
        for a, b in zip(got, torch.autograd.grad(loss_ref(pi, qi), (pi, qi))):
            close(a[i], b)


def test_vmap_of_jacrev_and_of_hessian():
    g = torch.Generator().manual_seed(3)
    p = torch.randn(4, 7, generator=g, dtype=torch.float64)
    close(
        F.vmap(F.jacrev(lambda a: iwae_fused.iwelbo(a, alpha=0.5)))(p),
        F.vmap(F.jacrev(lambda a: R.iwelbo(a, alpha=0.5)))(p),
    )
    close(
        F.vmap(F.hessian(lambda a: iwae_fused.iwelbo(a)))(p),
        F.vmap(F.hessian(lambda a: R.iwelbo(a)))(p),
    )


def test_grad_through_a_model():
    # Parameters in a small "decoder": functional_call + grad, as in practice.
    torch.manual_seed(4)
    net = torch.nn.Linear(3, 1).double()
    z = torch.randn(10, 5, 3, dtype=torch.float64)
    log_q = -(z**2).sum(-1)
    params = dict(net.named_parameters())

    def loss(params, f):
        log_p = torch.func.functional_call(net, params, (z,)).squeeze(-1)
        return -f(log_p, log_q, 0).mean()

    got = F.grad(loss)(params, iwae_fused.iwelbo)
    want = F.grad(loss)(params, R.iwelbo)
    for k in params:
        close(got[k], want[k])


# ---- torch.compile --------------------------------------------------------------


def _problem():
    g = torch.Generator().manual_seed(5)
    W = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(50, 16, 4, generator=g, dtype=torch.float64)
    return W, x


def _loss(W, x, alpha=0.0):
    log_p = (x @ W).sum(-1)
    log_q = -0.1 * (x**2).sum(-1)
    return -iwae_fused.iwelbo(log_p, log_q, 0, False, alpha).mean()


def _penalized(W, x):
    # a gradient penalty: the loss plus the squared norm of its gradient
    loss = _loss(W, x, alpha=0.5)
    (g,) = torch.autograd.grad(loss, W, create_graph=True)
    return loss + (g**2).sum()


def _compare_step(fn, backend):
    W, x = _problem()
    eager = fn(W, x)
    (ge,) = torch.autograd.grad(eager, W)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=backend)(W, x)
    (gc,) = torch.autograd.grad(compiled, W)
    close(compiled, eager)
    close(gc, ge)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_training_step(backend):
    _compare_step(_loss, backend)


def _tracing_autograd_grad():
    """Dynamo traces torch.autograd.grad under fullgraph=True only with its
    opt-in ``trace_autograd_ops`` (False by default in torch 2.13, 2.14 and 2.15).
    torch's own config patch sets it for the block and restores it after, as
    the config module expects (a generic attribute patch of that module can
    lose the option on undo). A torch without the option runs the step as is:
    if its Dynamo still refuses torch.autograd.grad, the test fails with
    Dynamo's own message, which is the news we want."""
    if hasattr(torch._dynamo.config, "trace_autograd_ops"):
        return torch._dynamo.config.patch(trace_autograd_ops=True)
    return contextlib.nullcontext()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_gradient_penalty_step(backend):
    with _tracing_autograd_grad():
        _compare_step(_penalized, backend)


def test_gradient_penalty_patch_leaves_the_config_as_it_was():
    # The patch must restore the option (value and presence) on exit: the
    # failure it replaces left the option deleted for the next test.
    before = getattr(torch._dynamo.config, "trace_autograd_ops", None)
    with _tracing_autograd_grad():
        pass
    assert getattr(torch._dynamo.config, "trace_autograd_ops", None) == before


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_of_func_grad(backend):
    W, x = _problem()
    W = W.detach()
    fn = F.grad(_loss)
    torch._dynamo.reset()
    close(torch.compile(fn, fullgraph=True, backend=backend)(W, x), fn(W, x))
    close(fn(W, x), F.grad(lambda w, x: -R.iwelbo((x @ w).sum(-1), -0.1 * (x**2).sum(-1)).mean())(W, x))
