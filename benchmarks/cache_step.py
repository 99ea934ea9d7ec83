"""The training step with and without the CPU output cache
(IWAE_FUSED_CPU_CACHE_MB=0), in alternating child processes: step time and
the page faults each step takes.

    python benchmarks/cache_step.py              # [8, 2^20] over dim 0, log-weights
    python benchmarks/cache_step.py 8 1048576 pq
"""
import os
import statistics
import subprocess
import sys

CHILD = r"""
import resource, sys, time, torch, iwae_fused
K, B, form = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
x = [torch.randn(K, B, requires_grad=True) for _ in range(1 if form == "w" else 2)]
g = torch.randn(B)
def step():
    for t in x:
        t.grad = None
    iwae_fused.iwelbo(*x, dim=0).backward(g)
for _ in range(5):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t0 = time.perf_counter()
for _ in range(40):
    step()
dt = (time.perf_counter() - t0) / 40
print(dt * 1e3, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 40)
"""

args = sys.argv[1:] or ["8", "1048576", "w"]
if len(args) == 2:
    args.append("w")
res = {"fresh (cache off)": [], "cached": []}
for _ in range(5):
    for name, mb in (("fresh (cache off)", "0"), ("cached", "1024")):
        env = dict(os.environ, IWAE_FUSED_CPU_CACHE_MB=mb)
        out = subprocess.run([sys.executable, "-c", CHILD, *args], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        res[name].append((float(out[0]), float(out[1])))
print(f"[{args[0]}, {args[1]}] over dim 0, {args[2]}: training step, medians of 5 processes")
for name, v in res.items():
    print(f"  {name:18s} {statistics.median(t for t, _ in v):7.2f} ms, "
          f"{statistics.median(f for _, f in v):7.0f} page faults per step")
