"""Fixtures of the Pyro test modules, imported by each (not in conftest.py:
the autouse one must reach only them): float64 and a fresh parameter store
around every test, and both of Pyro's parameter settings."""

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def float64_and_fresh_store():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    torch.set_default_dtype(old)
    pyro.clear_param_store()


@pytest.fixture(params=[False, True], ids=["global", "local"])
def local(request):
    """The global parameter store, then module-local parameters."""
    with pyro.settings.context(module_local_params=request.param):
        yield request.param
