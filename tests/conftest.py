"""Shared helpers: devices, dtype tolerances, and inputs in every layout."""

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Absolute + relative tolerance of a result against the float64 reference
# computed from the same (dtype-rounded) inputs. Half types are dominated by
# rounding the result to the output dtype once.
TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-10),
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "no_launch(reason): an emulated-GPU test that, by design, launches no kernel")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def close(actual, expected, dtype, scale=1.0):
    """assert_close with the dtype's tolerance; NaN and inf must match."""
    tol = TOL[dtype]
    torch.testing.assert_close(
        actual.double().cpu(),
        expected.double().cpu(),
        atol=tol["atol"] * scale,
        rtol=tol["rtol"],
        equal_nan=True,
    )


def in_layout(t, layout, gen=None):
    """The same values as `t` (same shape), stored in another layout.

    contiguous | transposed (memory order reversed) | strided (every other
    element of a larger buffer) | offset (a slice not starting at 0).
    """
    if layout == "contiguous" or t.dim() == 0:
        return t.contiguous()
    if layout == "transposed":
        dims = list(range(t.dim()))[::-1]
        return t.permute(dims).contiguous().permute(dims)
    if layout == "strided":
        big = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        big.fill_(float("nan"))
        view = big[..., ::2]
        view.copy_(t)
        return view
    if layout == "offset":
        big = torch.full((t.numel() + 3,), float("nan"), dtype=t.dtype, device=t.device)
        view = big[3:].view(t.shape)
        view.copy_(t)
        return view
    raise ValueError(layout)


LAYOUTS = ["contiguous", "transposed", "strided", "offset"]


def log_weights_like(shape, dtype, device, scale=3.0, gen=None):
    """Random log-weights with a spread typical of a trained IWAE."""
    x = torch.randn(shape, dtype=torch.float64, generator=gen) * scale - 5.0
    return x.to(dtype).to(device)
