"""Dispatcher conformance: opcheck, gradcheck, meta tensors, torch.compile,
and every compiled CPU instruction set against the reference."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import iwae_fused
from iwae_fused import reference as R

from conftest import DEVICES, close

ops = torch.ops.iwae_fused


def sample_inputs(device, requires_grad):
    """(log_p, log_q, dim, keepdim) covering layouts, broadcasts, half types."""
    g = torch.Generator().manual_seed(0)

    def t(*shape, dtype=torch.float32):
        x = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(device)
        return x.requires_grad_(requires_grad)

    return [
        (t(50, 16), t(50, 16), 0, False),
        (t(16, 50), t(16, 50), 1, True),
        (t(6, 5, 4), None, -2, False),
        (t(6, 5), t(5), 0, False),  # log_q broadcast over samples
        (t(7, 3, dtype=torch.float64), t(7, 3, dtype=torch.float32), 0, False),
        (t(9, 4, dtype=torch.float16), t(9, 4, dtype=torch.float16), 0, False),
        (t(9, 4, dtype=torch.bfloat16), None, 1, True),
        (t(4, 6).t(), t(6, 4), 1, False),  # transposed log_p
    ]


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_iwelbo(device, requires_grad):
    for p, q, dim, keepdim in sample_inputs(device, requires_grad):
        for alpha in (0.0, 0.5, 1.0, -1.0):
            torch.library.opcheck(ops.iwelbo.default, (p, q, dim, keepdim, alpha))


def test_opcheck_internal_forward(device):
    # _iwelbo_forward is iwelbo's forward with the stats the backward needs;
    # it is differentiated through iwelbo, so it is checked without grad
    # (differentiating it directly raises "not implemented").
    for p, q, dim, keepdim in sample_inputs(device, False):
        torch.library.opcheck(ops._iwelbo_forward.default, (p, q, dim, keepdim, 0.0))
        torch.library.opcheck(ops._iwelbo_forward.default, (p, q, dim, keepdim, 0.5))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_normalized_weights(device, requires_grad):
    for p, q, dim, _ in sample_inputs(device, requires_grad):
        torch.library.opcheck(ops.normalized_weights.default, (p, q, dim))


def test_opcheck_backward(device):
    for p, q, dim, keepdim in sample_inputs(device, False):
        for alpha in (0.0, 0.5, 1.0):
            out, stats = ops._iwelbo_forward(p, q, dim, keepdim, alpha)
            grad = torch.randn_like(out)
            not_saved = stats.new_empty(0)  # the backward recomputes them
            for mask in ([True, True], [True, False], [False, True]):
                if q is None:
                    mask = [mask[0], False]
                for st in (stats, not_saved):
                    torch.library.opcheck(
                        ops.iwelbo_backward.default,
                        (grad, st, p, q, dim, keepdim, alpha, mask),
                    )


def test_gradcheck():
    g = torch.Generator().manual_seed(1)

    def t(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    cases = [
        (t(7, 5), t(7, 5), 0, False),
        (t(5, 7), None, 1, True),
        (t(4, 3, 6), t(3, 6), 1, False),  # broadcast log_q: gradient summed
        (t(6, 1), t(6, 4), 0, False),  # broadcast log_p
    ]
    for p, q, dim, keepdim in cases:
        for alpha in (0.0, 0.5, 1.0, -2.0):
            fn = lambda p, q: iwae_fused.iwelbo(p, q, dim, keepdim, alpha)  # noqa: E731
            assert torch.autograd.gradcheck(fn, (p, q))


def test_meta_tensors():
    p = torch.empty(50, 3, 7, device="meta", dtype=torch.bfloat16)
    q = torch.empty(7, device="meta", dtype=torch.float32)
    out = iwae_fused.iwelbo(p, q, dim=0)
    assert out.device.type == "meta" and out.shape == (3, 7) and out.dtype == torch.float32
    assert iwae_fused.iwelbo(p, dim=1, keepdim=True).shape == (50, 1, 7)
    w = iwae_fused.normalized_weights(p, q, dim=-1)
    assert w.shape == (50, 3, 7) and w.dtype == torch.float32


def test_zero_dim_input():
    x = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    out = iwae_fused.iwelbo(x)
    assert out.shape == () and out.item() == 2.5
    out.backward()
    assert x.grad.item() == 1.0
    assert iwae_fused.iwelbo(x.detach(), dim=-1, keepdim=True).shape == ()


def test_mixed_dtypes_promote_and_grads_keep_input_dtypes():
    p = torch.randn(20, 4, dtype=torch.float32, requires_grad=True)
    q = torch.randn(20, 4, dtype=torch.float64, requires_grad=True)
    out = iwae_fused.iwelbo(p, q)
    assert out.dtype == torch.float64
    out.sum().backward()
    assert p.grad.dtype == torch.float32 and q.grad.dtype == torch.float64
    close(p.grad, torch.softmax(p.double() - q.detach(), 0), torch.float32)


def test_normalized_weights_are_constants():
    p = torch.randn(10, 3, requires_grad=True)
    w = iwae_fused.normalized_weights(p)
    assert not w.requires_grad and w.grad_fn is None


def test_no_grad_path_matches_grad_path():
    p = torch.randn(30, 5, requires_grad=True)
    with torch.no_grad():
        a = iwae_fused.iwelbo(p)
    b = iwae_fused.iwelbo(p)
    assert b.requires_grad and not a.requires_grad
    assert torch.equal(a, b.detach())


class TinyIWAE(torch.nn.Module):
    """Enough of a model that log_p and log_q both depend on parameters."""

    def __init__(self, x_dim=6, z_dim=3):
        super().__init__()
        self.enc = torch.nn.Linear(x_dim, 2 * z_dim)
        self.dec = torch.nn.Linear(z_dim, x_dim)

    def forward(self, x, eps):  # eps: [K, B, z] standard normal noise
        mu, log_sigma = self.enc(x).chunk(2, -1)
        z = mu + log_sigma.exp() * eps
        log_q = (-0.5 * eps**2 - log_sigma).sum(-1)
        log_p = (-0.5 * z**2).sum(-1) - 0.5 * ((x - self.dec(z)) ** 2).sum(-1)
        return log_p, log_q


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_training_step_fullgraph(backend, device):
    torch.manual_seed(0)
    model = TinyIWAE().to(device)
    x = torch.randn(8, 6, device=device)
    eps = torch.randn(5, 8, 3, device=device)

    def loss_fn(x, eps):
        log_p, log_q = model(x, eps)
        return -iwae_fused.iwelbo(log_p, log_q, dim=0).mean()

    loss_eager = loss_fn(x, eps)
    loss_eager.backward()
    grads_eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    # fullgraph=True fails on any graph break; the backward runs the graph
    # AOTAutograd compiled from iwelbo's registered autograd.
    compiled = torch.compile(loss_fn, fullgraph=True, backend=backend)
    loss_compiled = compiled(x, eps)
    loss_compiled.backward()
    torch.testing.assert_close(loss_compiled, loss_eager)
    for p, g in zip(model.parameters(), grads_eager):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graph_capture_of_training_step():
    # Forward and backward captured once, replayed on new data: the kernels
    # launch on the current (capturing) stream and allocate nothing outside
    # the graph's pool.
    torch.manual_seed(0)
    model = TinyIWAE().cuda()
    x = torch.randn(8, 6, device="cuda")
    eps = torch.randn(50, 8, 3, device="cuda")

    def loss_fn():
        log_p, log_q = model(x, eps)
        return -iwae_fused.iwelbo(log_p, log_q, dim=0).mean()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            loss_fn().backward()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    model.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = loss_fn()
        static_loss.backward()

    x.copy_(torch.randn_like(x))
    eps.copy_(torch.randn_like(eps))
    graph.replay()
    torch.cuda.synchronize()
    replayed = [p.grad.clone() for p in model.parameters()]

    eager = TinyIWAE().cuda()
    eager.load_state_dict(model.state_dict())
    log_p, log_q = eager(x, eps)
    loss = -iwae_fused.iwelbo(log_p, log_q, dim=0).mean()
    loss.backward()
    torch.testing.assert_close(static_loss, loss)
    for a, b in zip(replayed, eager.parameters()):
        torch.testing.assert_close(a, b.grad)


def test_torch_compile_dynamic_shapes():
    torch._dynamo.reset()
    f = torch.compile(lambda a, b: iwae_fused.iwelbo(a, b, 0), fullgraph=True,
                      backend="aot_eager", dynamic=True)
    for K, B in [(5, 3), (9, 4), (17, 2)]:
        a, b = torch.randn(K, B), torch.randn(K, B)
        close(f(a, b), R.iwelbo(a.double(), b.double()), torch.float32)


ISA_CHECK = textwrap.dedent(
    """
    import torch, iwae_fused
    from iwae_fused import reference as R
    print(iwae_fused._C.cpu_kernels())
    g = torch.Generator().manual_seed(0)
    # columns, short rows (lane tiles), small inner, long rows, columns with K
    # in one block (narrow tiles, tiled weights pass), and log-weights spread
    # over hundreds of nats (denormal weights, flushed).
    cases = [((50, 37), 0, 3), ((37, 50), 1, 3), ((3000, 5), 0, 3), ((2, 9000), 1, 3),
             ((5, 300), 0, 3), ((12, 2100), 0, 3), ((64, 40), 0, 100)]
    for shape, dim, scale in cases:
        for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            p = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dt).requires_grad_()
            q = torch.randn(shape, generator=g, dtype=torch.float64).to(dt).requires_grad_()
            out = iwae_fused.iwelbo(p, q, dim)
            out.sum().backward()
            p64, q64 = p.detach().double().requires_grad_(), q.detach().double()
            ref = R.iwelbo(p64, q64, dim)
            ref.sum().backward()
            tol = {torch.float64: 1e-10, torch.float32: 1e-4}.get(dt, 3e-2)
            assert (out.double() - ref).abs().max() < tol * (1 + ref.abs().max()), (shape, dt)
            assert (p.grad.double() - p64.grad).abs().max() < tol, (shape, dt)
            assert torch.equal(p.grad, -q.grad)
    """
)


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_every_instruction_set_matches_reference(isa):
    # The kernels are compiled once per instruction set and one is picked per
    # process; check each in a process of its own. ATen caps the choice at
    # what the CPU runs, so on a CPU without AVX-512 the "avx512" run checks
    # a lower set (which the printed name shows).
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa)
    res = subprocess.run(
        [sys.executable, "-c", ISA_CHECK], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    picked = res.stdout.split()[0]
    if isa == "default":
        assert picked == "DEFAULT"
