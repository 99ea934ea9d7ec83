"""The side-by-side benchmark table: iwae_fused against the eager expression
and torch.compile of it, forward, backward and the training step, in both
call forms (the log-weights only, iwelbo(log_w); and iwelbo(log_p, log_q)).

    python benchmarks/bench.py                      # CPU, the default shapes
    python benchmarks/bench.py --preset short       # short slices
    python benchmarks/bench.py --publish short      # regenerate benchmarks/RESULTS-short.md
    python benchmarks/bench.py --device cuda --shapes 50x128:0,4096x16384:0

Times are medians of interleaved runs in one process; GB/s counts the bytes
that must move (benchmarks/harness.py: bytes_moved) and is set against a
device copy measured in the same run. The table says beside it when the
machine was busy (load average above the core count) or the repeats spread
widely, and how many threads the run used.
"""

import argparse
import csv
import datetime
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from published import FLOOR_TARGETS, PUBLISH, missed, out_of_reach  # noqa: E402

import iwae_fused  # noqa: E402

DEFAULT_SHAPES = "50x128:0,5000x100:0,1024x16384:0,64x65536:1"
# The GPU suite: the CPU shapes, bandwidth-scale ones (2^26 to 2^28 elements,
# both layouts), and few outputs with many samples (split-K).
GPU_SHAPES = DEFAULT_SHAPES + (
    ",8192x8192:0,16384x16384:0,4096x65536:0"
    ",8192x8192:1,16384x16384:1,1024x262144:1"
    ",1000000x1:0,1000000x8:0,1000000x64:0,64x1000000:1"
    # short rows, small inner sizes, one example with many samples (VIMCO)
    ",67108864x2:1,1048576x8:1,1048576x16:1,1048576x32:1,1048576x64:1"
    ",1000000x50x2:1,1x100000:1"
)
# Short slices (issue 13): [B, K] over the last dim with the small K of
# training at large B, the same K as [K, B] columns, a small inner size, and
# a tiny inner size with a huge K.
_SHORT_K = (2, 3, 5, 8, 16, 50)
_SHORT_B = (1 << 16, 1 << 20)
SHORT_SHAPES = ",".join(
    ["262144x5:1", "10000x5x2:1", "1048576x2:0"]
    + [f"{b}x{k}:1" for b in _SHORT_B for k in _SHORT_K]
    + [f"{k}x{b}:0" for b in _SHORT_B for k in _SHORT_K]
)
PRESETS = {"cpu": DEFAULT_SHAPES, "gpu": GPU_SHAPES, "short": SHORT_SHAPES}
LABELS = {
    "50x128:0": "training",
    "5000x100:0": "evaluation",
    "1024x16384:0": "large",
    "64x65536:1": "large, rows",
    "8192x8192:0": "2^26",
    "16384x16384:0": "2^28",
    "4096x65536:0": "2^28",
    "8192x8192:1": "2^26, rows",
    "16384x16384:1": "2^28, rows",
    "1024x262144:1": "2^28, rows",
    "1000000x1:0": "B=1, K=1e6",
    "1000000x8:0": "B=8, K=1e6",
    "1000000x64:0": "B=64, K=1e6",
    "64x1000000:1": "B=64, K=1e6, rows",
    "67108864x2:1": "2^26 short rows, K=2",
    "1048576x8:1": "short rows, K=8",
    "1048576x16:1": "short rows, K=16",
    "1048576x32:1": "short rows, K=32",
    "1048576x64:1": "short rows, K=64",
    "1000000x50x2:1": "small inner",
    "1x100000:1": "B=1, K=1e5 (VIMCO)",
    "262144x5:1": "short rows, K=5",
    "10000x5x2:1": "small inner",
    "1048576x2:0": "inner 2, K=2^20",
    **{f"{b}x{k}:1": f"short rows, K={k}" for b in _SHORT_B for k in _SHORT_K},
    **{f"{k}x{b}:0": f"K={k}" for b in _SHORT_B for k in _SHORT_K},
}


def machine(device):
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, iwae_fused CPU kernels {iwae_fused._C.cpu_kernels()}"


def run(args):
    timer = harness.Timer(args.device, args.clock)
    dtype = getattr(torch, args.dtype)
    modes = [m for m in args.modes if m == "fwd" or harness.OPS[args.op]["grad"]]
    forms = [f for f in args.forms if f in harness.OPS[args.op]["forms"]]
    loads = [harness.load_average()]
    copy_bps = harness.copy_bandwidth(args.device, timer)
    one_op = one_op_steps(forms, modes, dtype, args, timer)
    rows = []
    cases = harness.parse_cases(args.shapes)
    try:
        from tqdm import tqdm

        progress = tqdm(
            total=len(cases) * len(modes) * len(forms), disable=not sys.stderr.isatty()
        )
    except ImportError:
        progress = None
    t_start = time.perf_counter()
    for ci, case in enumerate(cases):
        if progress is None or progress.disable:  # a line per shape where there is no bar
            print(f"[{ci + 1}/{len(cases)}] {case.label} ({time.perf_counter() - t_start:.0f} s)",
                  file=sys.stderr, flush=True)
        for form in forms:
            # One compiled function per shape and form, as in a user's script;
            # the bwd mode's replay needs its own (harness.compiled_reference).
            plain = harness.contenders(args.op, compile=not args.no_compile)
            replay = None
            for mode in modes:
                if mode == "bwd":
                    replay = replay or harness.contenders(
                        args.op, compile=not args.no_compile, replayable=True
                    )
                contenders = replay if mode == "bwd" else plain
                steps = {
                    name: harness.make_step(
                        fn, case, mode, dtype, args.device, scale=args.scale, form=form
                    )
                    for name, fn in contenders.items()
                }
                tm = harness.interleaved_timings(steps, timer, args.repeats)
                med = {n: t.median for n, t in tm.items()}
                ours = med["iwae_fused"]
                nbytes = harness.bytes_moved(case, mode, dtype.itemsize, form)
                row = dict(
                    shape="x".join(map(str, case.shape)),
                    dim=case.dim,
                    label=LABELS.get(case.label, ""),
                    form=form,
                    mode=mode,
                    **{f"{n}_us": med[n] * 1e6 for n in contenders},
                    op=args.op,
                    vs_eager=med["eager"] / ours,
                    gbps=nbytes / ours / 1e9,
                    of_copy=nbytes / ours / copy_bps,
                    # Time over the memory floor: the bytes that must move
                    # at the copy's rate (1.0 = at the floor).
                    floor_x=ours / (nbytes / copy_bps),
                    spread=max(t.spread for t in tm.values()),
                )
                if "compile" in med:
                    row["vs_compile"] = med["compile"] / ours
                rows.append(row)
                loads.append(harness.load_average())
                if progress:
                    progress.update()
    if progress:
        progress.close()
    # Measured again at the end; the lower of the two is kept, so that a slow
    # moment makes fewer floors look out of reach, never more.
    for form, t in one_op_steps(forms, modes, dtype, args, timer).items():
        one_op[form] = min(one_op[form], t)
    for r in rows:
        if r["mode"] == "fwdbwd" and r["form"] in one_op:
            floor_s = r["iwae_fused_us"] / 1e6 / r["floor_x"]
            r["one_op_us"] = one_op[r["form"]] * 1e6
            # The least this step's time over its floor can be here: the
            # floor plus what any one-op step costs.
            r["reach_x"] = (floor_s + one_op[r["form"]]) / floor_s
    return rows, copy_bps, [x for x in loads if x is not None]


def one_op_steps(forms, modes, dtype, args, timer):
    """Seconds of the cheapest training step per form (harness.ONE_OP_STEP),
    where the run times training steps."""
    if "fwdbwd" not in modes:
        return {}
    return {f: harness.one_op_step_seconds(f, dtype, args.device, timer, args.repeats)
            for f in forms}


# A row whose contenders' batches spread more than this (interquartile range
# over the median) is marked unstable.
UNSTABLE_SPREAD = 0.15


def conditions(rows, loads):
    """Lines that say how trustworthy the run was: threads, load, spread."""
    cores = os.cpu_count() or 1
    threads = torch.get_num_threads()
    lines = [
        f"- threads: {threads} (torch.get_num_threads()) on {cores} cores; "
        f"load average (1 min) during the run: "
        + (f"{min(loads):.1f} to {max(loads):.1f}" if loads else "unknown")
    ]
    warn = []
    if loads and max(loads) > cores:
        warn.append(
            f"the machine was busy: the load average reached {max(loads):.1f} on "
            f"{cores} cores, so other processes shared the cores and the times "
            "are unreliable (a contender whose threads wait on each other, as eager's "
            "and compile's OpenMP loops do, can stall for a whole time slice)"
        )
    if threads > cores:
        warn.append(f"{threads} threads on {cores} cores: oversubscribed")
    unstable = [r for r in rows if r.get("spread", 0) > UNSTABLE_SPREAD]
    if unstable:
        warn.append(
            f"{len(unstable)} of {len(rows)} rows (marked ~) had repeats spread more than "
            f"{UNSTABLE_SPREAD:.0%} (interquartile range over the median)"
        )
    if warn:
        lines.append("- **WARNING: " + "; ".join(warn) + ". Re-run on a quiet machine, "
                     "or with --threads 1.**")
    return lines, bool(warn)


def to_markdown(rows, copy_bps, args, loads=()):
    cond, busy = conditions(rows, list(loads))
    head = [
        f"# {args.op} benchmark ({args.device}, {args.dtype})",
        "",
        f"- machine: {machine(args.device)}",
        f"- torch {torch.__version__}, iwae_fused {iwae_fused.__version__}, "
        f"Python {platform.python_version()}",
        f"- date: {datetime.date.today().isoformat()}",
        *cond,
        f"- command: `{command_line(args)}`",
        f"- device copy bandwidth (same run): {copy_bps / 1e9:.1f} GB/s (read + write)",
        *one_op_line(rows),
        *([f"- **times are CPU time (user + system, all threads), not wall time**"]
          if args.clock == "cpu" else []),
        f"- log_p, log_q ~ N(0, {args.scale:g}^2); medians of {args.repeats} interleaved "
        "batches, each after an untimed call of the same contender; torch.compile with "
        "dynamic=False, one compiled function per shape and form",
        "- form: `w` is the log-weights only, `iwelbo(log_w)`; `pq` is `iwelbo(log_p, log_q)`",
        "- mode: fwd is the forward under no_grad; fwdbwd is the training step as users run "
        "it (gradients set to None as zero_grad does, a fresh graph, `f(x).backward(g)`); "
        "bwd replays `out.backward(g)` alone on one graph",
        "- GB/s: bytes that must move (inputs read once, outputs and gradients written once) "
        "/ time; 'of copy' sets it against the copy above (shapes that fit in cache can "
        "exceed 100%); x floor: time over those bytes at the copy's rate",
        "",
    ]
    has_compile = any("compile_us" in r for r in rows)
    cols = ["shape", "dim", "", "form", "mode", "iwae_fused", "eager", "vs eager"]
    if has_compile:
        cols[7:7] = ["compile"]
        cols += ["vs compile"]
    cols += ["GB/s", "of copy", "x floor"]
    # The warning again beside the tables, where a reader looks.
    note = ["> " + cond[-1][2:], ""] if busy else []
    lines = note + targets_table(rows, args.preset) if has_compile else []
    lines += note + ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        mark = " ~" if r.get("spread", 0) > UNSTABLE_SPREAD else ""
        cells = [f"[{r['shape']}]", str(r["dim"]), r["label"], r["form"], r["mode"] + mark,
                 _us(r["iwae_fused_us"]), _us(r["eager_us"])]
        if has_compile:
            cells.append(_us(r["compile_us"]))
        cells.append(f"{r['vs_eager']:.2f}x")
        if has_compile:
            cells.append(f"{r['vs_compile']:.2f}x")
        cells += [f"{r['gbps']:.1f}", f"{100 * r['of_copy']:.0f}%", f"{r['floor_x']:.1f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(head + lines) + "\n"


def one_op_line(rows):
    """The header line giving the one-op step of each form, where measured."""
    seen = {}
    for r in rows:
        if "one_op_us" in r:
            seen.setdefault(r["form"], r["one_op_us"])
    if not seen:
        return []
    each = ", ".join(f"{f} {_us(t)}" for f, t in seen.items())
    return [f"- one-op training step (same run; the least any step costs here: x.sum(0) of "
            f"2 elements for w, torch.dot of 2 for pq): {each}"]


def targets_table(rows, preset):
    """One line per shape and form: times and ratios, misses in bold."""
    by_case = {}
    for r in rows:
        by_case.setdefault((r["shape"], r["dim"], r["form"]), {})[r["mode"]] = r
    short = preset == "short"
    misses = unreachable = 0

    def ratio(r, key):
        nonlocal misses, unreachable
        v = r.get(key)
        if v is None:
            return "-"
        text = f"{v:.1f}x" if key == "floor_x" and r["mode"] == "fwd" else f"{v:.2f}x"
        miss, far = missed(r, key, preset), out_of_reach(r, key, preset)
        misses += miss
        unreachable += far
        return (f"**{text}**" if miss else text) + ("†" if far else "")

    def times(r):
        ms = [r.get(f"{n}_us") for n in ("iwae_fused", "eager", "compile")]
        return " / ".join("-" if t is None else f"{t / 1e3:.3g}" for t in ms)

    lines = [
        "| shape | dim | form | fwd ms (fused / eager / compile) | vs eager | vs compile "
        "| x floor | fwd+bwd ms (fused / eager / compile) | vs eager | vs compile | x floor "
        "| bwd ms (fused / eager / compile) | vs compile |",
        "|" + "---|" * 13,
    ]
    for (shape, dim, form), modes in by_case.items():
        cells = [f"[{shape.replace('x', ', ')}]", str(dim), form]
        f, fb, b = modes.get("fwd"), modes.get("fwdbwd"), modes.get("bwd")
        cells += [times(f), ratio(f, "vs_eager"), ratio(f, "vs_compile"),
                  ratio(f, "floor_x")] if f else ["-"] * 4
        cells += [times(fb), ratio(fb, "vs_eager"), ratio(fb, "vs_compile"),
                  ratio(fb, "floor_x")] if fb else ["-"] * 4
        cells += [times(b), f"{b['vs_compile']:.2f}x" if b and "vs_compile" in b else "-"] if b else ["-"] * 2
        lines.append("| " + " | ".join(cells) + " |")
    what = (
        "fwd and fwd+bwd at least 2x faster than eager and 1.2x faster than torch.compile; "
        "the forward within 2x and the training step within 1.3x of their memory floors"
        if short else
        "the training step (fwd+bwd) at least 2x faster than eager and 1.2x faster than "
        "torch.compile"
    )
    limit = FLOOR_TARGETS["fwdbwd"]
    reach = (
        f" Marked †: {unreachable} training-step floor{'s' if unreachable > 1 else ''} that "
        f"no step could meet here, the floor plus the one-op step above being already more "
        f"than {limit:g}x the floor."
        if unreachable else ""
    )
    head = [
        "## Targets",
        "",
        f"In both call forms: {what}. Misses in bold: {misses}.{reach} "
        "Where a target is missed, benchmarks/NOTES.md says why.",
        "",
    ]
    return head + lines + ["", "## All rows", ""]


def _us(t):
    return f"{t / 1e3:.2f} ms" if t >= 1000 else f"{t:.1f} us"


def plot(rows, path, title_suffix=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"[{r['shape']}] d{r['dim']} {r.get('form', '')}\n{r['mode']}" for r in rows]
    keys = [k for k in ("vs_eager", "vs_compile") if k in rows[0]]
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(rows)), 4.6))
    width = 0.8 / len(keys)
    for i, k in enumerate(keys):
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(rows))]
        # bars grow from 1x: up where iwae_fused is faster, down where slower
        ax.bar(xs, [r[k] - 1.0 for r in rows], width, bottom=1.0, label=k.replace("_", " "))
    ax.axhline(1.0, color="k", lw=0.8)
    # A log scale: 1.5x next to 26x stays readable, and 0.5x (slower) is as
    # far below the line as 2x is above it.
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=45, ha="right")
    ax.set_ylabel("speedup of iwae_fused (x, log scale)")
    ax.set_title(f"{rows[0]['op']}: time of the alternative / time of iwae_fused\n{title_suffix}",
                 fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def command_line(args):
    """The command that reproduces this table."""
    parts = ["python benchmarks/bench.py"]
    if getattr(args, "publish", None):
        parts += ["--publish", args.publish]
        return " ".join(parts + (["--threads", str(args.threads)] if args.threads else []))
    if args.op != "iwelbo":
        parts += ["--op", args.op]
    if args.preset and PRESETS.get(args.preset) == args.shapes:
        parts += ["--preset", args.preset]
    else:
        parts += ["--shapes", args.shapes]
    if args.scale != 1.0:
        parts += ["--scale", f"{args.scale:g}"]
    if args.repeats != 9:
        parts += ["--repeats", str(args.repeats)]
    if args.modes != DEFAULT_MODES:
        parts += ["--modes", *args.modes]
    if args.forms != list(harness.FORMS):
        parts += ["--forms", *args.forms]
    if args.dtype != "float32":
        parts += ["--dtype", args.dtype]
    if args.threads:
        parts += ["--threads", str(args.threads)]
    if args.clock != "wall":
        parts += ["--clock", args.clock]
    return " ".join(parts)


DEFAULT_MODES = ["fwd", "bwd", "fwdbwd"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", default="iwelbo", choices=sorted(harness.OPS),
                    help="iwelbo, renyi (alpha = 0.5), vimco, dreg or ess (forward only)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--shapes", default=None,
                    help="comma-separated KxB:dim items (default: the preset's)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="shape suite; default: gpu on a CUDA device, else cpu")
    ap.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES),
                    choices=["fwd", "bwd", "fwdbwd"],
                    help="fwd: forward under no_grad; bwd: out.backward(g) replayed on one "
                         "graph; fwdbwd: the training step (fresh graph, grads set to None)")
    ap.add_argument("--forms", nargs="+", default=list(harness.FORMS),
                    choices=list(harness.FORMS),
                    help="w: iwelbo(log_w), the log-weights only; pq: iwelbo(log_p, log_q)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for the run (default: torch's choice); "
                         "the table reports the count used")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: CPU time of the process instead of wall time; with "
                         "--threads 1, a comparison that a busy machine barely moves")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="log_p and log_q ~ N(0, scale^2); 100 spreads the log-weights "
                         "over hundreds of nats, as early training does")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--markdown", help="write the table here")
    ap.add_argument("--csv", help="write the rows here")
    ap.add_argument("--plot", help="write a PNG of the speedups here")
    ap.add_argument("--publish", choices=sorted(PUBLISH),
                    help="regenerate a committed table in benchmarks/ (its preset, op and "
                         "file names; see PUBLISH)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.publish:
        spec = PUBLISH[args.publish]
        here = os.path.dirname(os.path.abspath(__file__))
        runs = []
        for run_args in spec["runs"]:
            a = argparse.Namespace(**vars(args))
            for k, v in run_args.items():
                setattr(a, k, v)
            runs.append(a)
        for key in ("markdown", "csv", "plot"):
            setattr(args, key, os.path.join(here, spec[key]) if key in spec else None)
    else:
        runs = [args]
    sections, all_rows = [], []
    for a in runs:
        if a.shapes is None:
            a.preset = a.preset or ("gpu" if torch.device(a.device).type == "cuda" else "cpu")
            a.shapes = PRESETS[a.preset]
        rows, copy_bps, loads = run(a)
        md = to_markdown(rows, copy_bps, a, loads)
        print(md, flush=True)
        sections.append(md)
        all_rows += rows
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(sections))
    if args.csv:
        fields = []
        for r in all_rows:
            fields += [k for k in r if k not in fields]
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(all_rows)
    if args.plot:
        plot([r for r in all_rows if r["mode"] != "bwd"], args.plot,
             f"{machine(args.device)}, torch {torch.__version__}, {datetime.date.today()}")


if __name__ == "__main__":
    main()
