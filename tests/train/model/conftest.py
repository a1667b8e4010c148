"""Fixtures for the model tests: one torch thread, the random-init vit_b checkpoint and its 256 px
build."""
from __future__ import annotations

import pytest
import torch

from train.model import build_sam


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # One thread: the test machine's 2 cores are usually shared, and 2 contending torch threads
    # are several times slower than one there (4x measured on the overfit test).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def vit_b_ckpt(vit_b_random_checkpoint):
    return vit_b_random_checkpoint


@pytest.fixture(scope="module")
def vit_b_256(vit_b_ckpt):
    """The LoRA tests run forwards at 256 (a 16x16 grid): 4x cheaper than 512 on CPU."""
    return build_sam("vit_b", vit_b_ckpt[0], 256)
