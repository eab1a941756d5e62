"""Shared fixtures: the path of ../shared/data (tests that need it skip clearly when it is absent)."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data/real; skips the test when it is not there."""
    real = SHARED_DATA / "real"
    if not real.is_dir():
        pytest.skip(f"shared data not found at {real} (tests that need real data skip)")
    return real


def _single_torch_thread():
    """Run torch on one intra-op thread, then restore: tiny networks run much faster so on a shared CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


one_thread = pytest.fixture(_single_torch_thread)
one_thread_module = pytest.fixture(scope="module")(_single_torch_thread)
