"""Fixtures for the model tests (vit_b / tiny SAM builds, trainable sets)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # One thread: the test machine's 2 cores are usually shared, and 2 contending torch threads
    # are several times slower than one there (4x measured on the overfit test).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
