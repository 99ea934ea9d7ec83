"""The benchmark tables' verdicts: which ratios miss their targets, which
missed floors no step could meet (the floor plus a one-op step already above
the target), and the README's table of misses drawn from the published runs."""

import argparse
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench  # noqa: E402
import published  # noqa: E402
import readme_misses  # noqa: E402


def row(mode, form="w", **ratios):
    base = dict(shape="65536x2", dim=1, form=form, mode=mode, iwae_fused_us=100.0,
                eager_us=1000.0, compile_us=1000.0, vs_eager=10.0, vs_compile=10.0)
    return {**base, **ratios}


@pytest.mark.parametrize("r, key, preset, expect", [
    (row("fwdbwd", floor_x=1.31), "floor_x", "short", True),
    (row("fwdbwd", floor_x=1.29), "floor_x", "short", False),
    (row("fwdbwd", floor_x=5.0), "floor_x", "cpu", False),  # the cpu preset sets no floor
    (row("fwd", floor_x=2.1), "floor_x", "short", True),
    (row("fwd", floor_x=1.9), "floor_x", "short", False),
    (row("fwd", vs_eager=1.9), "vs_eager", "short", True),
    (row("fwd", vs_eager=1.9), "vs_eager", "cpu", False),  # cpu: the training step only
    (row("fwdbwd", vs_compile=1.19), "vs_compile", "cpu", True),
    (row("bwd", vs_compile=0.5), "vs_compile", "short", False),  # the backward alone: no target
    # A ratio at its target meets it.
    (row("fwdbwd", floor_x=1.3), "floor_x", "short", False),
    (row("fwd", floor_x=2.0), "floor_x", "short", False),
    (row("fwdbwd", vs_eager=2.0), "vs_eager", "cpu", False),
    (row("fwdbwd", vs_compile=1.2), "vs_compile", "short", False),
    (row("fwdbwd"), "floor_x", "short", False),  # not timed
])
def test_missed(r, key, preset, expect):
    assert published.missed(r, key, preset) is expect


def test_out_of_reach_needs_a_missed_floor_above_its_reach():
    assert published.out_of_reach(row("fwdbwd", floor_x=1.6, reach_x=1.35), "floor_x", "short")
    assert not published.out_of_reach(row("fwdbwd", floor_x=1.6, reach_x=1.25), "floor_x", "short")
    assert not published.out_of_reach(row("fwdbwd", floor_x=1.2, reach_x=1.35), "floor_x", "short")
    assert not published.out_of_reach(row("fwdbwd", floor_x=1.6), "floor_x", "short")  # not measured


def test_targets_table_marks_misses_and_floors_out_of_reach():
    rows = [row("fwd", floor_x=1.0),
            row("fwdbwd", floor_x=1.6, reach_x=1.35, vs_compile=1.1),
            row("fwd", form="pq", floor_x=1.0),
            row("fwdbwd", form="pq", floor_x=1.5, reach_x=1.1)]
    text = "\n".join(bench.targets_table(rows, "short"))
    assert "Misses in bold: 3. Marked †: 1 training-step floor that no step" in text
    w_line = next(l for l in text.splitlines() if l.startswith("| [65536, 2] | 1 | w |"))
    pq_line = next(l for l in text.splitlines() if l.startswith("| [65536, 2] | 1 | pq |"))
    assert "**1.60x**†" in w_line and "**1.10x**" in w_line
    assert "**1.50x**" in pq_line and "†" not in pq_line


def test_targets_table_of_the_cpu_preset_judges_the_training_step_only():
    rows = [row("fwd", floor_x=5.0, vs_eager=1.5), row("fwdbwd", floor_x=5.0, vs_eager=1.9)]
    text = "\n".join(bench.targets_table(rows, "cpu"))
    assert "Misses in bold: 1." in text and "†" not in text
    line = next(l for l in text.splitlines() if l.startswith("| [65536, 2]"))
    assert "**1.90x**" in line and "**1.50x**" not in line and "**5.00x**" not in line


def test_a_run_without_training_steps_times_no_one_op_step():
    assert bench.one_op_steps(["w", "pq"], ["fwd", "bwd"], None, None, None) == {}
    assert bench.one_op_line([row("fwd")]) == []


def test_a_run_measures_the_one_op_step_and_the_reach():
    args = argparse.Namespace(device="cpu", clock="wall", dtype="float32", op="iwelbo",
                              modes=["fwdbwd"], forms=["w", "pq"], shapes="64x4:1",
                              no_compile=True, repeats=1, scale=1.0)
    rows, _, _ = bench.run(args)
    assert {r["form"] for r in rows} == {"w", "pq"}
    for r in rows:
        assert r["one_op_us"] > 0
        floor_us = r["iwae_fused_us"] / r["floor_x"]
        assert r["reach_x"] == pytest.approx((floor_us + r["one_op_us"]) / floor_us)
    assert bench.one_op_line(rows)[0].count(" us") == 2


def test_the_readme_table_is_the_published_runs():
    readme = (ROOT / "README.md").read_text()
    begin, end = (readme.index(m) for m in readme_misses.MARKERS)
    assert readme[begin:end + len(readme_misses.MARKERS[1])] == readme_misses.block(), (
        "README.md's table of missed targets differs from the published runs: "
        "run python benchmarks/readme_misses.py --write")


@pytest.mark.parametrize("preset", readme_misses.PRESETS)
def test_the_readme_table_lists_every_miss_of_the_published_tables(preset):
    # The same count the published table's own header states.
    text = (ROOT / "benchmarks" / published.PUBLISH[preset]["markdown"]).read_text()
    stated = int(text.split("Misses in bold: ")[1].split(".")[0])
    assert len(readme_misses.misses(preset, readme_misses.read_rows(preset))) == stated


def test_the_readme_table_gives_the_reach_where_a_run_timed_it():
    timed = [row("fwdbwd", floor_x=1.6, reach_x=1.35), row("fwdbwd", form="pq", floor_x=1.4,
                                                          reach_x=1.1)]
    untimed = [row("fwdbwd", floor_x=1.6)]
    text = readme_misses.table(lambda p: timed if p == "short" else untimed)
    short = text[text.index("RESULTS-short.md"):]
    assert "2 of its targets missed." in short
    assert "| 1.60x | 1.35x (out of reach) |" in short and "| 1.40x | 1.10x |" in short
    # The cpu preset sets no floor: nothing missed, whatever the floor.
    assert "`benchmarks/RESULTS.md` (cpu preset): every target met." in text
    text = readme_misses.table(lambda p: untimed)
    assert "predates the timing of the one-op step" in text and "reach" not in text.split(
        "\n| shape")[1].split("\n")[0]


def test_replace_block_needs_the_markers():
    with pytest.raises(ValueError, match="lacks the markers"):
        readme_misses.replace_block("no markers here", "x")
    text = f"a\n{readme_misses.MARKERS[0]}\nold\n{readme_misses.MARKERS[1]}\nb"
    assert readme_misses.replace_block(text, "NEW") == "a\nNEW\nb"


def test_the_summary_quotes_the_training_steps_of_each_preset():
    short = [row("fwdbwd", vs_eager=2.04, vs_compile=1.55, floor_x=1.3),
             row("fwdbwd", vs_eager=11.96, vs_compile=13.8, floor_x=1.31),
             row("fwd", vs_eager=50.0, vs_compile=50.0, floor_x=1.0)]  # not a step
    cpu = [row("fwdbwd", label="training", iwae_fused_us=33.2, vs_eager=2.0, vs_compile=4.0),
           row("fwdbwd", label="training", iwae_fused_us=41.4, vs_eager=2.7, vs_compile=4.6),
           row("fwdbwd", label="large", vs_eager=3.2, vs_compile=1.7),
           row("fwdbwd", label="evaluation", vs_eager=10.5, vs_compile=4.8)]
    text = readme_misses.summary(lambda p: short if p == "short" else cpu)
    assert text.splitlines() == [
        "short training steps: 2.0-12.0x eager, 1.6-13.8x compile",
        "cpu preset, larger shapes, training steps: 3.2-10.5x eager, 1.7-4.8x compile",
        "training shape step: 33-41 us, 2.0-2.7x eager, 4.0-4.6x compile",
        "short training steps within 1.3x of the floor: 1 of 2"]


@pytest.mark.parametrize("path, lines", [
    ("README.md", None), ("docs/performance/cpu.md", None), ("docs/index.md", [0])])
def test_the_prose_quotes_the_summary_of_the_published_runs(path, lines):
    # Every range and count that `readme_misses.py --summary` prints from the
    # published tables appears, as printed, where users read it.
    text = " ".join((ROOT / path).read_text().split())
    printed = readme_misses.summary().splitlines()
    for line in printed if lines is None else [printed[i] for i in lines]:
        for figure in re.findall(r"\d+(?:\.\d+)?-\d+(?:\.\d+)?x|\d+-\d+ us|\d+ of \d+", line):
            assert figure in text, f"{path} does not quote {figure!r} ({line})"
