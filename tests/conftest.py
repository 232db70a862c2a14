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


# -- fuzz counts: the fuzz tests add what they tried and what went wrong; CI prints the totals --
_FUZZ: dict[str, int] = {}


@pytest.fixture(scope="session")
def fuzz_tally() -> dict[str, int]:
    """Counts the fuzz tests report (``fuzz_tally["documents"] += 1``), printed at the end of the run."""
    return _FUZZ


def pytest_terminal_summary(terminalreporter):
    if _FUZZ:
        terminalreporter.section("fuzz counts")
        for key, value in sorted(_FUZZ.items()):
            terminalreporter.write_line(f"{key}: {value:,}")
