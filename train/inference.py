"""Inference with a loaded model, shared by `train eval` and `train predict`.

- :class:`LoadedModel` with :func:`load_run_model` (a `train fit` run) and :func:`load_zero_shot`
  (official SAM weights, no training);
- :class:`Inference`: batched encoding of slices (each slice encoded once, resized to the model's
  square input) and decoding of point prompts or the promptless head;
- :func:`predict_slices`: label maps for a batch of slices from per-slice, per-class points (the
  one slice-prediction routine of eval and predict);
- :func:`combine_class_logits`: where classes overlap, the highest logit wins.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from shared.errors import ConfigError
from train.checkpointing import load_trained_model
from train.model import MODEL_SPECS, PromptSAM, build_sam
from train.precheck import check_run_dir
from train.prompts import Prompt
from train.resize import InputGeometry


@dataclass
class LoadedModel:
    """A PromptSAM ready for inference plus what the report needs to say about it."""

    model: Any  # train.model.PromptSAM
    name: str  # the method name in table.md
    class_names: tuple[str, ...] | None  # None for zero-shot SAM: taken from the dataset
    trained_prompt: str | None  # "point" / "none" for runs, None for zero-shot
    info: dict = field(default_factory=dict)  # recorded under "model" in summary.json
    run_config: dict = field(default_factory=dict)  # RUNDIR/config.json ({} for zero-shot)


def load_zero_shot(model: str, checkpoint: str | Path | None, img_size: int | None = None) -> LoadedModel:
    """Zero-shot SAM (the paper's "SAM" rows): pretrained weights (official SAM from
    `checkpoint`, LiteMedSAM from its package unless `checkpoint`), no LoRA, no training."""
    if model not in MODEL_SPECS:
        raise ConfigError(f"unknown --model {model!r}; choose one of {', '.join(MODEL_SPECS)}")
    spec = MODEL_SPECS[model]
    size = int(img_size or spec.checkpoint_img_size)
    sam = build_sam(model, checkpoint, size)
    info = {"model": model, "checkpoint": None if checkpoint is None else str(checkpoint),
            "weights": sam.weights, "img_size": size, "zero_shot": True,
            "input_contract": spec.contract.to_dict()}
    name = "LiteMedSAM (zero-shot)" if model == "lite_medsam" else f"SAM ({model}, zero-shot)"
    return LoadedModel(PromptSAM(sam).eval(), name, None, None, info)


def load_run_model(rundir: str | Path, checkpoint: str | Path | None = None,
                   base_checkpoint: str | Path | None = None) -> LoadedModel:
    """A trained run (``RUNDIR/config.json`` + ``RUNDIR/checkpoints/last.pt`` or `checkpoint`).

    `base_checkpoint` overrides the official SAM weights path recorded in the run (vit_* runs
    only hold LoRA weights).
    """
    rundir = Path(rundir)
    ckpt = check_run_dir(rundir, checkpoint)
    model, run = load_trained_model(rundir, ckpt, base_checkpoint)
    train_cfg = run.get("train", {})
    dataset = run.get("dataset") or {}
    names = dataset.get("class_names")
    info = {"run": str(rundir.resolve()), "checkpoint": str(ckpt.resolve()),
            "model": train_cfg.get("model"), "img_size": train_cfg.get("img_size"),
            "base_checkpoint": str(base_checkpoint) if base_checkpoint else train_cfg.get("checkpoint"),
            "lora_rank": train_cfg.get("lora_rank"), "trained_prompt": train_cfg.get("prompt"),
            "zero_shot": False}
    if train_cfg.get("model") in MODEL_SPECS:
        info["input_contract"] = MODEL_SPECS[train_cfg["model"]].contract.to_dict()
    return LoadedModel(model.eval(), rundir.resolve().name, tuple(names) if names else None,
                       train_cfg.get("prompt"), info, run)


@dataclass
class Inference:
    """Batched inference settings and the torch context they imply.

    `engine` (train.model.engines): runs the image encoder on the preprocessed input instead of
    torch eager (an exported ONNX graph on CPU); None = the model's own encoder.
    """

    model: Any
    device: Any
    batch_size: int = 8  # slices per encoder call
    decode_batch: int = 64  # prompts per decoder call
    multimask: bool = False  # SAM's three masks per prompt, keep the best predicted IoU
    engine: Any = None

    @property
    def img_size(self) -> int:
        return int(self.model.img_size)

    @property
    def geometry(self) -> InputGeometry:
        return InputGeometry(self.img_size, getattr(self.model, "resize", "square"))

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode(self, slices: np.ndarray):
        """(B, h, w) float32 slices -> embeddings on the device (each slice encoded once)."""
        geometry = self.geometry
        batch = np.empty((len(slices), self.img_size, self.img_size), np.float32)
        for out, im in zip(batch, slices):
            geometry.image_into(im, out)
        x = torch.from_numpy(batch).unsqueeze(1).to(self.device)
        if self.engine is not None:
            return self.engine(self.model.preprocess(x)).to(self.device)
        with self.autocast():
            return self.model.encode(x)

    def decode_prompts(self, embeddings, emb_index: np.ndarray, points: np.ndarray | None,
                       labels: np.ndarray | None, hw: tuple[int, int], boxes: np.ndarray | None = None):
        """Logits (P, h, w) float32 numpy for P prompts at model scale: points (P, N, 2) with their
        labels (P, N) (1 = positive) and/or boxes (P, 4)."""
        out = []
        geometry = self.geometry
        for i in range(0, len(emb_index), self.decode_batch):
            sl = slice(i, i + self.decode_batch)
            sel = torch.from_numpy(emb_index[sl]).to(self.device)
            pts = lab = bxs = None
            if points is not None:
                pts = torch.from_numpy(points[sl]).float().to(self.device)
                lab = torch.from_numpy(labels[sl]).long().to(self.device)
            if boxes is not None:
                bxs = torch.from_numpy(boxes[sl]).float().to(self.device)
            with self.autocast():
                logits = self.model.decode(embeddings[sel], pts, lab, boxes=bxs, multimask=self.multimask)
            out.append(geometry.logits_to_slice(logits.float(), hw)[:, 0].cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, *hw), np.float32)

    def decode_promptless(self, embeddings, hw: tuple[int, int]) -> np.ndarray:
        """Arg-max label maps (B, h, w) of the K+1 promptless outputs."""
        with self.autocast():
            logits = self.model.decode_promptless(embeddings)
        return self.geometry.logits_to_slice(logits.float(), hw).argmax(1).to(torch.uint8).cpu().numpy()


def combine_class_logits(classes: Sequence[int], logits: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Per-class logits (n, h, w) -> label map: class with the highest logit where it is > 0."""
    pred = np.zeros(hw, np.uint8)
    if len(classes) == 0:
        return pred
    best = logits.argmax(0)
    fg = logits.max(0) > 0
    pred[fg] = np.asarray(classes, np.uint8)[best[fg]]
    return pred


def predict_slices(inf: Inference, images: np.ndarray,
                   prompts: Sequence[Mapping[int, Prompt]] | None) -> np.ndarray:
    """Label maps (B, h, w) uint8 for B slices (B, h, w) of one size, at that size.

    `prompts`: per slice, {class: Prompt} (clicks or a box in pixels of the slice; a bare (n, 2)
    array counts as clicks); prompts of the same shape (point count, or box) are decoded together
    (``inf.decode_batch`` at a time), and overlaps go to the class with the highest logit. A
    slice without prompts stays 0. None: promptless, the arg-max of the K+1 outputs. Every
    slice is encoded once.
    """
    b, h, w = images.shape
    embeddings = inf.encode(images)
    if prompts is None:
        return inf.decode_promptless(embeddings, (h, w))
    items = [(j, int(c), as_prompt(p)) for j, per_class in enumerate(prompts) for c, p in sorted(per_class.items())]
    logits = prompt_logits(inf, embeddings, [j for j, _, _ in items], [p for _, _, p in items], (h, w))
    pred = np.zeros((b, h, w), np.uint8)
    for j in range(b):
        mine = [i for i, (owner, _, _) in enumerate(items) if owner == j]
        if mine:
            pred[j] = combine_class_logits([items[i][1] for i in mine], np.stack([logits[i] for i in mine]), (h, w))
    return pred


def prompt_logits(inf: Inference, embeddings, owners: Sequence[int], prompts: Sequence[Prompt],
                  hw: tuple[int, int]) -> np.ndarray:
    """Logits (P, h, w) float32 of P prompts, prompt i decoded on ``embeddings[owners[i]]`` (slices of
    size `hw`); prompts of the same shape (point count, or box) are decoded together, no padding
    points (``inf.decode_batch`` at a time)."""
    h, w = hw
    out = np.zeros((len(prompts), h, w), np.float32)
    geometry = inf.geometry
    for shape in sorted({_shape(p) for p in prompts}):   # no padding points: one call per prompt shape
        sel = [i for i, p in enumerate(prompts) if _shape(p) == shape]
        idx = np.asarray([owners[i] for i in sel], np.int64)
        if shape == (0, True):
            boxes = np.stack([geometry.boxes(prompts[i].box, (h, w)) for i in sel]).astype(np.float32)
            res = inf.decode_prompts(embeddings, idx, None, None, (h, w), boxes)
        else:
            pts = np.stack([geometry.points(prompts[i].points_array(), (h, w)) for i in sel]).astype(np.float32)
            res = inf.decode_prompts(embeddings, idx, pts, np.ones(pts.shape[:2], np.int64), (h, w))
        out[sel] = res
    return out


def as_prompt(p: Prompt | np.ndarray) -> Prompt:
    """A Prompt, or positive clicks (n, 2) as (x, y)."""
    return p if isinstance(p, Prompt) else Prompt.at(*np.asarray(p, np.float64).reshape(-1, 2))


def _shape(p: Prompt) -> tuple[int, bool]:
    return (0, True) if p.box is not None else (len(p.points), False)
