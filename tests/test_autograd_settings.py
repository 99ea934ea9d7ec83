"""The ops' autograd under the torch settings that reach their saved tensors
another way: saved-tensor hooks (what activation offloading and
torch.utils.checkpoint are built on), checkpointing itself, in-place changes
after the forward (the version counter), no_grad and inference_mode."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import iwae_fused


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    eps = torch.randn(6, 3, dtype=torch.float64, generator=g)
    return mu, eps


def loss(name, mu, eps):
    """A small reparameterized model: the op's gradient flows into mu."""
    z = mu + eps
    log_p = -0.5 * z**2 - 0.1 * z**4
    if name == "dreg":
        log_q = -0.5 * (z - mu.detach()) ** 2
        return iwae_fused.dreg(log_p, log_q, z).sum()
    log_q = -0.5 * (z - mu) ** 2
    if name == "vimco":
        return iwae_fused.vimco(log_p, log_q).sum()
    return iwae_fused.iwelbo(log_p, log_q, alpha=0.5 if name == "renyi" else 0.0).sum()


NAMES = ["iwelbo", "renyi", "vimco", "dreg"]


def grad_of(name, wrap=lambda f, *a: f(*a)):
    mu, eps = inputs()
    wrap(lambda m, e: loss(name, m, e), mu, eps).backward()  # (reentrant checkpoint: no .grad())
    return mu.grad


@pytest.mark.parametrize("name", NAMES)
def test_saved_tensor_hooks_see_every_saved_tensor(name):
    # Offloading (save_on_cpu) and checkpointing pack every saved tensor
    # through these hooks; an op that kept tensors past them would hold
    # memory they meant to free and miss values they change.
    packed = []

    def pack(t):
        packed.append(t)
        return ("packed", t.clone())

    def unpack(p):
        return p[1]

    mu, eps = inputs()
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = loss(name, mu, eps)
    (g,) = torch.autograd.grad(out, mu)
    torch.testing.assert_close(g, grad_of(name), rtol=1e-12, atol=1e-14)
    assert len(packed) > 0
    with torch.autograd.graph.save_on_cpu():
        out = loss(name, *inputs())
    out.backward()


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_recomputes_the_same_gradient(name, use_reentrant):
    def wrap(f, mu, eps):
        return checkpoint(f, mu, eps, use_reentrant=use_reentrant)

    torch.testing.assert_close(grad_of(name, wrap), grad_of(name), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["iwelbo", "vimco"])
def test_in_place_change_after_forward_is_refused(name):
    lp = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    log_p, log_q = lp * 1.0, torch.randn(6, 3, dtype=torch.float64)
    out = iwae_fused.vimco(log_p, log_q) if name == "vimco" else iwae_fused.iwelbo(log_p, log_q)
    log_p.add_(1.0)  # the saved input changed: its gradient would be stale
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_no_graph_under_no_grad_and_inference_mode(mode):
    mu, eps = inputs()
    with mode():
        for name in NAMES:
            out = loss(name, mu, eps)
            assert not out.requires_grad and out.grad_fn is None


@pytest.mark.parametrize("with_q", [False, True], ids=["log_w", "log_q"])
def test_second_backward_without_retain_graph_is_refused(with_q):
    # The graph node frees what it saved after the first backward, as ATen's
    # nodes do; retain_graph keeps it.
    p = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    q = torch.randn(6, 3, dtype=torch.float64, requires_grad=True) if with_q else None
    out = iwae_fused.iwelbo(p, q).sum()
    assert out.grad_fn.next_functions[0][0].name() == "IwelboBackward"
    out.backward(retain_graph=True)
    out.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.backward()


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("with_q", [False, True], ids=["log_w", "log_q"])
def test_compiled_autograd_gives_the_eager_gradients(with_q, keepdim):
    # Compiled autograd (torch._dynamo.compiled_autograd) traces the backward
    # graph: the node enters it as one call, whole (fullgraph).
    from torch._dynamo import compiled_autograd

    gen = torch.Generator().manual_seed(3)
    p0 = torch.randn(50, 16, generator=gen)
    q0 = torch.randn(50, 16, generator=gen)

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    def grads(compiled):
        p, q = p0.clone().requires_grad_(), q0.clone().requires_grad_()
        out = iwae_fused.iwelbo(p, q if with_q else None, 0, keepdim, 0.3)
        loss = (out ** 2).sum()
        if compiled:
            torch._dynamo.reset()
            with compiled_autograd._enable(torch.compile(backend=backend, fullgraph=True)):
                loss.backward()
        else:
            loss.backward()
        return p.grad, q.grad

    (gp, gq), (ep, eq) = grads(True), grads(False)
    assert any("IwelboBackward" in code for code in graphs), "the node is in the compiled graph"
    torch.testing.assert_close(gp, ep)
    if with_q:
        torch.testing.assert_close(gq, eq)
    else:
        assert gq is None and eq is None


def test_concurrent_backwards_on_one_graph():
    # Two threads run backward through the same retained graph (the engine
    # releases the GIL); the node locks its saved tensors as torch's nodes
    # do, so each thread gets the gradient, and a last backward frees them.
    import threading

    p = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    out = iwae_fused.iwelbo(p, None).sum()
    (want,) = torch.autograd.grad(out, p, retain_graph=True)
    errors = []

    def run():
        try:
            for _ in range(200):
                (got,) = torch.autograd.grad(out, p, retain_graph=True)
                torch.testing.assert_close(got, want)
        except Exception as e:  # reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    out.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.backward()
