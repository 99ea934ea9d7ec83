"""VAE against IWAE on real data, with iwae_fused.iwelbo as the objective.

The one-stochastic-layer model of Burda et al. (2016, "Importance Weighted
Autoencoders"), scaled to scikit-learn's 8x8 handwritten digits (shipped
inside the package, so nothing is downloaded), dynamically binarized
(pixels / 16 as Bernoulli probabilities, a fresh draw every epoch), with a
fixed train/test split. For each model it reports, as in Burda et al.'s
Table 1, the test log-likelihood estimated with K = 5000 importance samples
(iwae_fused.estimate_log_likelihood) and the number of active latent units
(Cov_x(E_q[z_j]) > 1e-2), and saves the training curves as a PNG. It also
times the whole training step with iwae_fused.iwelbo against the same step
with iwae_fused.reference.iwelbo.

    python examples/train_iwae.py                       # VAE k=1,5,50 and IWAE k=5,50, CPU, ~5 min
    python examples/train_iwae.py --models vae:1 iwae:5 iwae:50 --epochs 100
    python examples/train_iwae.py --device cuda
    python examples/train_iwae.py --diagnostics         # also PSIS k-hat per test point (iwae_fused.pareto_k)
"""

import argparse
import math
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

import iwae_fused
from iwae_fused import reference


def load_digits_split(seed=0, test_fraction=0.2):
    """Pixel probabilities in [0, 1], [N, 64]; a fixed permutation split."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(x)))
    return x[perm[n_test:]], x[perm[:n_test]]


class IWAE(nn.Module):
    """x -> tanh -> tanh -> diagonal Gaussian q(z|x); z -> tanh -> tanh -> Bernoulli p(x|z),
    with a standard normal prior (Burda et al.'s one-stochastic-layer model)."""

    def __init__(self, x_dim=64, hidden=100, z_dim=20):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = nn.Sequential(
            nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, 2 * z_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, x_dim),
        )

    def q(self, x):
        mu, log_sigma = self.encoder(x).chunk(2, dim=-1)
        return mu, log_sigma

    def log_weights(self, x, k, generator=None):
        """log p(x, z_k) and log q(z_k | x) for k reparameterized samples: [k, B] each."""
        mu, log_sigma = self.q(x)
        eps = torch.randn(k, *mu.shape, device=x.device, dtype=mu.dtype, generator=generator)
        z = mu + log_sigma.exp() * eps
        log_q = (-0.5 * eps.pow(2) - log_sigma - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prior = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
        logits = self.decoder(z)
        log_lik = -nn.functional.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
        return log_prior + log_lik, log_q


def objective(kind, log_p, log_q, bound=iwae_fused.iwelbo):
    """The per-example training bound: IWAE's L_k, or the VAE's k-sample ELBO."""
    if kind == "iwae":
        return bound(log_p, log_q, 0)
    return (log_p - log_q).mean(0)


def binarize(x, gen):
    return torch.bernoulli(x, generator=gen)


def evaluate(model, x, num_samples, chunk_size, seed, diagnostics=False):
    """Test log-likelihood per example (K importance samples) and active units;
    with diagnostics, also the PSIS k-hat of every test point ([N] tensor)."""
    # Its own generator: evaluating must not replay the training noise.
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad():

        def log_weight_fn(n):
            log_p, log_q = model.log_weights(x, n, generator=gen)
            return log_p - log_q

        out = iwae_fused.estimate_log_likelihood(log_weight_fn, num_samples, chunk_size,
                                                 diagnostics=diagnostics)
        mu, _ = model.q(x)
        active = int((mu.var(0) > 1e-2).sum())
    if diagnostics:
        return out.log_likelihood.mean().item(), active, out.pareto_k.cpu()
    return out.mean().item(), active


def train(kind, k, args, data, device, log):
    train_x, test_x = data
    torch.manual_seed(args.seed)
    model = IWAE(hidden=args.hidden, z_dim=args.z_dim).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed + 1)
    fixed_test = binarize(test_x, torch.Generator().manual_seed(12345)).to(device)
    curve = {"epoch": [], "train_bound": [], "test_ll": []}
    steps = 0
    bar = progress(range(1, args.epochs + 1), args.epochs, f"{kind} k={k}, epochs")
    # A point at the first epoch and at least ~10 per run, so any run length
    # draws readable curves.
    every = max(1, min(args.eval_every, args.epochs // 10))
    for epoch in bar:
        xb_all = binarize(train_x, gen).to(device)
        order = torch.randperm(len(xb_all), generator=gen)
        totals = []
        for start in range(0, len(order), args.batch_size):
            xb = xb_all[order[start : start + args.batch_size]]
            log_p, log_q = model.log_weights(xb, k)
            loss = -objective(kind, log_p, log_q).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            totals.append(-loss.item())
            steps += 1
            if args.max_steps and steps >= args.max_steps:
                break
        if epoch == 1 or epoch % every == 0 or epoch == args.epochs or args.max_steps:
            ll, _ = evaluate(model, fixed_test, args.curve_samples, args.chunk_size, args.seed)
            curve["epoch"].append(epoch)
            curve["train_bound"].append(statistics.fmean(totals))
            curve["test_ll"].append(ll)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(train=f"{curve['train_bound'][-1]:.2f}", test=f"{ll:.2f}")
        if args.max_steps and steps >= args.max_steps:
            break
    result = {"kind": kind, "k": k, "curve": curve}
    if args.diagnostics:
        ll, active, khat = evaluate(model, fixed_test, args.eval_samples, args.chunk_size,
                                    args.seed, diagnostics=True)
        result["pareto_k"] = khat
    else:
        ll, active = evaluate(model, fixed_test, args.eval_samples, args.chunk_size, args.seed)
    result.update(test_ll=ll, active=active)
    log(f"{kind:4s} k={k:<3d}: test log-likelihood (K={args.eval_samples}) {ll:8.3f} nats, "
        f"active units {active}/{args.z_dim}")
    if args.diagnostics:
        log("          " + khat_summary(result["pareto_k"]))
    return result


def khat_summary(khat):
    """One line on the PSIS k-hat of the test points (Vehtari et al. 2024):
    above 0.7 a point's K-sample estimate is unreliable; 0.5-0.7 converges slowly."""
    n = khat.numel()
    above = int((khat > 0.7).sum())
    middle = int(((khat > 0.5) & (khat <= 0.7)).sum())
    return (f"PSIS k-hat: median {khat.median().item():.2f}, max {khat.max().item():.2f}; "
            f"{above}/{n} test points > 0.7, {middle}/{n} in (0.5, 0.7]")


def progress(iterable, total, desc):
    """A tqdm bar on a terminal; elsewhere (a log file, CI) a line on stderr at
    every tenth of the run with the time spent and left, so a long run never
    sits silent."""
    if sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm

            return tqdm(iterable, total=total, desc=desc, leave=False)
        except ImportError:
            pass
    return _progress_lines(iterable, total, desc)


def _progress_lines(iterable, total, desc):
    t0 = time.time()
    marks = {max(1, round(total * i / 10)) for i in range(1, 11)}
    for i, item in enumerate(iterable, 1):
        yield item
        if i in marks:
            spent = time.time() - t0
            print(f"  {desc}: {i}/{total} ({spent:.0f} s, about {spent / i * (total - i):.0f} s left)",
                  file=sys.stderr, flush=True)


def table(results, eval_samples):
    ks = sorted({r["k"] for r in results})
    cell = {(r["kind"], r["k"]): r for r in results}
    head = "| | " + " | ".join(f"k = {k}" for k in ks) + " |"
    lines = [
        f"Test log-likelihood, nats (K = {eval_samples}); active units in parentheses",
        "",
        head,
        "|---|" + "---|" * len(ks),
    ]
    for kind in ("vae", "iwae"):
        row = [
            f"{cell[kind, k]['test_ll']:.2f} ({cell[kind, k]['active']})" if (kind, k) in cell else "-"
            for k in ks
        ]
        lines.append(f"| {kind.upper()} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_curves(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        c, label = r["curve"], f"{r['kind'].upper()} k={r['k']}"
        axes[0].plot(c["epoch"], c["train_bound"], "o-", ms=3, label=label)
        axes[1].plot(c["epoch"], c["test_ll"], "o-", ms=3, label=label)
    axes[0].set(title="training bound (per example)", xlabel="epoch", ylabel="nats")
    axes[1].set(title="test log-likelihood estimate", xlabel="epoch", ylabel="nats")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def time_training_step(k, args, data, device, repeats=15):
    """Median seconds of one full step (forward, backward, Adam) with the fused
    bound and with the reference expression, interleaved."""
    train_x, _ = data
    xb = binarize(train_x[: args.batch_size], torch.Generator().manual_seed(0)).to(device)
    timings = {}
    steps = {}
    for name, bound in (("iwae_fused", iwae_fused.iwelbo), ("reference", reference.iwelbo)):
        torch.manual_seed(0)
        model = IWAE(hidden=args.hidden, z_dim=args.z_dim).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)

        def step(model=model, opt=opt, bound=bound):
            log_p, log_q = model.log_weights(xb, k)
            loss = -bound(log_p, log_q, 0).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[name] = step
        timings[name] = []
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for name in steps:  # warm up
        for _ in range(3):
            steps[name]()
    n = max(1, int(0.2 / max(1e-4, _once(steps["reference"], sync))))
    for r in range(repeats):
        for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                steps[name]()
            sync()
            timings[name].append((time.perf_counter() - t0) / n)
    return {name: statistics.median(v) for name, v in timings.items()}


def _once(step, sync):
    sync()
    t0 = time.perf_counter()
    step()
    sync()
    return time.perf_counter() - t0


def parse_models(items):
    models = []
    for item in items:
        kind, _, k = item.partition(":")
        if kind not in ("vae", "iwae") or not k.isdigit() or int(k) < 1:
            raise SystemExit(f"--models: expected items like vae:1 or iwae:50, got {item!r}")
        models.append((kind, int(k)))
    return models


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", nargs="+",
                    default=["vae:1", "vae:5", "vae:50", "iwae:5", "iwae:50"],
                    help="kind:k items")
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--z-dim", type=int, default=20)
    ap.add_argument("--eval-samples", type=int, default=5000, help="K for the final test estimate")
    ap.add_argument("--curve-samples", type=int, default=100, help="K for the curves' estimates")
    ap.add_argument("--eval-every", type=int, default=20,
                    help="epochs between curve points (fewer for short runs: ~10 points at least)")
    ap.add_argument("--chunk-size", type=int, default=500)
    ap.add_argument("--diagnostics", action="store_true",
                    help="also report the PSIS k-hat of every test point's K-sample estimate")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=0, help="stop each model after this many steps (smoke runs)")
    ap.add_argument("--timing-k", type=int, nargs="*", default=[50, 1000],
                    help="k at which to time the training step (none: skip)")
    ap.add_argument("--out", default=None,
                    help="folder for the PNG and the table (default: examples/output/runs, which git "
                         "ignores; --publish: examples/output, the committed results)")
    ap.add_argument("--publish", action="store_true",
                    help="refresh the committed results in examples/output on purpose")
    args = ap.parse_args(argv)
    args.out = args.out or os.path.join("examples", "output", "" if args.publish else "runs")

    torch.manual_seed(args.seed)
    data = load_digits_split(seed=0)
    os.makedirs(args.out, exist_ok=True)
    lines = []

    def log(msg):
        print(msg, flush=True)
        lines.append(msg)

    log(f"digits: {len(data[0])} train / {len(data[1])} test, 64 pixels; device {args.device}; "
        f"torch {torch.__version__}; {platform.processor() or platform.machine()}")
    t0 = time.time()
    models = parse_models(args.models)
    print(f"training {len(models)} models for {args.epochs} epochs each, then estimating their test "
          f"log-likelihoods (K = {args.eval_samples}); the defaults take about 4 minutes on 2 cores",
          file=sys.stderr, flush=True)
    results = [train(kind, k, args, data, args.device, log) for kind, k in models]
    log(f"trained and evaluated {len(results)} models in {time.time() - t0:.0f} s\n")
    log(table(results, args.eval_samples))
    try:
        plot_curves(results, os.path.join(args.out, "train_curves.png"))
        log(f"\ncurves: {os.path.join(args.out, 'train_curves.png')}")
    except ImportError:
        log("\n(matplotlib not installed: no curves plot)")

    if args.timing_k:
        log("\nFull training step (forward, backward, Adam), batch "
            f"{args.batch_size}, median of interleaved runs:")
        log("| k | iwae_fused.iwelbo | reference.iwelbo | speedup |")
        log("|---|---|---|---|")
        for k in args.timing_k:
            print(f"  timing the step at k = {k} ...", file=sys.stderr, flush=True)
            t = time_training_step(k, args, data, args.device)
            log(f"| {k} | {t['iwae_fused'] * 1e3:.2f} ms | {t['reference'] * 1e3:.2f} ms | "
                f"{t['reference'] / t['iwae_fused']:.2f}x |")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return results


if __name__ == "__main__":
    main()
