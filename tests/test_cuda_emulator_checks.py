"""The emulator's checks catch what a GPU (under compute-sanitizer) would:
each deliberately broken kernel fails with its check's message, and its
correct twin runs clean. Also the defects found by reading the CUDA code,
each with the test that failed before its fix."""

import math

import pytest
import torch

import iwae_fused
from iwae_fused import cuda_emulator

from conftest import close
from emulated import OPS, pytestmark, run_emulated  # noqa: F401

EMU = torch.ops.iwae_fused_emu

CHECKS = {
    "divergent_shuffle": r"divergent __shfl_xor_sync: lane 16 exits, but lanes 0-15 wait for it",
    "divergent_barrier": r"barrier not reached by every thread",
    "shared_race": r"shared-memory race on buf\[0\]: read here while thread \(0,0,0\) wrote it",
    "tail_read": r"out-of-bounds global load of 4 bytes, 0 bytes past the end of in",
    "misaligned_vector_load": r"misaligned 16-byte global load",
    "uninitialised_shared": r"read of uninitialised shared memory buf\[0\]",
    "unwritten_output": r"left out byte 252 of 256 unwritten",
    "shared_over_limit": r"static shared memory \(65536 bytes with buf\) exceeds the device's limit of 49152",
    "grid_y_over_limit": r"invalid configuration argument .*grid.y = 70000 exceeds the device's 65535",
    "block_over_limit": r"invalid configuration argument .*block.x = 1025 exceeds",
    "zero_grid": r"invalid configuration argument .*zero-sized grid",
}


def test_every_selftest_case_has_a_test():
    assert set(cuda_emulator._cuda_emu.selftest_cases()) == set(CHECKS)


@pytest.mark.parametrize("case", list(CHECKS))
def test_broken_kernel_is_caught(case):
    with pytest.raises(RuntimeError, match=CHECKS[case]) as err:
        cuda_emulator._cuda_emu.selftest(case, True)
    if "configuration" not in CHECKS[case] and case != "unwritten_output":
        # the message names the kernel, the block and the thread
        assert "[kernel selftest::" in str(err.value) and "block (0,0,0), thread (" in str(err.value)


@pytest.mark.parametrize("case", list(CHECKS))
def test_correct_twin_runs_clean(case):
    cuda_emulator._cuda_emu.selftest(case, False)


def test_shuffles_and_barriers_give_the_right_values():
    """The correct twins compute what CUDA would: xor-1 partners' sums, the
    next thread's value through shared memory after a barrier."""
    out = cuda_emulator._cuda_emu.selftest("divergent_shuffle", False)
    x = torch.arange(64.0)
    torch.testing.assert_close(out, x + x.view(-1, 2).flip(1).reshape(-1))
    out = cuda_emulator._cuda_emu.selftest("shared_race", False)
    torch.testing.assert_close(out, torch.cat([x[:1], x[:-1]]))


def test_device_limits_are_restored_after_the_block():
    before = cuda_emulator.device()
    with cuda_emulator.emulated(sm_count=2, max_grid_z=3):
        assert cuda_emulator.device()["sm_count"] == 2
        assert "toy" in cuda_emulator.device()["name"]
    assert cuda_emulator.device() == before
    assert before["sm_count"] == 132 and before["max_grid_z"] == 65535


def test_launch_logic_sizes_grids_by_the_device():
    """The host code's grid decisions come from the emulated device's
    properties: [64, 2048] rows make 8 blocks; an H100 (one wave of 132 x 8
    resident blocks wanted) splits K into pieces, a 1-SM toy (8 wanted) does
    not."""
    p = torch.randn(64, 2048)
    _, launches = run_emulated(lambda: OPS.iwelbo(p, None, 1))
    assert launches[0]["grid"][:2] == (8, 2) and launches[-1]["kernel"].startswith("merge_kernel")
    _, launches = run_emulated(lambda: OPS.iwelbo(p, None, 1), sm_count=1)
    assert launches[0]["grid"][:2] == (8, 1) and len(launches) == 1


# ---- defects found by reading, each with its test ---------------------------


@pytest.mark.parametrize("arg", ["grad", "stats"])
@pytest.mark.parametrize("op", ["dreg_backward", "vimco_backward", "iwelbo_backward"])
def test_backward_ops_check_every_device(op, arg):
    """Defect 1: dreg_backward and vimco_backward never checked the devices
    of grad and stats/state (the kernel then read host pointers)."""
    p, q = torch.randn(5, 4), torch.randn(5, 4)
    if op == "vimco_backward":
        _, stats = OPS._vimco_forward(p, q, 0, False)
        call = lambda g, s: EMU.vimco_backward(g, s, p, q, 0, False, [True, True])  # noqa: E731
        name = "state" if arg == "stats" else arg
    else:
        _, stats = OPS._iwelbo_forward(p, q, 0, False)
        if op == "dreg_backward":
            call = lambda g, s: EMU.dreg_backward(g, s, p, q, 0, "dreg")  # noqa: E731
        else:
            call = lambda g, s: EMU.iwelbo_backward(g, s, p, q, 0, False, 0.0, [True, True])  # noqa: E731
        name = arg
    g = torch.ones(4)
    if arg == "grad":
        g = g.to("meta")
    else:
        stats = stats.to("meta")
    with pytest.raises(RuntimeError, match=rf"{op}\(\): expected all tensors on the same device, "
                                           rf"but log_p is on cpu and {name} is on meta"):
        call(g, stats)


@pytest.mark.parametrize("order", ["log_p-elsewhere", "log_q-elsewhere"])
@pytest.mark.parametrize("op", ["iwelbo", "normalized_weights", "logsumexp_stats", "weight_diagnostics"])
def test_mixed_devices_name_the_arguments_before_the_guard(op, order):
    """Defect 3: the device guard was made from log_p's device before any
    check, so log_p on another device gave the guard's own error
    ("...Guard initialized with non-... DeviceType") instead of the op's."""
    a, b = torch.randn(5, 4), torch.randn(5, 4, device="meta")
    p, q = (b, a) if order == "log_p-elsewhere" else (a, b)
    with pytest.raises(RuntimeError, match=r"expected all tensors on the same device, but log_p is on "
                                           r"(cpu|meta) and log_q is on (meta|cpu)"):
        getattr(EMU, op)(p, q, 0)


@pytest.mark.parametrize("beta", [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("device", ["cpu", "cuda-emulated"])
def test_renyi_near_one_keeps_relative_accuracy(device, dtype, beta):
    """Defect 5: (log-sum - log K) / beta cancelled (1e-2 relative at
    beta = 1e-5 in float32). Against 50-digit arithmetic."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    gen = torch.Generator().manual_seed(11)
    lw = (torch.randn(3, 40, generator=gen, dtype=torch.float64) * 2 - 5).to(dtype)
    lw[2] += 30.0  # a mean far from zero
    alpha = 1.0 - beta

    def run():
        return iwae_fused.iwelbo(lw, dim=1, alpha=alpha)

    got = run_emulated(run)[0] if device == "cuda-emulated" else run()
    b = mpmath.mpf(beta)
    for r in range(3):
        xs = [mpmath.mpf(float(v)) for v in lw[r].double()]
        exact = mpmath.log(sum(mpmath.exp(b * x) for x in xs) / len(xs)) / b
        rel = abs((mpmath.mpf(float(got[r])) - exact) / exact)
        assert rel < (4e-7 if dtype == torch.float32 else 1e-14), (r, float(rel))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("device", ["cpu", "cuda-emulated"])
def test_elbo_of_half_inputs_is_rounded_once(device, dtype):
    """Defect 6: alpha = 1 took mean(log_p - log_q) in the input dtype, so the
    difference was rounded before the mean: -75.0 for bfloat16 where the
    exact mean, -74.5, is a bfloat16 value."""
    log_p = torch.tensor([-55.5, -0.5], dtype=dtype)
    log_q = torch.tensor([76.0, 17.0], dtype=dtype)

    def run():
        return iwae_fused.iwelbo(log_p, log_q, dim=0, alpha=1.0)

    got = run_emulated(run)[0] if device == "cuda-emulated" else run()
    exact = (log_p.double() - log_q.double()).mean()
    assert got.dtype == dtype and got.item() == exact.to(dtype).item() == -74.5
    near = iwae_fused.iwelbo(log_p, log_q, dim=0, alpha=1.0 - 1e-6)
    close(got, near, dtype)
