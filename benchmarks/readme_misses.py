"""The README's table of missed targets, drawn from the published runs
(benchmarks/results.csv for the cpu preset, results-short.csv for the short
one), so that the README cannot say more than the tables do.

    python benchmarks/readme_misses.py            # print the table
    python benchmarks/readme_misses.py --write    # replace it in README.md
    python benchmarks/readme_misses.py --summary  # the figures the README's prose quotes

The README holds the table between the two MARKERS; tests/test_bench_tables.py
fails when it differs from what this script prints.
"""

import argparse
import csv
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from published import PUBLISH, TARGET_NAMES, missed, out_of_reach, target_of  # noqa: E402

MARKERS = ("<!-- missed targets: begin (python benchmarks/readme_misses.py --write) -->",
           "<!-- missed targets: end -->")
MODES = {"fwd": "forward", "fwdbwd": "training step"}  # the modes with targets
# The presets whose tables set targets, in the order the README lists them.
PRESETS = ("cpu", "short")


def read_rows(preset):
    """The published rows of a preset, numbers as floats."""
    with open(os.path.join(HERE, PUBLISH[preset]["csv"]), newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in list(r.items()):
            if v in ("", None):
                del r[k]
            elif k not in ("shape", "label", "form", "mode", "op"):
                r[k] = float(v)
        r["dim"] = int(r["dim"])
    return rows


def misses(preset, rows):
    """(row, ratio key) for every target the rows miss."""
    return [(r, key) for r in rows for key in TARGET_NAMES if missed(r, key, preset)]


def table(rows_of=read_rows):
    """The markdown table; rows_of(preset) gives a preset's rows."""
    lines = []
    for preset in PRESETS:
        rows = rows_of(preset)
        found = misses(preset, rows)
        name = PUBLISH[preset]["markdown"]
        if not found:
            lines += [f"`benchmarks/{name}` ({preset} preset): every target met.", ""]
            continue
        # The reach, where the run timed the one-op step (bench.py's header).
        reach = any("reach_x" in r for r, _ in found)
        lines += [
            f"`benchmarks/{name}` ({preset} preset): {len(found)} of its targets missed"
            + ("." if reach else "; this run predates the timing of the one-op step, so it "
               "gives no reach."),
            "",
            "| shape | dim | form | measure | target | measured |"
            + (" reach: (floor + one-op step) / floor |" if reach else ""),
            "|---|---|---|---|---|---|" + ("---|" if reach else ""),
        ]
        for r, key in found:
            target = target_of(key, r["mode"], preset)
            cells = [f"[{r['shape'].replace('x', ', ')}]", str(r["dim"]), r["form"],
                     f"{MODES[r['mode']]}, {TARGET_NAMES[key]}",
                     f"{'at most' if key == 'floor_x' else 'at least'} {target:g}x",
                     f"{r[key]:.2f}x"]
            if reach:
                limit = f"{r['reach_x']:.2f}x" if key == "floor_x" and "reach_x" in r else "-"
                cells.append(limit + (" (out of reach)" if out_of_reach(r, key, preset) else ""))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def span(values, fmt="{:.1f}"):
    """'lo-hi' of the values, each as fmt gives it."""
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def summary(rows_of=read_rows):
    """The figures the README's and docs' prose quote, one per line: the
    training step's ratios over the short shapes and over the cpu preset's
    larger shapes, the training shape's step, and how many short training
    steps are within their 1.3x floor."""
    short = [r for r in rows_of("short") if r["mode"] == "fwdbwd"]
    cpu = [r for r in rows_of("cpu") if r["mode"] == "fwdbwd"]
    train = [r for r in cpu if r["label"] == "training"]
    large = [r for r in cpu if r["label"] != "training"]
    within = sum(not missed(r, "floor_x", "short") for r in short if "floor_x" in r)
    lines = [f"short training steps: {span([r['vs_eager'] for r in short])}x eager, "
             f"{span([r['vs_compile'] for r in short])}x compile",
             f"cpu preset, larger shapes, training steps: {span([r['vs_eager'] for r in large])}x "
             f"eager, {span([r['vs_compile'] for r in large])}x compile",
             f"training shape step: {span([r['iwae_fused_us'] for r in train], '{:.0f}')} us, "
             f"{span([r['vs_eager'] for r in train])}x eager, "
             f"{span([r['vs_compile'] for r in train])}x compile",
             f"short training steps within 1.3x of the floor: {within} of {len(short)}"]
    return "\n".join(lines)


def block():
    """The README's block, markers included."""
    return f"{MARKERS[0]}\n{table()}\n{MARKERS[1]}"


def replace_block(text, new_block):
    """text with its marked block replaced; ValueError when the markers are missing."""
    begin, end = text.find(MARKERS[0]), text.find(MARKERS[1])
    if begin < 0 or end < begin:
        raise ValueError(f"README.md lacks the markers {MARKERS}")
    return text[:begin] + new_block + text[end + len(MARKERS[1]):]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="replace the table in README.md")
    ap.add_argument("--summary", action="store_true",
                    help="print the figures the README's prose quotes")
    args = ap.parse_args(argv)
    if args.summary:
        print(summary())
        return
    if not args.write:
        print(block())
        return
    path = os.path.join(os.path.dirname(HERE), "README.md")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(replace_block(text, block()))


if __name__ == "__main__":
    main()
