"""train.losses on known inputs: the paper's CE + Dice and MedSAM's Dice + BCE + IoU MSE."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from train.losses import ce_dice_loss, mask_iou, medsam_loss, squared_dice_loss


def test_binary_loss_values():
    logits = torch.zeros(2, 1, 4, 4)
    target = torch.zeros(2, 4, 4)
    target[:, :2] = 1                            # half the pixels
    loss, ce, dice = ce_dice_loss(logits, target)
    assert ce.item() == pytest.approx(math.log(2), abs=1e-6)
    # p = 0.5 everywhere: Dice = 2 * 4 / (8 + 8) = 0.5
    assert dice.item() == pytest.approx(0.5, abs=1e-5)
    assert loss.item() == pytest.approx(math.log(2) + 0.8 * 0.5, abs=1e-5)
    perfect = (target * 40 - 20)[:, None]
    loss, ce, dice = ce_dice_loss(perfect, target)
    assert loss.item() < 1e-6
    _, _, dice_w = ce_dice_loss(logits, target, ce_weight=0.0)
    assert dice_w.item() == pytest.approx(0.5, abs=1e-5)


def test_multiclass_loss_values():
    target = torch.tensor([[[0, 1], [2, 2]]])    # (1, 2, 2), classes 0..2
    logits = torch.zeros(1, 3, 2, 2)
    loss, ce, dice = ce_dice_loss(logits, target)
    assert ce.item() == pytest.approx(math.log(3), abs=1e-6)
    # p = 1/3: class 1 Dice = (2/3) / (4/3 + 1) = 2/7; class 2 = (4/3) / (4/3 + 2) = 2/5
    assert dice.item() == pytest.approx(1 - (2 / 7 + 2 / 5) / 2, abs=1e-5)
    _, _, dice_bg = ce_dice_loss(logits, target, include_background=True)
    assert dice_bg.item() == pytest.approx(1 - (2 / 7 + 2 / 7 + 2 / 5) / 3, abs=1e-5)
    good = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 30
    assert ce_dice_loss(good, target)[0].item() < 1e-5


def test_binary_dice_per_sample_or_over_the_batch():
    """p = 0.5 everywhere; sample A has 1 of 4 pixels foreground, B 3 of 4.
    Per sample: A = 2*0.5/(2+1) = 1/3, B = 2*1.5/(2+3) = 3/5 -> loss 1 - (1/3 + 3/5)/2.
    Over the batch: 2*(0.5+1.5)/(4+4) = 1/2 -> loss 1/2."""
    target = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [1, 0]]])
    logits = torch.zeros(2, 1, 2, 2)
    _, ce, dice = ce_dice_loss(logits, target)
    assert dice.item() == pytest.approx(1 - (1 / 3 + 3 / 5) / 2, abs=1e-5)
    _, ce_b, dice_b = ce_dice_loss(logits, target, dice_reduction="batch")
    assert dice_b.item() == pytest.approx(0.5, abs=1e-5) and ce_b.item() == pytest.approx(ce.item())
    with pytest.raises(ValueError):
        ce_dice_loss(logits, target, dice_reduction="volume")


def test_squared_dice_matches_its_formula():
    """MONAI's squared_pred Dice written out in numpy, per sample: 1 - (2 sum pt + s) / (sum p^2 + sum t^2 + s)."""
    rng = np.random.default_rng(0)
    p = rng.random((3, 1, 5, 4)).astype(np.float32)
    t = (rng.random((3, 1, 5, 4)) > 0.6).astype(np.float32)
    s = 1e-5
    want = np.mean([1 - (2 * (p[i] * t[i]).sum() + s) / ((p[i] ** 2).sum() + (t[i] ** 2).sum() + s)
                    for i in range(3)])
    got = squared_dice_loss(torch.from_numpy(p), torch.from_numpy(t)).item()
    assert got == pytest.approx(float(want), abs=1e-6)


def test_medsam_loss_values_and_the_iou_target():
    """p = 0.5 everywhere with half the pixels foreground: BCE = log 2; squared Dice =
    1 - 2*0.5*8 / (16*0.25 + 8) = 1/3; the thresholded mask (p > 0.5) is empty, so the IoU target
    is 0 and a predicted IoU of 0.5 costs 0.25."""
    logits = torch.zeros(2, 1, 4, 4)
    target = torch.zeros(2, 4, 4)
    target[:, :2] = 1
    iou_pred = torch.full((2, 1), 0.5, requires_grad=True)
    loss, bce, dice, iou_mse = medsam_loss(logits, iou_pred, target)
    assert bce.item() == pytest.approx(math.log(2), abs=1e-6)
    assert dice.item() == pytest.approx(1 - 8 / 12, abs=1e-5)
    assert iou_mse.item() == pytest.approx(0.25, abs=1e-6)
    assert loss.item() == pytest.approx(math.log(2) + 1 / 3 + 0.25, abs=1e-5)
    loss.backward()
    assert iou_pred.grad is not None and torch.all(iou_pred.grad > 0)   # pushed down towards IoU 0
    # a confident, correct mask: IoU target 1
    perfect = (target * 40 - 20)[:, None]
    _, _, _, mse = medsam_loss(perfect, torch.ones(2, 1), target)
    assert mse.item() < 1e-6
    assert mask_iou((perfect > 0).float(), target[:, None]).flatten().tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError):
        medsam_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1), torch.zeros(1, 4, 4))
