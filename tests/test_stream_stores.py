"""Non-temporal gradient stores (csrc/cpu/stream_stores.h).

The CPU weights passes write float and double gradients with non-temporal
stores where a call's operands and gradients exceed the last-level cache,
hundreds of megabytes on most machines: too big for the suite. The
environment variable IWAE_FUSED_LLC_BYTES=0 makes every such call stream, so
the weights-pass tests run again in processes of their own with it set, once
per vector instruction set that has the stores. Each of them compares
against the float64 reference: a store to the wrong place, a lost one or a
missing fence fails them.
"""

import os
import subprocess
import sys

import pytest

import iwae_fused

HERE = os.path.dirname(os.path.abspath(__file__))

# Every weights pass: dense rows (long, short, periodic with K not a multiple
# of the lanes, recomputed tiles), the lane tiles' element stream (slab
# tiles and per-slab streams), the general runs over columns; both call
# forms, DReG's modes, every incoming-gradient layout.
STREAMED_TESTS = [
    "test_dense_rows.py",
    "test_short_rows.py",
    "test_against_reference.py",
    "test_dreg.py",
]


def run(code_or_args, llc, isa=None, timeout=900):
    env = dict(os.environ, IWAE_FUSED_LLC_BYTES=llc)
    if isa:
        env["ATEN_CPU_CAPABILITY"] = isa
    return subprocess.run(
        [sys.executable, *code_or_args], env=env, capture_output=True, text=True,
        timeout=timeout, cwd=HERE)


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_weights_passes_match_the_reference_when_every_gradient_streams(isa):
    # ATen caps the instruction set at what the CPU runs; the default build
    # has no non-temporal stores, so it is not run here.
    args = ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *STREAMED_TESTS]
    res = run(args, "0", isa)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout


def test_the_variable_sets_the_cache_size():
    code = "import iwae_fused; print(iwae_fused._C.last_level_cache_bytes())"
    assert run(["-c", code], "0").stdout.split() == ["0"]
    assert run(["-c", code], "123456").stdout.split() == ["123456"]
    # Unset or empty: what the C library reports, or 32 MiB.
    assert iwae_fused._C.last_level_cache_bytes() > 0
    assert int(run(["-c", code], "").stdout.split()[0]) > 0


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "12MB", "99999999999999999999999"])
def test_bad_cache_size_fails_at_import_naming_the_variable(value):
    res = run(["-c", "import iwae_fused"], value)
    assert res.returncode != 0
    assert "IWAE_FUSED_LLC_BYTES" in res.stderr
    assert repr(value) in res.stderr.replace('"', "'")
