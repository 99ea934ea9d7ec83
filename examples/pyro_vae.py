"""A Pyro VAE on the digits data, trained with Trace_ELBO, RenyiELBO and
iwae_fused.pyro.IWAE_ELBO (IWAE and DReG gradients) at K = 5 and 50.

The model and guide are ordinary Pyro code (pyro.module, a data plate with
subsample_size, SVI); only the loss changes. The network is the one of
examples/train_iwae.py (Burda et al.'s one-stochastic-layer model at digits
size) and so are the data (scikit-learn's 8x8 digits, dynamically binarized,
a fixed split). Each model's test log-likelihood is estimated with K =
--eval-samples importance samples through iwae_fused.estimate_log_likelihood,
the log-weights coming from Pyro traces of the trained guide and model.

    python examples/pyro_vae.py                 # 8 models, CPU, about 5 minutes
    python examples/pyro_vae.py --epochs 200 --publish
"""

import argparse
import os
import platform
import sys
import time

import torch

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.infer import SVI, RenyiELBO, Trace_ELBO

import iwae_fused
from iwae_fused.pyro import IWAE_ELBO

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_iwae import IWAE, binarize, load_digits_split, progress  # noqa: E402

LOSSES = ("trace_elbo", "renyi", "iwae", "dreg")
LABELS = {
    "trace_elbo": "Trace_ELBO (K-sample ELBO)",
    "renyi": "RenyiELBO (alpha = 0)",
    "iwae": "IWAE_ELBO",
    "dreg": "IWAE_ELBO, estimator='dreg'",
}


class PyroVAE:
    """Model and guide around the example's encoder/decoder networks."""

    def __init__(self, hidden, z_dim, batch_size):
        self.net = IWAE(hidden=hidden, z_dim=z_dim)
        self.z_dim = z_dim
        self.batch_size = batch_size

    def model(self, x, subsample=True):
        pyro.module("decoder", self.net.decoder)
        size = self.batch_size if subsample else None
        with pyro.plate("data", len(x), subsample_size=size) as idx:
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0).expand([self.z_dim]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.net.decoder(z)).to_event(1), obs=x[idx])

    def guide(self, x, subsample=True):
        pyro.module("encoder", self.net.encoder)
        size = self.batch_size if subsample else None
        with pyro.plate("data", len(x), subsample_size=size) as idx:
            mu, log_sigma = self.net.q(x[idx])
            pyro.sample("z", dist.Normal(mu, log_sigma.exp()).to_event(1))


def make_loss(kind, k):
    common = dict(num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    if kind == "trace_elbo":
        return Trace_ELBO(**common)
    if kind == "renyi":
        return RenyiELBO(alpha=0, **common)
    return IWAE_ELBO(estimator=kind, **common)


def log_weights(vae, x, n):
    """[n, B] log p(x, z) - log q(z | x) from Pyro traces (no subsampling)."""
    particles = pyro.plate("particles", n, dim=-2)
    guide = poutine.trace(particles(vae.guide)).get_trace(x, False)
    model = poutine.trace(poutine.replay(particles(vae.model), trace=guide)).get_trace(x, False)
    log_w = 0.0
    for trace, sign in ((model, 1.0), (guide, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample" and site["name"] != "data":
                log_w = log_w + sign * site["fn"].log_prob(site["value"])
    return log_w


def evaluate(vae, x, num_samples, chunk_size, seed):
    torch.manual_seed(seed)  # the same test noise for every model
    with torch.no_grad():
        ll = iwae_fused.estimate_log_likelihood(lambda n: log_weights(vae, x, n), num_samples, chunk_size)
    return ll.mean().item()


def train(kind, k, args, data):
    train_x, test_x = data
    pyro.clear_param_store()
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    vae = PyroVAE(args.hidden, args.z_dim, args.batch_size)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": args.lr}), loss=make_loss(kind, k))
    gen = torch.Generator().manual_seed(args.seed + 1)
    steps_per_epoch = max(1, len(train_x) // args.batch_size)
    t0, steps, losses = time.time(), 0, []
    for _ in progress(range(args.epochs), args.epochs, f"{LABELS[kind]} K={k}, epochs"):
        xb = binarize(train_x, gen)
        for _ in range(steps_per_epoch):
            losses.append(svi.step(xb) / len(train_x))
            steps += 1
            if args.max_steps and steps >= args.max_steps:
                break
        if args.max_steps and steps >= args.max_steps:
            break
    train_s = time.time() - t0
    fixed_test = binarize(test_x, torch.Generator().manual_seed(12345))
    ll = evaluate(vae, fixed_test, args.eval_samples, args.chunk_size, args.seed)
    return {"kind": kind, "k": k, "test_ll": ll, "steps": steps, "train_s": train_s,
            "final_loss": sum(losses[-steps_per_epoch:]) / len(losses[-steps_per_epoch:])}


def table(results, eval_samples):
    ks = sorted({r["k"] for r in results})
    cell = {(r["kind"], r["k"]): r for r in results}
    lines = [f"Test log-likelihood, nats per digit (K = {eval_samples} importance samples)", "",
             "| loss | " + " | ".join(f"K = {k}" for k in ks) + " |",
             "|---|" + "---|" * len(ks)]
    for kind in LOSSES:
        if any((kind, k) in cell for k in ks):
            row = [f"{cell[kind, k]['test_ll']:.2f}" if (kind, k) in cell else "-" for k in ks]
            lines.append(f"| {LABELS[kind]} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES, help="losses to train with")
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 50], help="numbers of particles K")
    ap.add_argument("--epochs", type=int, default=60, help="epochs of len(train) // batch-size steps")
    ap.add_argument("--batch-size", type=int, default=100, help="the data plate's subsample_size")
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    ap.add_argument("--hidden", type=int, default=100, help="tanh units per hidden layer")
    ap.add_argument("--z-dim", type=int, default=20, help="latent dimensions")
    ap.add_argument("--eval-samples", type=int, default=2000, help="K for the test log-likelihood")
    ap.add_argument("--chunk-size", type=int, default=500, help="samples per chunk of the estimate")
    ap.add_argument("--seed", type=int, default=0, help="seed of weights, minibatches and particles")
    ap.add_argument("--max-steps", type=int, default=0, help="stop each model after this many steps (smoke runs)")
    ap.add_argument("--out", default=None,
                    help="folder for the table (default: examples/output/runs, which git ignores; "
                         "--publish: examples/output, the committed results)")
    ap.add_argument("--publish", action="store_true", help="refresh the committed results on purpose")
    args = ap.parse_args(argv)
    args.out = args.out or os.path.join("examples", "output", "" if args.publish else "runs")
    os.makedirs(args.out, exist_ok=True)
    data = load_digits_split(seed=0)
    lines = []

    def log(msg):
        print(msg, flush=True)
        lines.append(msg)

    log(f"digits: {len(data[0])} train / {len(data[1])} test; pyro {pyro.__version__}, torch "
        f"{torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads; {args.epochs} epochs of batch {args.batch_size} "
        f"(plate subsampling), Adam lr {args.lr}")
    t0 = time.time()
    results = []
    for k in args.ks:
        for kind in args.losses:
            r = train(kind, k, args, data)
            log(f"{LABELS[kind]:28s} K={k:<3d}: {r['steps']} steps in {r['train_s']:5.1f} s, "
                f"test log-likelihood {r['test_ll']:8.3f}")
            results.append(r)
    log(f"trained and evaluated {len(results)} models in {time.time() - t0:.0f} s\n")
    log(table(results, args.eval_samples))
    with open(os.path.join(args.out, "pyro_vae.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return results


if __name__ == "__main__":
    main()
