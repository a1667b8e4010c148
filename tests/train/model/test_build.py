"""train/model/build.py (build_sam): official-checkpoint loading (random-init vit_b written by the
test), resizing, bad checkpoints, the promptless head, box prompts, and the tiny model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from promptkit import model_inputs
from shared.errors import ConfigError, DataError
from train.losses import ce_dice_loss
from train.model import PromptSAM, add_lora, build_sam, count_parameters, trainable_state_dict


@pytest.fixture(scope="module")
def vit_b_512(vit_b_ckpt):
    return build_sam("vit_b", vit_b_ckpt[0], 512)


def test_vit_b_1024_loads_official_state(vit_b_ckpt):
    path, shapes, state = vit_b_ckpt
    built = build_sam("vit_b", path, 1024)
    got = built.sam.state_dict()
    assert {k: v.shape for k, v in got.items()} == shapes   # same architecture as the registry
    for key in ("image_encoder.pos_embed", "image_encoder.blocks.3.attn.qkv.weight",
                "mask_decoder.iou_prediction_head.layers.2.bias"):
        assert torch.equal(got[key], state[key])
    assert built.model == "vit_b" and built.img_size == 1024 and built.num_classes is None
    assert not hasattr(built.sam, "exemplar")          # the facts travel in the record, not on the module


def test_vit_b_512_resizes_position_tables(vit_b_ckpt, vit_b_512):
    _, _, state = vit_b_ckpt
    enc = vit_b_512.sam.image_encoder
    assert enc.pos_embed.shape == (1, 32, 32, 768)
    want = F.interpolate(state["image_encoder.pos_embed"].permute(0, 3, 1, 2), (32, 32),
                         mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(enc.pos_embed, want)
    for i, blk in enumerate(enc.blocks):
        length = 63 if i in (2, 5, 8, 11) else 27      # global blocks: 2*32-1; windows: 2*14-1
        assert blk.attn.rel_pos_h.shape == (length, 64)
        if length == 27:
            assert torch.equal(blk.attn.rel_pos_h, state[f"image_encoder.blocks.{i}.attn.rel_pos_h"])
    logits = PromptSAM(vit_b_512)(*model_inputs(512))
    assert logits.shape == (1, 1, 512, 512) and torch.isfinite(logits).all()


def test_promptless_head_from_checkpoint(vit_b_ckpt):
    sam = build_sam("vit_b", vit_b_ckpt[0], 256, num_classes=8)
    reinit = sam.reinitialised
    assert "mask_decoder.mask_tokens.weight" in reinit
    assert all(k.startswith("mask_decoder.") for k in reinit)
    add_lora(sam, rank=4)
    trainable = [n for n, p in sam.sam.named_parameters() if p.requires_grad]
    assert "mask_decoder.mask_tokens.weight" in trainable
    images, _, _ = model_inputs(256, b=2)
    with torch.no_grad():
        out = PromptSAM(sam).forward_promptless(images)
    assert out.shape == (2, 9, 256, 256)


def test_bad_checkpoints(vit_b_ckpt, tmp_path):
    path = vit_b_ckpt[0]
    errors = []
    with pytest.raises(DataError, match="checkpoint not found") as e:
        build_sam("vit_b", tmp_path / "nope.pth", 512)
    errors.append(e)
    truncated = tmp_path / "truncated.pth"
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read checkpoint .*truncated.pth") as e:
        build_sam("vit_b", truncated, 512)
    errors.append(e)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(DataError, match="cannot read checkpoint") as e:
        build_sam("vit_b", text, 512)
    errors.append(e)
    with pytest.raises(DataError, match="is a vit_b checkpoint, not vit_l; use --model vit_b") as e:
        build_sam("vit_l", path, 512)
    errors.append(e)
    # a vit_b state dict with a tensor of another shape (e.g. another tool's variant)
    state = dict(vit_b_ckpt[2])
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    odd = tmp_path / "odd.pth"
    torch.save(state, odd)
    with pytest.raises(DataError, match="does not fit --model vit_b: 1 tensors of another shape") as e:
        build_sam("vit_b", odd, 512)
    errors.append(e)
    for e in errors:
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="needs --checkpoint"):
        build_sam("vit_b", None, 512)
    with pytest.raises(ConfigError, match="multiple of 16"):
        build_sam("vit_b", path, 500)
    with pytest.raises(ConfigError, match="unknown --model"):
        build_sam("vit_x", path, 512)


def test_tiny_build_is_seeded_and_leaves_global_rng():
    torch.manual_seed(7)
    before = torch.get_rng_state()
    a = build_sam("tiny", None, 64, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_sam("tiny", None, 64, seed=3)
    c = build_sam("tiny", None, 64, seed=4)
    sa, sb, sc = a.sam.state_dict(), b.sam.state_dict(), c.sam.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["image_encoder.patch_embed.proj.weight"],
                           sc["image_encoder.patch_embed.proj.weight"])
    assert a.img_size == 64 and build_sam("tiny", None).img_size == 128


def test_tiny_checkpoint_and_shapes(tmp_path):
    model = PromptSAM(build_sam("tiny", None, 128, seed=1))
    images, points, labels = model_inputs(128, b=3)
    emb = model.encode(images)
    assert emb.shape == (3, 64, 16, 16)
    assert model.decode(emb, points, labels).shape == (3, 1, 128, 128)
    state = trainable_state_dict(model)          # full training: every weight + the PE buffer
    assert len(state) == len(model.sam.state_dict())
    torch.save(model.sam.state_dict(), tmp_path / "tiny.pt")
    again = PromptSAM(build_sam("tiny", tmp_path / "tiny.pt", 128, seed=99))
    with torch.no_grad():
        assert torch.equal(again(images, points, labels), model(images, points, labels))
    with pytest.raises(ConfigError, match="expects 128x128"):
        model.encode(torch.rand(1, 1, 64, 64))


def test_grad_checkpoint_same_gradients():
    images, points, labels = model_inputs(64, b=2)
    grads = []
    for flag in (False, True):
        model = PromptSAM(build_sam("tiny", None, 64, seed=0), grad_checkpoint=flag).train()
        model(images, points, labels).square().mean().backward()
        grads.append(model.sam.image_encoder.blocks[0].attn.qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_tiny_overfits_disks():
    """Bright disks on noise, a point at each centre: Dice > 0.8 within 100 steps. Seeded (data and
    init); the Dice is 0.993-0.997 after 100 steps and >= 0.978 after 50 over six data/init seeds,
    so the margin holds wherever float rounding differs (another CPU, torch build)."""
    size, rng = 64, np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    images, masks, points = [], [], []
    for _ in range(4):
        cx, cy, r = rng.integers(16, 48), rng.integers(16, 48), rng.integers(6, 14)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        images.append(rng.random((size, size)) * 0.5 + 0.5 * mask)
        masks.append(mask)
        points.append([[cx, cy]])
    x = torch.tensor(np.array(images), dtype=torch.float32)[:, None]
    t = torch.tensor(np.array(masks), dtype=torch.float32)
    p = torch.tensor(points, dtype=torch.float32)
    lab = torch.ones(4, 1, dtype=torch.long)
    model = PromptSAM(build_sam("tiny", None, size, seed=0)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(100):
        loss, _, _ = ce_dice_loss(model(x, p, lab), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (model.eval()(x, p, lab)[:, 0] > 0).float()
    dice = (2 * (pred * t).sum() / (pred.sum() + t.sum())).item()
    assert dice > 0.8, dice


def test_built_sam_carries_its_facts_explicitly():
    from train.model import BuiltSam, apply_trainable_set

    built = build_sam("tiny", None, 64, num_classes=3, seed=2)
    assert isinstance(built, BuiltSam) and built.num_classes == 3 and built.embedding_size == 8
    assert built.lora is None and built.trainable is None and built.checkpoint is None
    counts = apply_trainable_set(built, "samed_lora", rank=2, seed=2)
    assert built.lora == {"rank": 2, "alpha": 2.0, "targets": ["encoder_qv", "decoder_attn"],
                          "train_decoder": "lora", "trainable": []}
    assert built.trainable["set"] == "samed_lora" and built.trainable["counts"] == counts
    assert built.trainable["total"] == count_parameters(built).trainable
    assert PromptSAM(built).num_classes == 3 and PromptSAM(built.sam).num_classes is None
    assert PromptSAM(built.sam, num_classes=3).forward_promptless(torch.rand(1, 1, 64, 64)).shape == (1, 4, 64, 64)
    # a bare module works too; there are then no facts to record
    bare = build_sam("tiny", None, 64, seed=2).sam
    assert apply_trainable_set(bare, "lora", rank=2) and not hasattr(bare, "exemplar")


def test_vit_b_decodes_box_prompts(vit_b_random_checkpoint):
    """Box prompts go through SAM's prompt encoder for the ViT models too (vit_b at 64 px here)."""
    from train.model import PromptSAM, build_sam

    model = PromptSAM(build_sam("vit_b", vit_b_random_checkpoint[0], 64)).eval()
    with torch.no_grad():
        emb = model.encode(torch.rand(2, 1, 64, 64))
        boxed = model.decode(emb, None, None, boxes=torch.tensor([[5.0, 5.0, 40.0, 30.0], [0.0, 0.0, 63.0, 63.0]]))
        clicked = model.decode(emb, torch.tensor([[[20.0, 20.0]], [[30.0, 30.0]]]), torch.ones(2, 1, dtype=torch.long))
    assert boxed.shape == clicked.shape == (2, 1, 64, 64)
    assert not torch.allclose(boxed, clicked)
