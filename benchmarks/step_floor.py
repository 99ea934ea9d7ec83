"""What a training step costs before any kernel runs: the step of iwelbo at a
dispatch-bound shape beside the eager expression and beside a one-op graph
(x.sum(0)), whose step is the floor that dispatch, autograd and Python set.

    python benchmarks/step_floor.py            # [50, 128] over dim 0
    python benchmarks/step_floor.py 50 128 pq  # with log_q
"""
import math
import statistics
import sys
import time

import torch

import iwae_fused

K = int(sys.argv[1]) if len(sys.argv) > 1 else 50
B = int(sys.argv[2]) if len(sys.argv) > 2 else 128
form = sys.argv[3] if len(sys.argv) > 3 else "w"
x = [torch.randn(K, B, requires_grad=True) for _ in range(1 if form == "w" else 2)]
g = torch.randn(B)


def eager(*a):
    return torch.logsumexp(a[0] if len(a) == 1 else a[0] - a[1], 0) - math.log(K)


contenders = {
    "iwae_fused.iwelbo": lambda *a: iwae_fused.iwelbo(*a, dim=0),
    "eager expression": eager,
    "x.sum(0) (one op)": lambda *a: a[0].sum(0),
}


def steps(f, n):
    t0 = time.perf_counter()
    for _ in range(n):
        for t in x:
            t.grad = None
        f(*x).backward(g)
    return (time.perf_counter() - t0) / n


times = {name: [] for name in contenders}
for f in contenders.values():
    steps(f, 500)  # warm up
for _ in range(15):  # interleaved batches
    for name, f in contenders.items():
        times[name].append(steps(f, 2000))
us = {name: statistics.median(v) * 1e6 for name, v in times.items()}
print(f"[{K}, {B}] over dim 0, {form}, {torch.get_num_threads()} threads, step medians:")
for name, v in us.items():
    print(f"  {name:20s} {v:7.1f} us")
print(f"  iwelbo vs eager {us['eager expression'] / us['iwae_fused.iwelbo']:.2f}x; "
      f"iwelbo above the one-op floor: {us['iwae_fused.iwelbo'] - us['x.sum(0) (one op)']:.1f} us")
