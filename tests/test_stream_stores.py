"""Non-temporal gradient stores (csrc/cpu/stream_stores.h).

The CPU weights passes write float and double gradients with non-temporal
stores where a call's operands and gradients exceed half the last-level
cache, tens to hundreds of megabytes on most machines: too big for the
suite. The environment variable IWAE_FUSED_LLC_BYTES=0 makes every such
call stream, so the weights-pass tests run again in processes of their own
with it set, once per vector instruction set that has the stores. Each of them compares
against the float64 reference: a store of a wrong value or to the wrong
place fails them (a missing fence would not, in one process: the fences are
checked by reading the kernels). A count of the calls that chose the
stores shows that they are taken where they should be, and only there.
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


# The children import the package this process imported (an installed copy or
# a build in place), whatever their working directory puts on sys.path.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(iwae_fused.__file__)))


def child_env(**extra):
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(
        [PACKAGE_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run(code_or_args, llc, isa=None, timeout=900):
    env = child_env(IWAE_FUSED_LLC_BYTES=llc)
    if isa:
        env["ATEN_CPU_CAPABILITY"] = isa
    return subprocess.run(
        [sys.executable, *code_or_args], env=env, capture_output=True, text=True,
        timeout=timeout)


def kernels_in_use(isa):
    res = run(["-c", "import iwae_fused; print(iwae_fused._C.cpu_kernels())"], "0", isa)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()[-1]


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_weights_passes_match_the_reference_when_every_gradient_streams(isa):
    # ATen caps the instruction set at what the CPU runs; the default build
    # has no non-temporal stores (the count test below checks it takes none).
    if kernels_in_use(isa) != isa.upper():
        pytest.skip(f"this CPU does not run {isa}")
    tests = [os.path.join(HERE, name) for name in STREAMED_TESTS]
    args = ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    res = run(args, "0", isa)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout


COUNT = """
import torch, iwae_fused
def streamed(shape, dtype, dim=1, pq=False):
    x = torch.randn(shape).to(dtype).requires_grad_()
    q = torch.randn(shape).to(dtype).requires_grad_() if pq else None
    before = iwae_fused._C._streamed_calls()
    iwae_fused.iwelbo(x, q, dim).sum().backward()
    return int(iwae_fused._C._streamed_calls() > before)
print(iwae_fused._C.cpu_kernels(),
      streamed((1000, 50), torch.float32), streamed((1000, 16), torch.float64),
      streamed((50, 1000), torch.float32, 0, True), streamed((1000, 5), torch.float32),
      streamed((1000, 50), torch.bfloat16), streamed((1000, 50), torch.float16))
"""


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_streaming_is_chosen_for_float_and_double_only_where_the_stores_exist(isa):
    res = run(["-c", COUNT], "0", isa)
    assert res.returncode == 0, res.stderr
    picked, *flags = res.stdout.split()
    if picked == "DEFAULT":  # no non-temporal stores in the portable build
        assert flags == ["0"] * 6
    else:  # float32 and float64 rows and columns stream; half types never
        assert flags == ["1", "1", "1", "1", "0", "0"], picked


def test_small_calls_do_not_stream_by_default():
    code = COUNT.replace("print(iwae_fused._C.cpu_kernels(),", "print('x',")
    env = child_env()
    env.pop("IWAE_FUSED_LLC_BYTES", None)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[1:] == ["0"] * 6


THRESHOLD = """
import torch, iwae_fused
x = torch.randn(1000, 50).requires_grad_()  # 200,000 bytes read, as many written
before = iwae_fused._C._streamed_calls()
iwae_fused.iwelbo(x, dim=1).sum().backward()
print(iwae_fused._C.cpu_kernels(), int(iwae_fused._C._streamed_calls() > before))
"""


@pytest.mark.parametrize("llc, streams", [("799999", 1), ("800000", 0), ("10000000", 0)])
def test_a_call_streams_once_its_footprint_passes_half_the_cache(llc, streams):
    # 400,000 bytes of operand and gradient: more than half of 799,999
    # bytes, not more than half of 800,000.
    res = run(["-c", THRESHOLD], llc)
    assert res.returncode == 0, res.stderr
    picked, flag = res.stdout.split()
    assert flag == (str(streams) if picked != "DEFAULT" else "0"), picked


def test_the_variable_sets_the_cache_size():
    code = "import iwae_fused; print(iwae_fused._C.last_level_cache_bytes())"
    assert run(["-c", code], "0").stdout.split() == ["0"]
    assert run(["-c", code], "123456").stdout.split() == ["123456"]
    # Unset or empty: what the C library reports, or 32 MiB.
    assert iwae_fused._C.last_level_cache_bytes() > 0
    assert int(run(["-c", code], "").stdout.split()[0]) > 0


@pytest.mark.parametrize(
    "value", ["abc", "-1", "1.5", "12MB", "99999999999999999999999", " 5", "+5", "-0"])
def test_bad_cache_size_fails_at_import_naming_the_variable(value):
    res = run(["-c", "import iwae_fused"], value)
    assert res.returncode != 0
    assert "IWAE_FUSED_LLC_BYTES" in res.stderr
    assert repr(value) in res.stderr.replace('"', "'")
