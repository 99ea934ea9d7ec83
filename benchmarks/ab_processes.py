"""Interleaved A/B of two builds of iwae_fused, in alternating processes.

    python benchmarks/ab_processes.py A_ROOT B_ROOT [--shapes 50x128:0,...]
        [--op iwelbo|vimco|normalized_weights] [--form pq|w] [--alpha 0] [--dtype float32]
        [--rounds 10] [--iters 200]

A shape is KxB:dim, K samples and B outputs: the tensor is [K, B] over dim 0
and [B, K] over dim 1 (2x65536:1 is 65536 rows of 2 samples, 65536x2:1 two
rows of 65536). With three or more sizes it is the tensor's shape as written
(10000x5x2:1).

--form w calls iwelbo(log_w) alone (the log-weights-only form); pq passes
log_p and log_q.

A_ROOT and B_ROOT are checkouts with a built extension (each is put first on
PYTHONPATH of its own processes); they may be the same checkout with a
different environment per side, --a-env / --b-env NAME=VALUE (repeatable),
e.g. --b-env IWAE_FUSED_LLC_BYTES=1000000000000 to turn the non-temporal
gradient stores off in B. --read-grads sums each gradient after every
backward, as the operation that consumes it would. Every round runs one
process per build, in alternating order, each timing batches of
forward+backward steps (a fresh graph per step, gradients set to None, as
training does) and the forward alone, and reporting the fastest batch. The table gives, per shape, the
minimum over rounds of each build and the ratio B / A: minima of many short
batches are what survives a shared, noisy machine (benchmarks/NOTES.md).
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch, iwae_fused
torch.set_num_threads(int(sys.argv[1]))
shapes, alpha, dt, iters = json.loads(sys.argv[2]), float(sys.argv[3]), getattr(torch, sys.argv[4]), int(sys.argv[5])
op = sys.argv[6]
form = sys.argv[7]
read_grads = sys.argv[8] == "1"
def bound(p, q, dim):
    if op == "vimco":
        return iwae_fused.vimco(p, q, dim)
    if op == "normalized_weights":
        return iwae_fused.normalized_weights(p, q, dim)
    return iwae_fused.iwelbo(p, q, dim, alpha=alpha)
res = {}
for item in shapes:
    dims, dim = item.split(":")
    sizes = tuple(map(int, dims.split("x")))
    dim = int(dim)
    if len(sizes) == 2:  # KxB: K samples, B outputs, over dim
        K, B = sizes
        shape = (K, B) if dim == 0 else (B, K)
    else:  # three or more sizes: the shape as written
        shape = sizes
    g = torch.Generator().manual_seed(0)
    p = (torch.randn(shape, generator=g) * 3).to(dt).requires_grad_()
    q = torch.randn(shape, generator=g).to(dt).requires_grad_() if form == "pq" else None
    def step():
        out = bound(p, q, dim)
        out.backward(torch.ones_like(out))
        if read_grads:  # as the next operation of a training step would
            p.grad.sum()
            if q is not None:
                q.grad.sum()
        p.grad = None
        if q is not None:
            q.grad = None
    def fwd():
        with torch.no_grad():
            bound(p, q, dim)
    best = {}
    modes = (("fwd", fwd),) if op == "normalized_weights" else (("fwdbwd", step), ("fwd", fwd))
    for name, fn in modes:
        for _ in range(3):
            fn()
        n = max(1, iters // 10)
        b = float("inf")
        for _ in range(10):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            b = min(b, (time.perf_counter() - t) / n)
        best[name] = b
    res[item] = best
print(json.dumps(res))
"""


def run(root, args, extra_env=()):
    env = dict(os.environ, PYTHONPATH=root)
    env.update(item.split("=", 1) for item in extra_env)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(args.threads), json.dumps(args.shapes.split(",")),
         str(args.alpha), args.dtype, str(args.iters), args.op, args.form,
         "1" if args.read_grads else "0"],
        env=env, capture_output=True, text=True, check=True, cwd="/",
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--shapes", default="50x128:0,128x50:1,1024x1024:0,5000x100:0,64x65536:1")
    ap.add_argument("--op", choices=["iwelbo", "vimco", "normalized_weights"], default="iwelbo",
                    help="normalized_weights: the forward only (it has no gradient)")
    ap.add_argument("--form", choices=["pq", "w"], default="pq")
    ap.add_argument("--alpha", type=float, default=0.0)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--read-grads", action="store_true",
                    help="read each gradient (.sum()) after every backward, as the next "
                         "operation of a training step would")
    ap.add_argument("--a-env", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE")
    args = ap.parse_args()
    for item in args.a_env + args.b_env:
        if "=" not in item or not item.split("=", 1)[0]:
            ap.error(f"--a-env / --b-env take NAME=VALUE, got {item!r}")
    if args.op == "vimco" and args.form == "w":
        ap.error("vimco needs log_p and log_q: --form pq")
    best = {"a": {}, "b": {}}
    for r in range(args.rounds):
        order = ("a", "b") if r % 2 == 0 else ("b", "a")
        for side in order:
            res = run(getattr(args, side), args, getattr(args, f"{side}_env"))
            for shape, times in res.items():
                for mode, t in times.items():
                    key = (shape, mode)
                    best[side][key] = min(best[side].get(key, float("inf")), t)
    def label(side):
        extra = getattr(args, f"{side}_env")
        return getattr(args, side) + (f" ({' '.join(extra)})" if extra else "")
    print(f"A = {label('a')}, B = {label('b')}; {args.op} ({args.form}), alpha = {args.alpha}, {args.dtype}, "
          f"{args.threads} threads, {args.rounds} rounds (minima, us)"
          + (", gradients read after each backward" if args.read_grads else ""))
    print("| shape (KxB:dim) | mode | A | B | B / A |")
    print("|---|---|---|---|---|")
    for key in best["a"]:
        a, b = best["a"][key] * 1e6, best["b"][key] * 1e6
        print(f"| {key[0]} | {key[1]} | {a:.1f} | {b:.1f} | {b / a:.3f} |")


if __name__ == "__main__":
    main()
