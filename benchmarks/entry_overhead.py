"""Per-call cost of the Python entry point iwae_fused.iwelbo, against the
entry point of another git revision and against the bare operator.

    python benchmarks/entry_overhead.py [--rev main] [--shape 50 128]

The other revision's iwelbo() is taken from its iwae_fused/ops.py (git show)
and run against this build's operator, so only the Python around the call
differs. Variants run interleaved, in rounds of N calls each, in one process
on one thread; the medians per call and the median of the per-round
differences are printed. Forward calls, no autograd graph unless --grad.
Timed by the thread's CPU time by default: on a machine shared with other
jobs, wall time mostly measures preemption.
"""

import argparse
import ast
import statistics
import subprocess
import time

import torch

import iwae_fused
from iwae_fused import ops


def entry_from(rev):
    """iwelbo() as written at `rev`, bound to this build's operator."""
    src = subprocess.run(["git", "show", f"{rev}:iwae_fused/ops.py"], check=True,
                         capture_output=True, text=True).stdout
    tree = ast.parse(src)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "iwelbo")
    module = ast.Module(body=[fn], type_ignores=[])
    namespace = dict(vars(ops))  # _iwelbo, _explain or _args, Tensor, Optional, ...
    exec(compile(module, f"{rev}:iwae_fused/ops.py", "exec"), namespace)
    return namespace["iwelbo"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="main")
    ap.add_argument("--shape", type=int, nargs="+", default=[50, 128])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--grad", action="store_true")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="cpu",
                    help="cpu: this thread's CPU time (steadier on a shared machine)")
    a = ap.parse_args()
    clock = time.thread_time_ns if a.clock == "cpu" else time.perf_counter_ns
    torch.set_num_threads(1)
    dtype = getattr(torch, a.dtype)
    lp = torch.randn(a.shape, dtype=dtype).requires_grad_(a.grad)
    lq = torch.randn(a.shape, dtype=dtype)
    # every variant a local name in the same kind of lambda: the same lookups
    variants = {
        "operator": lambda f=ops._iwelbo: f(lp, lq, 0, False, 0.0),
        a.rev: lambda f=entry_from(a.rev): f(lp, lq),
        "this tree": lambda f=iwae_fused.iwelbo: f(lp, lq),
    }
    times = {k: [] for k in variants}
    order = list(variants)
    for r in range(a.rounds):
        for k in order[r % 3:] + order[:r % 3]:  # rotated: no variant always first
            f = variants[k]
            t = clock()
            for _ in range(a.calls):
                f()
            times[k].append((clock() - t) / a.calls)
    print(f"iwelbo {a.shape} {a.dtype}{' requires_grad' if a.grad else ''}, "
          f"{a.rounds} rounds x {a.calls} calls, {a.clock} clock, torch {torch.__version__}")
    for k, v in times.items():
        print(f"  {k:>10}: median {statistics.median(v):8.0f} ns/call")
    base = times[a.rev]
    for k in ("operator", "this tree"):
        d = [x - y for x, y in zip(times[k], base)]
        print(f"  {k} - {a.rev}: median {statistics.median(d):+.1f} ns/call "
              f"(quartiles {statistics.quantiles(d, n=4)[0]:+.1f} .. {statistics.quantiles(d, n=4)[2]:+.1f})")


if __name__ == "__main__":
    main()
