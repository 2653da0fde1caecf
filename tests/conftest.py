import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Seed torch for every test; keep the default thread count (CI has 2 cores)."""
    torch.manual_seed(0)
    yield
