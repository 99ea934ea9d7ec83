"""A log-likelihood estimate with its samples split across processes.

Every process holds the same model and the same test points; each draws its
share of the K importance samples (with its own seed), and the per-example
states merge by all-reduce, so every rank returns the estimate of all K
samples, with the PSIS diagnostics over all of them.

    torchrun --standalone --nproc-per-node 2 examples/distributed_eval.py              # CPU: gloo
    torchrun --standalone --nproc-per-node 8 examples/distributed_eval.py --samples 50000   # GPUs: nccl, one per process
"""

import argparse

import torch
import torch.distributed as dist
from torch.distributions import Normal

import iwae_fused


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=5000, help="K, in all processes together")
    ap.add_argument("--chunk-size", type=int, default=500, help="samples per chunk in each process")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)                                  # the same model and data on every rank
    x = torch.randn(100, 4, device=device)
    enc = torch.nn.Linear(4, 4).to(device)
    dec = torch.nn.Linear(2, 4).to(device)
    torch.manual_seed(1234 + rank)                        # different samples on each rank

    def log_weight_fn(n):                                 # [n, B] log-weights
        loc, log_scale = enc(x).chunk(2, -1)
        q = Normal(loc, log_scale.exp())
        z = q.sample((n,))
        log_p = Normal(0.0, 1.0).log_prob(z).sum(-1) + Normal(dec(z), 1.0).log_prob(x).sum(-1)
        return log_p - q.log_prob(z).sum(-1)

    out = iwae_fused.estimate_log_likelihood(log_weight_fn, args.samples, args.chunk_size,
                                             group=dist.group.WORLD, diagnostics=True)
    # Every rank holds the same estimate: check it, then let rank 0 report it.
    mean = out.log_likelihood.mean().to(device)
    lowest = mean.clone()
    dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
    assert torch.equal(lowest, mean), "ranks disagree"
    if rank == 0:
        print(f"{dist.get_world_size()} processes, K = {args.samples}: mean log-likelihood "
              f"{mean.item():.4f} nats, median k-hat {out.pareto_k.median().item():.2f}, "
              f"median ESS {out.ess.median().item():.0f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
