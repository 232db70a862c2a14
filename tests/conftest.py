import os

import pytest
import torch
from hypothesis import settings

# CI runs the property tests derandomized (a landing never depends on luck) and longer.
settings.register_profile("ci", derandomize=True, max_examples=300, deadline=None)
settings.register_profile("dev", max_examples=120, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
