"""TensorBoard output of `train fit --tensorboard` and `train eval --tensorboard` (optional extra).

metrics.jsonl and summary.json stay the source of truth; this writes the same numbers as
TensorBoard events for people who watch runs there (``tensorboard --logdir RUNDIR/tensorboard``):

* ``train/loss``, ``train/ce``, ``train/dice``, ``train/lr``, ``train/samples_per_s``,
  ``train/epoch`` at every metrics.jsonl record (same step, same values);
* ``train/predictions``: every ``--tensorboard-images-every`` steps, a picture of the first
  samples of the current batch: image | target | prediction, the prompt point as a cross;
* ``eval/<name>/...`` from `train eval --tensorboard`: mean DSC / HD95 and per-class scalars and
  the paper-format table as text, at the run's step.

Needs the ``tensorboard`` package (``pip install "exemplar-sam[tensorboard]"``); the writer is
``torch.utils.tensorboard.SummaryWriter``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ConfigError

TENSORBOARD_DIR = "tensorboard"
SCALARS = ("loss", "ce", "dice", "lr", "samples_per_s", "epoch")
MAX_PICTURES = 4          # samples per prediction picture
_TARGET_RGB = (60, 220, 60)
_PRED_RGB = (240, 40, 40)
_POINT_RGB = (255, 230, 0)


def open_writer(logdir: Path, purge_step: int | None = None):
    """A SummaryWriter on `logdir`; `purge_step`: a resumed run drops events logged after it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install \"exemplar-sam[tensorboard]\" "
                          f"({exc})") from None
    return SummaryWriter(log_dir=str(logdir), purge_step=purge_step)


class TrainBoard:
    """What `train fit` writes to RUNDIR/tensorboard (rank 0 only)."""

    def __init__(self, rundir: Path, *, start_step: int, images_every: int):
        self.writer = open_writer(rundir / TENSORBOARD_DIR, purge_step=start_step + 1 if start_step else None)
        self.images_every = max(0, int(images_every))

    def record(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record as scalars at its step."""
        step = int(record["step"])
        for key in SCALARS:
            if key in record:
                self.writer.add_scalar(f"train/{key}", float(record[key]), step)

    def wants_images(self, step: int, last: bool) -> bool:
        return self.images_every > 0 and (step % self.images_every == 0 or last)

    def predictions(self, step: int, batch: dict[str, Any], logits) -> None:
        """image | target | prediction rows for the first samples of `batch` (CPU copies)."""
        images = batch["image"][:MAX_PICTURES, 0].float().cpu().numpy()
        targets = batch["target"][:MAX_PICTURES].cpu().numpy()
        logits = logits[:MAX_PICTURES].detach().float().cpu()
        if logits.shape[1] == 1:   # point prompt: binary mask of the prompted class
            preds = (logits[:, 0] > 0).numpy().astype(np.uint8)
        else:                      # promptless: class map
            preds = logits.argmax(1).numpy().astype(np.uint8)
        points = batch["points"][:MAX_PICTURES, 0].cpu().numpy() if "points" in batch else None
        rows = [prediction_row(images[i], targets[i], preds[i], None if points is None else points[i])
                for i in range(len(images))]
        self.writer.add_image("train/predictions", np.concatenate(rows, axis=0), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def prediction_row(image: np.ndarray, target: np.ndarray, pred: np.ndarray,
                   point: np.ndarray | None) -> np.ndarray:
    """RGB uint8 (S, 3S, 3): the image, the target in green, the prediction in red (classes > 0)."""
    import cv2

    gray = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    base = np.repeat(gray[..., None], 3, axis=2)
    panels = [base.copy()]
    for mask, colour in ((target, _TARGET_RGB), (pred, _PRED_RGB)):
        panel = base.copy()
        on = mask > 0
        panel[on] = (0.5 * panel[on] + 0.5 * np.array(colour)).astype(np.uint8)
        panels.append(panel)
    if point is not None:
        size = max(3, image.shape[0] // 24)
        for panel in panels:
            cv2.drawMarker(panel, (int(point[0]), int(point[1])), _POINT_RGB, cv2.MARKER_CROSS, size, 1)
    return np.concatenate(panels, axis=1)


def write_eval(logdir: Path, name: str, result: dict[str, Any], table: str, step: int) -> None:
    """`train eval`'s numbers and table under ``eval/<name>/`` at `step`."""
    writer = open_writer(logdir)
    try:
        tag = f"eval/{name}"
        for key in ("mean_dsc", "mean_hd95"):
            if result.get(key) is not None:
                writer.add_scalar(f"{tag}/{key}", float(result[key]), step)
        for cls, scores in (result.get("per_class") or {}).items():
            for key, value in (scores or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(f"{tag}/{cls}/{key}", float(value), step)
        if result.get("slices_per_s"):
            writer.add_scalar(f"{tag}/slices_per_s", float(result["slices_per_s"]), step)
        writer.add_text(f"{tag}/table", table, step)
    finally:
        writer.flush()
        writer.close()
