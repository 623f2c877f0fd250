import os

import pytest
import torch

# Tests use tiny models, where a second intra-op thread costs more in synchronisation than it gains, and on a shared
# machine two spinning threads per process slowed some ops 10-20x (measured). One thread keeps the suite steady.
torch.set_num_threads(1)
os.environ.setdefault("OMNIFUSE_THREADS", "1")  # what Predictor and the omnifuse verbs plan (app/threads.py)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts with one intra-op thread and leaves the count as it found it (a verb under test may plan
    its own threads; the next test must not inherit them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
