"""The training batch stream: exactly-once epochs across ranks x workers, order, resume, errors."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from shared import open_dataset
from shared.errors import DataError
from shardkit import labelled_dataset
from train.augment import AugmentParams, apply_augment, sample_augment
from train.config import AugmentConfig
from train.data import SampleOrder, ShardBatchStream, StreamSpec, batch_loader
from train_datasets import make_dataset

N, SHARD = 24, 5


@pytest.fixture(scope="module")
def zarr_ds(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("zarr") / "ds", n=N, shard_size=SHARD, fmt="zarr")


@pytest.fixture(scope="module")
def h5_ds(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("h5") / "ds", n=N, shard_size=SHARD, fmt="hdf5",
                        num_classes=3)


def _stream(root: Path, **kw) -> ShardBatchStream:
    spec = dict(shards=str(root), img_size=32, batch_size=4, seed=7)
    spec.update(kw)
    return ShardBatchStream(StreamSpec(**spec))


def _collect(stream: ShardBatchStream, num_workers: int = 0) -> list[dict]:
    return list(batch_loader(stream, num_workers=num_workers, prefetch_factor=2))


def test_epoch_order_is_a_seeded_shard_block_permutation():
    ranges = [(0, 5), (5, 5), (10, 5), (15, 5), (20, 4)]
    order = SampleOrder(ranges, seed=3, block_shards=2)
    e0, e1 = order.epoch_order(0), order.epoch_order(1)
    assert sorted(e0.tolist()) == list(range(24)) and sorted(e1.tolist()) == list(range(24))
    assert not np.array_equal(e0, e1)
    assert np.array_equal(e0, SampleOrder(ranges, seed=3, block_shards=2).epoch_order(0))
    assert not np.array_equal(e0, SampleOrder(ranges, seed=4, block_shards=2).epoch_order(0))
    # Blocks of two shards (>= 9 samples): the first 9 positions come from two shards only.
    assert len(set(order.shard_of(e0[:9]).tolist())) == 2
    epochs, samples = order.samples_at(np.arange(20, 30))
    assert epochs.tolist() == [0] * 4 + [1] * 6
    assert samples.tolist() == e0[20:].tolist() + e1[:6].tolist()


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (3, 0), (2, 2)])
def test_every_sample_exactly_once_per_epoch(zarr_ds, world, workers):
    batch = 2
    steps = N // (batch * world)          # exactly one epoch
    seen: list[str] = []
    per_step: dict[int, list[str]] = {}
    for rank in range(world):
        for b in _collect(_stream(zarr_ds, batch_size=batch, rank=rank, world_size=world,
                                  num_batches=steps), workers):
            seen += b["ids"]
            per_step.setdefault(b["batch"], []).extend(b["ids"])
    assert Counter(seen) == Counter(f"s{i:04d}" for i in range(N))
    # The union of a global step's samples equals a one-process run at batch * world.
    single = _collect(_stream(zarr_ds, batch_size=batch * world, num_batches=steps))
    for b in single:
        assert sorted(per_step[b["batch"]]) == sorted(b["ids"])


def test_order_independent_of_worker_count_hdf5(h5_ds):
    runs = {w: _collect(_stream(h5_ds, num_batches=9, prompt="point"), w) for w in (0, 1, 2)}
    ref = runs[0]
    assert len(ref) == 9 and [b["batch"] for b in ref] == list(range(9))
    for w in (1, 2):
        assert [b["ids"] for b in runs[w]] == [b["ids"] for b in ref]
        for a, b in zip(runs[w], ref):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["points"], b["points"])
            assert torch.equal(a["target"], b["target"])


def test_batches_cross_epochs_and_resume_from_position(zarr_ds):
    full = _collect(_stream(zarr_ds, num_batches=10))            # 40 positions: 1.67 epochs
    ids = [i for b in full for i in b["ids"]]
    assert Counter(ids[:N]) == Counter(f"s{i:04d}" for i in range(N))
    assert len(set(ids[N:])) == 40 - N
    resumed = _collect(_stream(zarr_ds, num_batches=6, start_sample=4 * 4))
    for a, b in zip(resumed, full[4:]):
        assert a["ids"] == b["ids"]
        assert torch.equal(a["position"], b["position"])
        assert torch.equal(a["points"], b["points"]) and torch.equal(a["image"], b["image"])


def test_batch_contents(h5_ds):
    b = _collect(_stream(h5_ds, num_batches=1))[0]
    assert b["image"].shape == (4, 1, 32, 32) and b["image"].dtype == torch.float32
    assert 0 <= b["image"].min() and b["image"].max() <= 1
    assert b["target"].shape == (4, 32, 32) and set(b["target"].unique().tolist()) <= {0.0, 1.0}
    for i in range(4):   # the point lies inside its target mask, the class is present
        x, y = b["points"][i, 0].long().tolist()
        assert b["target"][i, y, x] == 1 and b["class_index"][i] >= 1
    promptless = _collect(_stream(h5_ds, num_batches=1, prompt="none"))[0]
    assert promptless["target"].dtype == torch.uint8 and "points" not in promptless
    assert promptless["target"].max() <= 3


def test_augmentation_is_seeded_and_moves_label_with_image(zarr_ds):
    aug = AugmentConfig(flip_prob=0.5, rot90_prob=0.5, rotate_deg=15, scale_range=0.1,
                        intensity_scale=0.1, intensity_shift=0.05, gamma_range=0.2)
    a = _collect(_stream(zarr_ds, num_batches=2, augment=aug))
    b = _collect(_stream(zarr_ds, num_batches=2, augment=aug), 2)
    plain = _collect(_stream(zarr_ds, num_batches=2))
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["target"], y["target"])
    assert not torch.equal(a[0]["image"], plain[0]["image"])
    rng = np.random.default_rng(0)
    image = rng.random((16, 16)).astype(np.float32)
    label = (image > 0.5).astype(np.uint8)
    params = AugmentParams(hflip=True, rot90=1)
    im2, lb2 = apply_augment(image, label, params)
    assert np.array_equal(lb2, (im2 > 0.5).astype(np.uint8))
    assert np.array_equal(im2, np.rot90(image[:, ::-1], 1))       # flip first, then a quarter turn
    assert sample_augment(AugmentConfig(), rng) == AugmentParams()   # nothing configured: identity
    drawn = sample_augment(aug, np.random.default_rng(3))
    assert drawn == sample_augment(aug, np.random.default_rng(3)) and drawn.intensity
    assert 0.9 <= drawn.mul <= 1.1 and -0.05 <= drawn.add <= 0.05 and abs(drawn.angle) <= 15
    assert drawn.to_dict()["gamma"] == drawn.gamma


def _corrupt_zarr(root: Path) -> None:
    shard = root / "shards" / "shard-00002.zarr"
    for f in (shard / "image").rglob("*"):
        if f.is_file() and f.name != "zarr.json":
            f.write_bytes(b"garbage" * 10)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_shard_is_a_one_line_data_error(tmp_path, workers):
    root = make_dataset(tmp_path / "ds", n=N, shard_size=SHARD)
    _corrupt_zarr(root)
    with pytest.raises(DataError) as err:
        _collect(_stream(root, num_batches=6), workers)
    assert "shard-00002" in str(err.value) and "\n" not in str(err.value)
    assert "Traceback" not in str(err.value)




def test_box_and_mixed_prompts_keep_the_point_stream_and_bound_the_target(zarr_ds):
    """Box batches carry each target's bounding box moved out by 0..jitter per side; the clicks and
    targets are those of a point stream (same seed), so point runs are unchanged."""
    from train.prompts import bounding_box

    point = _collect(_stream(zarr_ds, num_batches=4))
    box = _collect(_stream(zarr_ds, num_batches=4, prompt="box", box_jitter=3))
    mixed = _collect(_stream(zarr_ds, num_batches=4, prompt="mixed", box_jitter=3))
    assert "boxes" not in point[0]
    uses = []
    for p, b, m in zip(point, box, mixed):
        assert torch.equal(p["points"], b["points"]) and torch.equal(p["target"], b["target"])
        assert torch.equal(p["points"], m["points"]) and torch.equal(b["boxes"], m["boxes"])
        assert b["use_box"].all()
        uses += m["use_box"].tolist()
        for target, bx in zip(b["target"].numpy(), b["boxes"].numpy()):
            x0, y0, x1, y1 = bounding_box(target > 0)
            assert x0 - 3 <= bx[0] <= x0 and y0 - 3 <= bx[1] <= y0
            assert x1 <= bx[2] <= x1 + 3 and y1 <= bx[3] <= y1 + 3
    assert 0 < sum(uses) < len(uses)
    again = _collect(_stream(zarr_ds, num_batches=4, prompt="mixed", box_jitter=3), num_workers=2)
    assert all(torch.equal(a["boxes"], m["boxes"]) and torch.equal(a["use_box"], m["use_box"])
               for a, m in zip(again, mixed))


def test_longest_side_stream_pads_like_the_model_input(tmp_path):
    """resize "longest_side" (lite_medsam): a non-square sample keeps its aspect, zero padding
    bottom-right, the label and the prompt inside the content."""
    from train.resize import InputGeometry

    root = make_dataset(tmp_path / "ds", n=6, shard_size=3, size=(20, 30))
    batch = _collect(_stream(root, num_batches=1, img_size=32, resize="longest_side", prompt="box"))[0]
    nh, nw = InputGeometry(32, "longest_side").content_hw((20, 30))
    assert (nh, nw) == (21, 32)
    assert not batch["image"][:, :, nh:].any() and not batch["target"][:, nh:].any()
    assert (batch["points"][..., 1] < nh).all() and (batch["boxes"][:, 3] < 32).all()


def _reference_batch(stream, batch: int) -> dict:
    """make_batch as written before the in-place version: train.resize + train.prompts per sample."""
    from train.data import PROMPT_STREAM
    from train.prompts import sample_training_prompt
    from train.resize import resize_image, resize_label

    s = stream.spec
    pos = stream.positions(batch)
    epochs, indices = stream.order.samples_at(pos)
    images = np.empty((len(pos), 1, s.img_size, s.img_size), np.float32)
    targets = np.empty((len(pos), s.img_size, s.img_size), np.uint8)
    points = np.zeros((len(pos), 1, 2), np.float32)
    classes = np.zeros(len(pos), np.int64)
    ds = open_dataset(s.shards)  # each sample as read back (float32: the float16 -> float32 cast is exact)
    for i, (epoch, index) in enumerate(zip(epochs.tolist(), indices.tolist())):
        sample = ds[index]
        images[i, 0] = resize_image(sample["image"], s.img_size)
        label = resize_label(sample["label"], s.img_size)
        if s.prompt == "point":
            rng = np.random.default_rng([s.seed, epoch, index, PROMPT_STREAM])
            prompt = sample_training_prompt(label, rng)
            if prompt is None:
                targets[i] = 0
                points[i, 0] = rng.integers(0, s.img_size, 2)
            else:
                classes[i], points[i, 0], targets[i] = prompt[0], prompt[1], prompt[2]
        else:
            targets[i] = label
    ds.close()
    return {"image": images, "target": targets, "points": points, "class_index": classes}


@pytest.mark.parametrize("dtype,prompt,img_size", [("float16", "point", 64), ("float32", "point", 48),
                                                   ("float16", "none", 64), ("float16", "point", 40)])
def test_in_place_batches_equal_reference(tmp_path: Path, dtype: str, prompt: str, img_size: int):
    from train.data import ShardBatchStream, StreamSpec

    shapes = [(40, 48), (40, 48), (33, 21), (40, 40), (40, 48), (17, 48), (40, 48), (40, 48), (25, 25), (40, 48),
              (40, 48), (40, 48)]
    labelled_dataset(tmp_path, shapes, dtype=dtype)
    stream = ShardBatchStream(StreamSpec(shards=str(tmp_path), img_size=img_size, batch_size=4, seed=5, prompt=prompt))
    for batch in range(7):  # past the end of epoch 0
        got = stream.make_batch(batch)
        ref = _reference_batch(stream, batch)
        for key, value in ref.items():
            if key == "points" and prompt == "none":
                continue
            assert got[key].numpy().tobytes() == value.tobytes(), (batch, key)
        assert isinstance(got["image"], torch.Tensor)
