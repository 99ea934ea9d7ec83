"""Signal-to-noise ratio of IWAE and DReG gradients as K grows.

Reproduces the experiment of Rainforth et al. (2018), "Tighter Variational
Bounds are Not Necessarily Better", on their Gaussian model, with
iwae_fused.iwelbo (IWAE) and iwae_fused.dreg (DReG, Tucker et al. 2018):

    D = 20, p(z) = N(mu, I), p(x | z) = N(z, I), q(z | x) = N(A x + b, (2/3) I),
    1024 data points from the model, parameters near the optimum
    (the MLE mu and the posterior mean's A = I/2, b = mu/2, each perturbed by 0.01).

For each K and each of `--points` data points, the gradient of that point's
bound is drawn `--repeats` times; a parameter's SNR is |mean| / std of its
draws; the table gives the root mean square over the parameters of the
inference network (A, b) or of the generative model (mu) and over the points,
with the squared mean's sampling bias removed (as in Rainforth et al., at
the optimum the data set's average gradient is ~0, so the SNR is per point). Expected: under IWAE the inference SNR falls roughly as K^(-1/2)
while the generative SNR rises as K^(1/2); under DReG the inference SNR does
not fall.

    python examples/snr_rainforth.py                 # ~1 minute on 2 CPU cores
    python examples/snr_rainforth.py --ks 1 10 100 1000 --repeats 1000 --device cuda
"""

import argparse
import math
import os

import torch

import iwae_fused

LOG_2PI = math.log(2 * math.pi)


def normal_log_prob(x, mean, var):
    return (-0.5 * (x - mean) ** 2 / var - 0.5 * math.log(var) - 0.5 * LOG_2PI).sum(-1)


def make_problem(D=20, N=1024, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    mu_true = torch.randn(D, generator=g)
    z = mu_true + torch.randn(N, D, generator=g)
    x = z + torch.randn(N, D, generator=g)
    # Near the optimum: mu at the MLE (the data mean), A = I/2, b = mu/2 (the
    # exact posterior mean is (x + mu)/2), each perturbed by 0.01.
    mu = x.mean(0) + 0.01 * torch.randn(D, generator=g)
    A = 0.5 * torch.eye(D) + 0.01 * torch.randn(D, D, generator=g)
    b = 0.5 * x.mean(0) + 0.01 * torch.randn(D, generator=g)
    to = lambda t: t.to(device).requires_grad_()  # noqa: E731
    return x.to(device), to(mu), to(A), to(b)


def gradient_draws(x_n, mu, A, b, K, estimator, repeats, gen):
    """`repeats` independent draws of the gradient of one data point's bound
    w.r.t. (mu, A, b), in one batched pass: every draw gets its own copy of
    the parameters, so one backward yields every draw's gradient."""
    D = x_n.shape[0]
    mu_r = mu.detach().expand(repeats, D).clone().requires_grad_()
    A_r = A.detach().expand(repeats, D, D).clone().requires_grad_()
    b_r = b.detach().expand(repeats, D).clone().requires_grad_()
    q_var = 2.0 / 3.0
    q_mean = A_r @ x_n + b_r  # [R, D]
    eps = torch.randn(K, repeats, D, generator=gen, device=x_n.device)
    z = q_mean + math.sqrt(q_var) * eps  # [K, R, D]
    log_p = normal_log_prob(z, mu_r, 1.0) + normal_log_prob(x_n, z, 1.0)  # [K, R]
    if estimator == "iwae":
        bound = iwae_fused.iwelbo(log_p, normal_log_prob(z, q_mean, q_var), dim=0)
    else:  # DReG: log q with q's parameters detached, z passed along
        bound = iwae_fused.dreg(log_p, normal_log_prob(z, q_mean.detach(), q_var), z, dim=0)
    g_mu, g_A, g_b = torch.autograd.grad(bound.sum(), (mu_r, A_r, b_r))
    return g_mu, torch.cat([g_A.flatten(1), g_b], 1)  # [R, D], [R, D*D + D]


def snr_squared(draws):
    """Mean over parameters of E[g]^2 / Var[g], from [R, P] draws, with the
    sampling bias of the squared mean (Var/R) taken off, so that a falling
    SNR is not stopped by the 1/sqrt(R) floor of |mean| / std."""
    d = draws.double()
    R = d.shape[0]
    var = d.var(0).clamp_min(1e-300)
    return ((d.mean(0) ** 2 - var / R) / var).mean().item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 3, 10, 30, 100, 300, 1000])
    ap.add_argument("--repeats", type=int, default=1000, help="gradient draws per point and K")
    ap.add_argument("--points", type=int, default=4, help="data points the SNR is averaged over")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None,
                    help="folder for the table and plot (default: examples/output/runs, which git "
                         "ignores; --publish: examples/output, the committed results)")
    ap.add_argument("--publish", action="store_true",
                    help="refresh the committed results in examples/output on purpose")
    args = ap.parse_args(argv)
    args.out = args.out or os.path.join("examples", "output", "" if args.publish else "runs")

    x, mu, A, b = make_problem(device=args.device, seed=args.seed)
    gen = torch.Generator(device=args.device).manual_seed(args.seed + 1)
    rows = []
    for K in args.ks:
        row = {"K": K}
        for est in ("iwae", "dreg"):
            gen_sq, inf_sq = [], []
            for n in range(args.points):  # SNR per data point, then averaged
                g_gen, g_inf = gradient_draws(x[n], mu, A, b, K, est, args.repeats, gen)
                gen_sq.append(snr_squared(g_gen))
                inf_sq.append(snr_squared(g_inf))
            # Root-mean-square SNR over parameters and points.
            row[f"{est}_inference"] = math.sqrt(max(sum(inf_sq) / len(inf_sq), 1e-12))
            row[f"{est}_generative"] = math.sqrt(max(sum(gen_sq) / len(gen_sq), 1e-12))
        rows.append(row)
        print(f"K={K:5d}  IWAE inference {row['iwae_inference']:8.3f}  generative "
              f"{row['iwae_generative']:8.3f} | DReG inference {row['dreg_inference']:8.3f}  "
              f"generative {row['dreg_generative']:8.3f}", flush=True)

    lines = [
        f"SNR of the gradient estimates (root mean square over parameters and "
        f"{args.points} data points of |mean|/std over {args.repeats} draws), "
        "Rainforth et al.'s Gaussian model, D = 20, N = 1024",
        "",
        "| K | IWAE inference | IWAE generative | DReG inference | DReG generative |",
        "|---|---|---|---|---|",
    ]
    floor = 1e-3  # below this the draws cannot resolve the SNR
    fmt = lambda v: f"{v:.3f}" if v >= floor else f"< {floor:g}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['K']} | {fmt(r['iwae_inference'])} | {fmt(r['iwae_generative'])} | "
                     f"{fmt(r['dreg_inference'])} | {fmt(r['dreg_generative'])} |")

    def slope(key):  # least squares in log-log over the resolved values
        pts = [(math.log(r["K"]), math.log(r[key])) for r in rows if r[key] >= floor]
        if len(pts) < 2:
            return float("nan")
        mx = sum(p[0] for p in pts) / len(pts)
        my = sum(p[1] for p in pts) / len(pts)
        return sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts)

    lines += ["", "log-log slopes (least squares over the resolved values): " + ", ".join(
        f"{k} {slope(k):+.2f}" for k in
        ("iwae_inference", "iwae_generative", "dreg_inference", "dreg_generative"))]
    text = "\n".join(lines)
    print("\n" + text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "snr.md"), "w") as f:
        f.write(text + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4.2))
        ks = [r["K"] for r in rows]
        # The two generative lines coincide (the estimators share that
        # gradient): big hollow squares under small filled diamonds, dashed
        # and dotted, so both stay visible.
        for key, style, extra in [
                ("iwae_inference", "C0-o", {}), ("dreg_inference", "C1-o", {}),
                ("iwae_generative", "C0--s", dict(ms=10, mfc="none", lw=2.5)),
                ("dreg_generative", "C1:D", dict(ms=4, lw=1.5))]:
            pts = [(r["K"], r[key]) for r in rows if r[key] >= floor]
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], style,
                      label=key.replace("_", " "), **extra)
        ax.set(xlabel="K (importance samples)", ylabel="gradient SNR",
               title="Rainforth et al. (2018) Gaussian model")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "snr.png"), dpi=120)
        print(f"plot: {os.path.join(args.out, 'snr.png')}")
    except ImportError:
        print("(matplotlib not installed: no plot)")
    return rows


if __name__ == "__main__":
    main()
