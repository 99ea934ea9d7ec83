"""The README's Python snippets run, on a tiny model, so they cannot drift
from the API. Each block gets the names its prose assumes (a model, a batch,
log-weights); the two that need more than this machine has are named."""

import math
import re
from pathlib import Path

import pytest
import torch

import iwae_fused
from iwae_fused import cuda_emulator

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)

# Blocks that cannot run here, by their first line, and why.
NOT_HERE = {
    "torch.logsumexp(log_p - log_q, 0) - math.log(K)": "an expression quoted in prose, run below",
    "# torchrun --nproc-per-node=8 eval.py": "needs torchrun, NCCL and GPUs (the gloo twin is in test_evaluation)",
}


class TinyVAE(torch.nn.Module):
    """What the README's model does: q(z | x) = Normal(mu, sigma) over D = 3
    latents, p(z) = N(0, I), p(x | z) = Normal(dec(z), 1) over 4 features."""

    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(4, 6)
        self.dec = torch.nn.Linear(3, 4)

    def encode(self, x):
        mu, log_sigma = self.enc(x).chunk(2, -1)
        return mu, log_sigma.exp()

    def encode_and_sample(self, x, K):
        q = torch.distributions.Normal(*self.encode(x))
        z = q.rsample((K,))
        return z, q.log_prob(z).sum(-1)

    def log_joint(self, x, z):
        prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        return prior + torch.distributions.Normal(self.dec(z), 1.0).log_prob(x).sum(-1)


def namespace():
    torch.manual_seed(0)
    model = TinyVAE()
    x = torch.randn(5, 4)
    log_p = torch.randn(8, 5, requires_grad=True)
    return dict(torch=torch, math=math, iwae_fused=iwae_fused, MyVAE=TinyVAE, model=model,
                loader=[x, torch.randn(5, 4)], x=x, K=8, log_p=log_p,
                log_q=torch.randn(8, 5, requires_grad=True))


def test_readme_has_the_blocks_this_file_expects():
    assert len(BLOCKS) >= 7
    assert sum(b.strip().splitlines()[0] in NOT_HERE for b in BLOCKS) == len(NOT_HERE)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    block = BLOCKS[index]
    first = block.strip().splitlines()[0]
    if first in NOT_HERE:
        pytest.skip(NOT_HERE[first])
    if "cuda_emulator" in block and not cuda_emulator.available():
        pytest.skip("built without the CUDA emulator")
    if "pyro" in block:
        pytest.importorskip("pyro", reason="pyro-ppl is an optional extra (pip install iwae_fused[pyro])")
    ns = namespace()
    exec(compile(block, f"README.md block {index}", "exec"), ns)


def test_quoted_expression_is_what_iwelbo_computes():
    ns = namespace()
    expr = eval(next(b for b in BLOCKS if b.startswith("torch.logsumexp")), ns)
    torch.testing.assert_close(iwae_fused.iwelbo(ns["log_p"], ns["log_q"]), expr)
