"""DSC / HD95 agree with medpy on real masks; the empty-case convention holds."""
from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from train.metrics import (diagonal_mm, dice, hd95, mean_signed_surface_distance, score_volume, slice_dice,
                           summarise, volume_ratio)

medpy_binary = pytest.importorskip("medpy.metric.binary", reason="medpy is a test-only dependency")


def _perturb(mask: np.ndarray, seed: int) -> np.ndarray:
    """A plausible wrong prediction: eroded or dilated, shifted, with a few random blobs."""
    rng = np.random.default_rng(seed)
    out = ndimage.binary_erosion(mask, iterations=2) if seed % 2 else ndimage.binary_dilation(mask, iterations=1)
    out = np.roll(out, tuple(int(s) for s in rng.integers(-3, 4, size=3)), axis=(0, 1, 2))
    blobs = rng.random(mask.shape) > 0.9995
    return out | ndimage.binary_dilation(blobs, iterations=1)


@pytest.mark.shared_data
def test_brats_whole_tumour_matches_medpy(brats_root):
    seg = nib.load(next(brats_root.glob("HGG/Brats18_2013_3_1/*_seg.nii.gz")))
    gt = np.asarray(seg.dataobj) > 0
    assert gt.any()
    for seed, spacing in ((1, (1.0, 1.0, 1.0)), (2, (0.8, 1.2, 2.5))):
        pred = _perturb(gt, seed)
        assert dice(pred, gt) == pytest.approx(medpy_binary.dc(pred, gt), rel=1e-9)
        ref = medpy_binary.hd95(pred, gt, voxelspacing=spacing)
        assert hd95(pred, gt, spacing) == pytest.approx(ref, rel=1e-6)
        assert ref > 0


@pytest.mark.shared_data
def test_synapse_organs_match_medpy(synapse_root):
    lab = nib.load(synapse_root / "RawData/Training/label/label0001.nii.gz")
    labels = np.asarray(lab.dataobj)
    spacing = tuple(float(z) for z in lab.header.get_zooms())
    checked = 0
    for organ in (1, 2, 3, 4, 6, 7, 8, 11):  # the 8 organs of the standard evaluation
        gt = labels == organ
        assert gt.any(), f"organ {organ} missing from the sample"
        pred = _perturb(gt, organ)
        if not pred.any():  # erosion can wipe out a thin organ; compare on the dilated variant
            pred = _perturb(gt, organ + 1)
        assert dice(pred, gt) == pytest.approx(medpy_binary.dc(pred, gt), rel=1e-9)
        assert hd95(pred, gt, spacing) == pytest.approx(
            medpy_binary.hd95(pred, gt, voxelspacing=spacing), rel=1e-6)
        checked += 1
    assert checked == 8


def test_mask_touching_the_array_border_matches_medpy():
    gt = np.zeros((12, 20, 20), bool)
    gt[:5, :7, 3:9] = True  # touches three borders
    pred = np.zeros_like(gt)
    pred[1:6, 2:9, 0:8] = True
    spacing = (3.0, 0.7, 0.7)
    assert hd95(pred, gt, spacing) == pytest.approx(medpy_binary.hd95(pred, gt, voxelspacing=spacing), rel=1e-9)


def test_empty_case_convention():
    shape, spacing = (4, 10, 20), (2.0, 1.0, 1.0)
    empty = np.zeros(shape, bool)
    some = empty.copy()
    some[1, 2:5, 3:8] = True
    diag = diagonal_mm(shape, spacing)
    assert diag == pytest.approx(math.sqrt(8**2 + 10**2 + 20**2))
    # both empty: not scored
    assert math.isnan(dice(empty, empty)) and math.isnan(hd95(empty, empty, spacing))
    # prediction on an empty ground truth: never Dice 1
    assert dice(some, empty) == 0.0 and hd95(some, empty, spacing) == diag
    # missed structure: Dice 0 and the diagonal penalty, not HD95 0
    assert dice(empty, some) == 0.0 and hd95(empty, some, spacing) == diag
    # perfect prediction
    assert dice(some, some) == 1.0 and hd95(some, some, spacing) == 0.0


def test_score_volume_and_summary_average_like_the_tables():
    names = ("background", "a", "b", "c")
    spacing = (1.0, 1.0, 1.0)
    gt1 = np.zeros((3, 8, 8), np.uint8)
    gt1[1, 1:4, 1:4] = 1
    gt1[1, 5:7, 5:7] = 2
    pred1 = gt1.copy()
    pred1[1, 5:7, 5:7] = 0  # class b missed
    gt2 = np.zeros_like(gt1)
    gt2[0, 2:6, 2:6] = 1
    pred2 = gt2.copy()
    pred2[2, 0, 0] = 3  # class c predicted but absent from ground truth
    rows = score_volume("v1", pred1, gt1, spacing, names) + score_volume("v2", pred2, gt2, spacing, names)
    by = {(r.volume, r.class_name): r for r in rows}
    assert by["v1", "a"].dsc == 1.0 and by["v1", "a"].hd95 == 0.0
    assert by["v1", "b"].dsc == 0.0 and by["v1", "b"].hd95 == diagonal_mm(gt1.shape, spacing)
    assert by["v1", "b"].gt_voxels == 4 and by["v1", "b"].pred_voxels == 0
    assert not by["v1", "c"].scored and "not scored" in by["v1", "c"].note
    assert not by["v2", "b"].scored
    assert by["v2", "c"].dsc == 0.0 and by["v2", "c"].scored
    summary = summarise(rows, names)
    assert summary.n_volumes == 2
    assert {k: summary.per_class["a"][k] for k in ("dsc", "hd95", "n_volumes")} == \
        {"dsc": 1.0, "hd95": 0.0, "n_volumes": 2}
    # shape columns: perfect class a -> ratio 1, mssd 0; missed b -> ratio 0, mssd NaN; c has no gt
    assert by["v1", "a"].volume_ratio == 1.0 and by["v1", "a"].mssd == 0.0
    assert by["v1", "b"].volume_ratio == 0.0 and math.isnan(by["v1", "b"].mssd)
    assert math.isnan(by["v2", "c"].volume_ratio) and math.isnan(by["v2", "c"].mssd)
    assert summary.per_class["a"]["volume_ratio_median"] == 1.0 and summary.per_class["a"]["mssd"] == 0.0
    assert summary.per_class["b"]["volume_ratio_median"] == 0.0 and math.isnan(summary.per_class["b"]["mssd"])
    assert math.isnan(summary.per_class["c"]["volume_ratio_median"])
    assert summary.median_volume_ratio == 1.0  # over the cases (v1 a, v1 b, v2 a) = (1, 0, 1)
    assert summary.mean_mssd == 0.0  # classes with an mssd: a only
    assert summary.per_class["b"]["n_volumes"] == 1 and summary.per_class["b"]["dsc"] == 0.0
    assert summary.per_class["c"]["n_volumes"] == 1 and summary.per_class["c"]["dsc"] == 0.0
    assert summary.mean_dsc == pytest.approx((1.0 + 0.0 + 0.0) / 3)


def test_slice_dice():
    gt = np.zeros((3, 4, 4), np.uint8)
    pred = np.zeros_like(gt)
    gt[0, :2, :2] = 1
    pred[0, :2, :2] = 1
    gt[1, :2, :2] = 1
    pred[1, :2, :2] = 2  # wrong class
    d = slice_dice(pred, gt)
    assert d[0] == 1.0 and d[1] == 0.0 and math.isnan(d[2])


def test_volume_ratio_and_signed_surface_distance_by_hand():
    """1-D masks, spacing 2 mm: the ground truth is voxels 2..5, the prediction spills to 2..7.

    Surfaces (ends of each run): gt {2, 5}, pred {2, 7}. Pred voxel 2 lies on the gt surface (0);
    pred voxel 7 is outside the gt, 2 voxels = 4 mm from gt voxel 5 (+4). Gt voxel 2 lies on the
    pred surface (0); gt voxel 5 is inside the prediction, 4 mm from pred voxel 7 (+4).
    mssd = (0 + 4 + 0 + 4) / 4 = +2 mm; volume ratio 6 / 4.
    """
    gt = np.zeros(10, bool)
    gt[2:6] = True
    pred = np.zeros(10, bool)
    pred[2:8] = True
    assert mean_signed_surface_distance(pred, gt, (2.0,)) == pytest.approx(2.0)
    assert volume_ratio(int(pred.sum()), int(gt.sum())) == pytest.approx(1.5)
    # the same shortfall the other way round is negative: prediction inside the ground truth
    assert mean_signed_surface_distance(gt, pred, (2.0,)) == pytest.approx(-2.0)
    assert volume_ratio(int(gt.sum()), int(pred.sum())) == pytest.approx(4 / 6)
    # a spill on one side and a shortfall of the same size on the other cancel out (a shift)
    shifted = np.zeros(10, bool)
    shifted[3:7] = True
    assert mean_signed_surface_distance(shifted, gt, (2.0,)) == pytest.approx(0.0)


def test_signed_surface_distance_of_a_one_voxel_dilation():
    """A 4x4x4 cube dilated by the 6-neighbour cross: the 96 added face voxels form the prediction
    surface, each 1 voxel from the cube's surface and outside it (+1); all 56 cube surface voxels
    are inside the prediction, 1 voxel from its surface (+1). So mssd = +1 voxel = the spacing,
    and -1 voxel for the cube against its dilation (the prediction falls short)."""
    gt = np.zeros((8, 8, 8), bool)
    gt[2:6, 2:6, 2:6] = True
    pred = ndimage.binary_dilation(gt, structure=ndimage.generate_binary_structure(3, 1))
    assert int(pred.sum()) == 64 + 96
    assert mean_signed_surface_distance(pred, gt, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert mean_signed_surface_distance(pred, gt, (2.5, 2.5, 2.5)) == pytest.approx(2.5)
    assert mean_signed_surface_distance(gt, pred, (1.0, 1.0, 1.0)) == pytest.approx(-1.0)
    rows = score_volume("v", pred.astype(np.uint8), gt.astype(np.uint8), (1.0, 1.0, 1.0), ("bg", "t"))
    assert rows[0].volume_ratio == pytest.approx(160 / 64) and rows[0].mssd == pytest.approx(1.0)
    # touching the array border: the border counts as background, like HD95's surfaces
    gt_b = np.zeros((6, 6, 6), bool)
    gt_b[0:3, 0:3, 0:3] = True
    assert mean_signed_surface_distance(gt_b, gt_b, (1.0, 1.0, 1.0)) == 0.0
    empty = np.zeros_like(gt)
    assert math.isnan(mean_signed_surface_distance(empty, gt, (1.0, 1.0, 1.0)))
    assert math.isnan(mean_signed_surface_distance(gt, empty, (1.0, 1.0, 1.0)))


def test_surface_scores_are_hd95_and_mssd_from_one_pair_of_transforms() -> None:
    """score_volume's shared-distance path gives bit for bit what hd95() and
    mean_signed_surface_distance() give one at a time (random blobs, touching the border too)."""
    from scipy import ndimage

    from train.metrics import hd95, mean_signed_surface_distance, surface_scores

    rng = np.random.default_rng(4)
    for i in range(30):
        shape = tuple(int(v) for v in rng.integers(6, 24, 3))
        a = ndimage.binary_dilation(rng.random(shape) > 0.97, iterations=int(rng.integers(1, 3)))
        b = ndimage.binary_dilation(rng.random(shape) > 0.97, iterations=int(rng.integers(1, 3)))
        if i % 5 == 0:
            b = a.copy()
            b[:, :, : shape[2] // 2] = False
        if not a.any() or not b.any():
            continue
        sp = tuple(float(v) for v in rng.uniform(0.5, 3.0, 3))
        assert surface_scores(a, b, sp) == (hd95(a, b, sp), mean_signed_surface_distance(a, b, sp))
