"""DReG: the value, the gradients against Tucker et al.'s surrogate
losses and against the pure-PyTorch reference, for every z weighting."""

import pytest
import torch

import iwae_fused
from iwae_fused import reference as R

from conftest import close

ops = torch.ops.iwae_fused


class Model(torch.nn.Module):
    """A Gaussian encoder and decoder small enough to differentiate twice."""

    def __init__(self, x_dim=4, z_dim=2):
        super().__init__()
        self.enc = torch.nn.Linear(x_dim, 2 * z_dim)
        self.dec = torch.nn.Linear(z_dim, x_dim)

    def parts(self, x, eps, sample_dim=0):
        mu, log_sigma = self.enc(x).chunk(2, -1)
        z = mu + log_sigma.exp() * eps  # rsample
        # log q with q's parameters detached: phi reaches the loss through z only.
        log_q = (-0.5 * ((z - mu.detach()) / log_sigma.detach().exp()) ** 2 - log_sigma.detach()).sum(-1)
        log_p = (-0.5 * z**2).sum(-1) - 0.5 * ((x - self.dec(z)) ** 2).sum(-1)
        if sample_dim == 1:
            return log_p.t(), log_q.t(), z
        return log_p, log_q, z


def setup(dtype, device, K=6, B=5, seed=0):
    torch.manual_seed(seed)
    model = Model().to(dtype).to(device)
    x = torch.randn(B, 4, dtype=dtype, device=device)
    eps = torch.randn(K, B, 2, dtype=dtype, device=device)
    return model, x, eps


@pytest.mark.parametrize("z_weight", ["dreg", "rws", "stl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sample_dim", [0, 1])
def test_dreg_matches_reference(z_weight, dtype, sample_dim, device):
    if dtype in (torch.float16, torch.bfloat16) and device == "cpu":
        pytest.skip("half-precision Linear layers are CPU-slow; the kernels' half path is below")
    model, x, eps = setup(dtype, device)
    params = list(model.parameters())
    out = iwae_fused.dreg(*model.parts(x, eps, sample_dim), dim=sample_dim, z_weight=z_weight)
    ours = torch.autograd.grad(-out.sum(), params)
    ref = R.dreg(*model.parts(x, eps, sample_dim), dim=sample_dim, z_weight=z_weight)
    theirs = torch.autograd.grad(-ref.sum(), params)
    close(out, ref, dtype)
    close(out, iwae_fused.iwelbo(*model.parts(x, eps, sample_dim)[:2], dim=sample_dim), dtype)
    for a, b in zip(ours, theirs):
        close(a, b, dtype, scale=10)


def test_dreg_equals_tucker_surrogates(device):
    # Tucker et al. compute theta's gradient from sum stop(w) log p with z
    # stopped, and phi's from sum stop(w)^2 log w with q's parameters stopped.
    model, x, eps = setup(torch.float64, device)
    log_p, log_q, z = model.parts(x, eps)
    w = torch.softmax(log_p - log_q, 0).detach()
    z_d = z.detach()
    lp_theta = (-0.5 * z_d**2).sum(-1) - 0.5 * ((x - model.dec(z_d)) ** 2).sum(-1)
    g_theta = torch.autograd.grad(-(w * lp_theta).sum(), list(model.dec.parameters()))
    g_phi = torch.autograd.grad(-(w**2 * (log_p - log_q)).sum(), list(model.enc.parameters()))
    out = iwae_fused.dreg(*model.parts(x, eps))
    ours = torch.autograd.grad(-out.sum(), list(model.dec.parameters()) + list(model.enc.parameters()))
    for a, b in zip(ours, list(g_theta) + list(g_phi)):
        close(a, b, torch.float64)


def test_dreg_errors_and_registration():
    p, q, z = torch.randn(6, 3), torch.randn(6, 3), torch.randn(6, 3, 2)
    with pytest.raises(ValueError, match="expected z_weight to be 'dreg', 'stl' or 'rws'"):
        iwae_fused.dreg(p, q, z, z_weight="iwae")
    with pytest.raises(ValueError, match="expected z_weight"):
        iwae_fused.dreg(p.to("meta"), q.to("meta"), z.to("meta"), z_weight="x")
    with pytest.raises(RuntimeError, match="expected z on cpu"):
        iwae_fused.dreg(p.requires_grad_(), q, z.to("meta"))
    torch.library.opcheck(ops.dreg.default, (p.detach(), q, z, 0, "dreg"))
    out, stats = ops._iwelbo_forward(p.detach(), q, 0, False, 0.0)
    for zw in ("dreg", "rws"):
        torch.library.opcheck(ops.dreg_backward.default, (torch.randn_like(out), stats, p.detach(), q, 0, zw))
    with torch.no_grad():
        close(iwae_fused.dreg(p, q, z), iwae_fused.iwelbo(p, q), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("z_weight", ["dreg", "rws"])
def test_dreg_backward_half_precision(dtype, z_weight, device):
    # The fused backward in half types (float32 inside): g w and the z-path
    # correction against float64 on the same rounded inputs.
    g = torch.Generator().manual_seed(2)
    p = (torch.randn(40, 6, generator=g, dtype=torch.float64) * 2).to(dtype).to(device)
    q = torch.randn(40, 6, generator=g, dtype=torch.float64).to(dtype).to(device)
    out, stats = ops._iwelbo_forward(p, q, 0, False, 0.0)
    grad = torch.randn(6, generator=g, dtype=torch.float64).to(dtype).to(device)
    gw, corr = ops.dreg_backward(grad, stats, p, q, 0, z_weight)
    w = torch.softmax(p.double() - q.double(), 0).cpu()
    g64 = grad.double().cpu()
    close(gw, g64 * w, dtype)
    target = w * w if z_weight == "dreg" else w - w * w
    close(corr, g64 * (target - w), dtype)
