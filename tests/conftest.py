import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _pyro_state():
    """Each test starts with an empty param store, Pyro validation on and a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
