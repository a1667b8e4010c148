"""Training objective: 1.0 x cross-entropy + 0.8 x Dice (the paper's weights).

- Binary (point prompt): logits (B, 1, H, W), target (B, H, W) or (B, 1, H, W) in {0, 1}.
  CE = BCE-with-logits averaged over pixels; Dice = 1 - soft Dice of sigmoid(logits), computed
  per sample and averaged (``dice_reduction="sample"``; every target is non-empty: prompts are
  drawn from present classes), or over the whole batch as one region (``"batch"``, how SAMed's
  DiceLoss sums). Per-sample soft Dice pays off a pixel of foreground probability q as soon as
  q > Dice/2 of that sample (Bertels et al. 2019), so on small or uncertain objects (low Dice)
  it learns to include pixels that are more likely background than not: a volume bias that
  thresholding at 0.5 turns into over-segmentation (issue 18, docs/training.md). Over the batch,
  the break-even is the batch's Dice/2, set by the large objects, and small ones lose their
  extra weight.
- Multi-class (promptless, SAMed style): logits (B, K+1, H, W), target (B, H, W) integer.
  CE over the K+1 channels; Dice per class over the whole batch (as SAMed's DiceLoss), averaged
  over the foreground classes 1..K (``include_background=True`` also averages class 0, which
  is exactly SAMed's DiceLoss(num_classes + 1)).
Soft Dice = (2 sum(p t) + smooth) / (sum p + sum t + smooth), smooth = 1e-5.

`train fit --loss medsam` uses :func:`medsam_loss` instead: MedSAM's own fine-tuning objective
(squared Dice + BCE + MSE of the IoU head), the alternative issue 29 checks on validation.
Everything is computed in float32 (the logits may come from bf16 autocast).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _dice_loss(prob: torch.Tensor, target: torch.Tensor, dims: tuple[int, ...],
               smooth: float) -> torch.Tensor:
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return 1.0 - (2.0 * inter + smooth) / (denom + smooth)


DICE_REDUCTIONS = ("sample", "batch")


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, ce_weight: float = 1.0,
                 dice_weight: float = 0.8, *, include_background: bool = False,
                 smooth: float = 1e-5, dice_reduction: str = "sample"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (loss, ce, dice); loss = ce_weight * ce + dice_weight * dice.

    ``dice_reduction`` (binary only): "sample" = soft Dice per sample, averaged; "batch" = one soft
    Dice over all pixels of the batch."""
    if dice_reduction not in DICE_REDUCTIONS:
        raise ValueError(f"dice_reduction must be one of {DICE_REDUCTIONS}, got {dice_reduction!r}")
    logits = logits.float()
    if logits.shape[1] == 1:
        t = target.float().reshape(logits.shape)
        ce = F.binary_cross_entropy_with_logits(logits, t)
        dims = (1, 2, 3) if dice_reduction == "sample" else (0, 1, 2, 3)
        dice = _dice_loss(torch.sigmoid(logits), t, dims, smooth).mean()
    else:
        t = target.long()
        if t.ndim == 4:
            t = t[:, 0]
        k1 = logits.shape[1]
        ce = F.cross_entropy(logits, t)
        prob = torch.softmax(logits, dim=1)
        onehot = F.one_hot(t, k1).permute(0, 3, 1, 2).float()
        per_class = _dice_loss(prob, onehot, (0, 2, 3), smooth)
        dice = per_class.mean() if include_background else per_class[1:].mean()
    return ce_weight * ce + dice_weight * dice, ce, dice


def squared_dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - soft Dice with squared terms in the denominator, per sample and channel, averaged:
    (2 sum(p t) + s) / (sum p^2 + sum t^2 + s). MONAI's ``DiceLoss(sigmoid=True, squared_pred=True,
    reduction="mean")`` on sigmoid probabilities, which MedSAM's fine-tuning uses."""
    dims = tuple(range(2, prob.ndim))
    inter = (prob * target).sum(dims)
    denom = (prob * prob).sum(dims) + (target * target).sum(dims)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def mask_iou(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of binary masks (B,1,H,W) per sample -> (B,1)."""
    inter = (pred * target).sum((2, 3))
    union = pred.sum((2, 3)) + target.sum((2, 3)) - inter
    return inter / (union + eps)


def medsam_loss(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MedSAM's fine-tuning objective (LiteMedSAM ``train_one_gpu.py``), binary prompts only.

    Return (loss, bce, dice, iou_mse); loss = dice + bce + iou_mse (MedSAM's weights 1 / 1 / 1):
    squared soft Dice (:func:`squared_dice_loss`), BCE-with-logits averaged over pixels, and the
    mean squared error between the IoU head's prediction (B,1) and the IoU of the thresholded
    prediction (sigmoid > 0.5) with the target, which is a constant (no gradient flows through
    the threshold)."""
    logits = logits.float()
    if logits.shape[1] != 1:
        raise ValueError(f"medsam_loss needs single-mask logits (B,1,H,W), got {tuple(logits.shape)}")
    t = target.float().reshape(logits.shape)
    prob = torch.sigmoid(logits)
    dice = squared_dice_loss(prob, t)
    bce = F.binary_cross_entropy_with_logits(logits, t)
    with torch.no_grad():
        iou_true = mask_iou((prob > 0.5).float(), t)
    iou_mse = F.mse_loss(iou_pred.float().reshape(iou_true.shape), iou_true)
    return dice + bce + iou_mse, bce, dice, iou_mse
