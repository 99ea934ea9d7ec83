"""Weight diagnostics (effective sample size, largest normalized weight)
against the float64 reference, their edge cases and registration."""

import math

import pytest
import torch
from hypothesis import given

import iwae_fused
from iwae_fused import reference as R

from conftest import DTYPES, close
from test_against_reference import SETTINGS, as64, cases, make_inputs

ops = torch.ops.iwae_fused


@SETTINGS
@given(cases())
def test_diagnostics_match_reference(c):
    p, q = make_inputs(c)
    ess, max_w = iwae_fused.weight_diagnostics(p, q, dim=c["dim"])
    ref_ess, ref_max = R.weight_diagnostics(as64(p), as64(q), dim=c["dim"])
    dtype = p.dtype if q is None else torch.result_type(p, q)
    assert ess.shape == ref_ess.shape and ess.dtype == max_w.dtype == dtype
    # ESS carries the relative error of a ratio of two sums.
    close(ess / ref_ess.clamp_min(1e-300).to(ess.device), torch.ones_like(ref_ess), c["dtype"], scale=4)
    close(max_w, ref_max, c["dtype"], scale=4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["cols", "rows"])
def test_diagnostics_edge_cases(dtype, layout, device):
    K = 300
    x = torch.zeros(K, 5, dtype=dtype, device=device)  # equal weights: ESS = K
    x[:, 1] = -math.inf  # no weight at all: 0 and 0
    x[0, 2] = 60.0  # one sample dominates: ESS = 1, largest weight 1
    x[7, 3] = math.nan  # NaN stays in its slice
    x[:, 4] = torch.linspace(-3, 3, K, dtype=torch.float64).to(dtype)
    if layout == "rows":
        ess, max_w = iwae_fused.weight_diagnostics(x.t().contiguous(), dim=1)
    else:
        ess, max_w = iwae_fused.weight_diagnostics(x)
    ess, max_w = ess.double().cpu(), max_w.double().cpu()
    tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5
    assert abs(ess[0].item() - K) < tol * K and abs(max_w[0].item() - 1 / K) < tol / K
    assert ess[1].item() == 0 and max_w[1].item() == 0
    assert abs(ess[2].item() - 1) < tol and abs(max_w[2].item() - 1) < tol
    assert math.isnan(ess[3].item()) and math.isnan(max_w[3].item())
    ref_ess, ref_max = R.weight_diagnostics(x[:, 4].double().cpu())
    assert abs(ess[4].item() / ref_ess.item() - 1) < 2 * tol


def test_diagnostics_split_over_threads_match_one_piece():
    x = torch.randn(200_000, 2, dtype=torch.float64) * 3
    ess, max_w = iwae_fused.weight_diagnostics(x)
    ref_ess, ref_max = R.weight_diagnostics(x)
    close(ess, ref_ess, torch.float64, scale=1e6)
    close(max_w, ref_max, torch.float64)
    ess_r, _ = iwae_fused.weight_diagnostics(x.t().contiguous(), dim=1)
    close(ess_r, ref_ess, torch.float64, scale=1e6)


def test_diagnostics_registration(device):
    g = torch.Generator().manual_seed(0)
    for shape, dim in [((30, 4), 0), ((4, 30), 1), ((3, 8, 5), -2)]:
        x = torch.randn(shape, generator=g).to(device)
        for rg in (False, True):
            xr = x.clone().requires_grad_(rg)
            torch.library.opcheck(ops.weight_diagnostics.default, (xr, None, dim))
            torch.library.opcheck(ops.weight_diagnostics.default, (xr, x.flip(0), dim))
    ess, max_w = iwae_fused.weight_diagnostics(torch.randn(9, 3, requires_grad=True))
    assert not ess.requires_grad and not max_w.requires_grad
    meta = iwae_fused.weight_diagnostics(torch.empty(7, 2, 5, device="meta"), dim=1)
    assert meta[0].shape == (7, 5) and meta[0].device.type == "meta"
    assert torch.equal(iwae_fused.effective_sample_size(x), iwae_fused.weight_diagnostics(x)[0])


def test_diagnostics_errors_name_the_op():
    with pytest.raises(ValueError, match=r"effective_sample_size\(\): the sample dimension"):
        iwae_fused.effective_sample_size(torch.zeros(0, 3))
    with pytest.raises(TypeError, match=r"effective_sample_size\(\): expected log_p"):
        iwae_fused.weight_diagnostics(torch.zeros(4, 3, dtype=torch.int64))
