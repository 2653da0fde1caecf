import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py


@pytest.fixture(autouse=True)
def _seeded_one_thread():
    """Seed torch and use one intra-op thread for every test (small problems on a shared 2-core
    machine run far faster single-threaded); the thread count is restored afterwards."""
    torch.manual_seed(0)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
