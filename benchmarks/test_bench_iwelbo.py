"""Per-op timings with pytest-benchmark (not part of the test suite):

    pytest benchmarks/test_bench_iwelbo.py --benchmark-only \
        --benchmark-group-by=param:op,param:case,param:mode,param:form --benchmark-columns=median,iqr,ops

Each group holds iwae_fused, the op's reference (the eager expression) and
torch.compile of it at one op, shape and mode; benchmarks/bench.py prints the same comparison as one
interleaved table with GB/s.
"""

import pytest
import torch

import harness

CASES = {c.label: c for c in harness.parse_cases("50x128:0,5000x100:0,1024x16384:0,64x65536:1")}


@pytest.mark.parametrize("contender", ["iwae_fused", "eager", "compile"])
@pytest.mark.parametrize("form", list(harness.FORMS))
@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwdbwd"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("op", list(harness.OPS))
def test_op(benchmark, op, case, mode, form, contender):
    if mode != "fwd" and not harness.OPS[op]["grad"]:
        pytest.skip(f"{op} has no backward")
    if form not in harness.OPS[op]["forms"]:
        pytest.skip(f"{op} has no {harness.FORMS[form]} form")
    fn = harness.contenders(op, replayable=mode == "bwd")[contender]
    step = harness.make_step(fn, CASES[case], mode, torch.float32, "cpu", form=form)
    for _ in range(3):  # compile / warm up outside the timing
        step()
    benchmark(step)
