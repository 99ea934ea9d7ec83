"""A smoke test of every op of an installed iwae_fused, against its pure-
PyTorch reference (scripts/check_packaging.sh runs it in a fresh venv)."""

import torch

import iwae_fused
from iwae_fused import reference as R

torch.manual_seed(0)
p, q = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
p.requires_grad_()
out = iwae_fused.iwelbo(p, q)
(g,) = torch.autograd.grad(out.sum(), p)
p64 = p.detach().requires_grad_()
(r,) = torch.autograd.grad(R.iwelbo(p64, q).sum(), p64)
torch.testing.assert_close(out, R.iwelbo(p.detach(), q))
torch.testing.assert_close(g, r)
torch.testing.assert_close(iwae_fused.normalized_weights(p.detach(), q), R.normalized_weights(p.detach(), q))
ess, mw = iwae_fused.weight_diagnostics(p.detach(), q)
torch.testing.assert_close(ess, R.weight_diagnostics(p.detach(), q)[0])
torch.testing.assert_close(iwae_fused.effective_sample_size(p.detach(), q), ess)
torch.testing.assert_close(iwae_fused.vimco(p.detach(), q), R.vimco(p.detach(), q))
z = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
torch.testing.assert_close(iwae_fused.dreg(-z**2, -0.5 * z.detach() ** 2, z), R.iwelbo(-z**2, -0.5 * z**2).detach())
state = iwae_fused.iwelbo_state(p.detach(), q)
torch.testing.assert_close(state.finalize(), out.detach())
torch.testing.assert_close(iwae_fused.iwelbo(p.detach(), q, alpha=0.5), R.iwelbo(p.detach(), q, alpha=0.5))
p32, q32 = p.detach().float().t(), q.float().t()  # float32, reduced over the contiguous dim
torch.testing.assert_close(iwae_fused.iwelbo(p32, q32, dim=1), R.iwelbo(p32.double(), q32.double(), dim=1).float())
w = iwae_fused.psis_weights(p.detach(), q)
torch.testing.assert_close(w.sum(0), torch.ones(5, dtype=torch.float64))
assert iwae_fused.pareto_k(torch.randn(200, 3, dtype=torch.float64)).shape == (3,)
ll = iwae_fused.estimate_log_likelihood(lambda n: torch.randn(n, 3, dtype=torch.float64), 100, chunk_size=30,
                                        progress=False)
assert ll.shape == (3,)
print(f"iwae_fused {iwae_fused.__version__} ({iwae_fused.__file__}) under torch {torch.__version__}, "
      f"CPU kernels {iwae_fused._C.cpu_kernels()}: every op matches its reference")
