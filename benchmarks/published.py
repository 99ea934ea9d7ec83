"""The published benchmark tables: the runs that make them
(`bench.py --publish NAME`), and the targets they judge rows by. Apart from
any timing (no torch here), so that the tables (bench.py) and the README's
list of misses (readme_misses.py) read the same files by the same rules.

Every preset: the training step (fwdbwd) at least 2x faster than eager and
1.2x faster than torch.compile, in both call forms. The short preset also:
the forward alone at least 2x eager and 1.2x compile and within 2x of its
memory floor, and the training step within 1.3x of its floor (the forward's
reads of the inputs and write of the bound, then one more read of the inputs
and one write per gradient; harness.bytes_moved). The backward alone is
timed to show where a step's time goes and has no target.
"""

# The committed tables and the arguments that regenerate each: `bench.py
# --publish NAME` (a list of runs appended into one file; extra flags such as
# --repeats apply to every run). Each takes under ~10 minutes on the 2-core
# machine with inductor's compile cache warm.
PUBLISH = {
    "cpu": dict(markdown="RESULTS.md", csv="results.csv", plot="results.png",
                runs=[dict(preset="cpu")]),
    # 27 shapes x 2 forms x 3 modes: 7 repeats keep it near 10 minutes.
    "short": dict(markdown="RESULTS-short.md", csv="results-short.csv",
                  runs=[dict(preset="short", repeats=7)]),
    "wide": dict(markdown="RESULTS-wide.md", runs=[dict(preset="cpu", scale=100.0)]),
    "estimators": dict(markdown="RESULTS-estimators.md", runs=[
        dict(op="renyi", preset="cpu"),
        dict(op="ess", preset="cpu"),
        dict(op="vimco", shapes="50x128:0,5x1024:0,100x1000:0"),
        dict(op="dreg", preset="cpu", modes=["fwdbwd"]),
    ]),
}

TARGETS = {"vs_eager": 2.0, "vs_compile": 1.2}
FLOOR_TARGETS = {"fwd": 2.0, "fwdbwd": 1.3}
TARGET_NAMES = {"vs_eager": "vs eager", "vs_compile": "vs compile", "floor_x": "x floor"}


def target_of(key, mode, preset):
    """The target a row's ratio (key) must meet in this preset, or None."""
    if mode == "bwd":
        return None
    if key == "floor_x":
        return FLOOR_TARGETS.get(mode) if preset == "short" else None
    return TARGETS[key] if mode == "fwdbwd" or preset == "short" else None


def missed(r, key, preset):
    """Whether row r misses its target for ratio key (a floor: above it)."""
    target, v = target_of(key, r["mode"], preset), r.get(key)
    if target is None or v is None:
        return False
    return v > target if key == "floor_x" else v < target


def out_of_reach(r, key, preset):
    """A missed training-step floor that the floor plus the one-op step
    (r["reach_x"], where the run timed it) already exceeds: no step could
    meet it on the machine that ran it."""
    return (key == "floor_x" and missed(r, key, preset)
            and r.get("reach_x", 0) > target_of(key, r["mode"], preset))
