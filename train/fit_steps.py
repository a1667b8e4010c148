"""`train fit`, the steps of the loop: optimiser and schedule, one training step, the metrics
window, checkpoints, and stopping on Ctrl-C / SIGTERM. Each works (and is tested) alone;
:mod:`train.fit` runs them in order."""
from __future__ import annotations

import hashlib
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from shared.errors import DataError
from train.checkpointing import CHECKPOINT_DIR, last_checkpoint, save_checkpoint
from train.config import TrainConfig
from train.distributed import sum_over_ranks
from train.losses import ce_dice_loss, medsam_loss
from train.model import trainable_state_dict


# -- optimiser and schedule --------------------------------------------------------------------

@dataclass
class Optimisation:
    """AdamW over the trainable parameters and the warm-up + exponential-decay schedule."""

    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    params: list[nn.Parameter]      # the trainable ones (gradient clipping)

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return self.scheduler.get_last_lr()[0]


def make_optimizer(model: nn.Module, cfg: TrainConfig, saved: dict | None = None,
                   source: str = "checkpoint") -> Optimisation:
    """AdamW (cfg.lr, betas, weight decay) on the parameters that require grad, LambdaLR with
    ``cfg.lr_factor``; with `saved` (a checkpoint) both continue from its state. A one-line
    DataError naming `source` when that state does not fit the model."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.lr_factor)
    if saved:
        try:
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise DataError(f"{source}: optimizer state does not fit this model ({exc})") from None
    return Optimisation(optimizer, scheduler, params)


# -- one step ----------------------------------------------------------------------------------

@dataclass
class StepResult:
    loss: float
    ce: float
    dice: float
    lr: float                       # the learning rate this step used
    logits: torch.Tensor


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train_step(forward: nn.Module, batch: dict[str, Any], opt: Optimisation, cfg: TrainConfig,
               device: torch.device, step: int) -> StepResult:
    """Forward, loss (cfg.loss: the paper's CE + Dice, or MedSAM's Dice + BCE + IoU MSE), backward,
    (clip,) optimiser and schedule step on one batch. With MedSAM's loss, StepResult.ce is its BCE,
    .dice its squared Dice and .loss the sum with the IoU term.

    `step` is the number of steps done before this one. A non-finite loss raises a DataError
    before the weights change, so no NaN reaches a checkpoint."""
    images = batch["image"].to(device, non_blocking=True)
    target = batch["target"].to(device, non_blocking=True)
    lr = opt.lr
    with autocast_for(device):
        iou_pred = None
        if cfg.prompt == "none":
            logits = forward(images)
        else:
            # box prompts and cached embeddings (frozen encoder) only when the batch has them
            extra = {name: batch[key].to(device, non_blocking=True)
                     for name, key in (("boxes", "boxes"), ("use_box", "use_box"), ("embeddings", "embedding"))
                     if key in batch}
            if cfg.loss == "medsam":
                extra["with_iou"] = True
            out = forward(images, batch["points"].to(device), batch["point_labels"].to(device), **extra)
            logits, iou_pred = out if cfg.loss == "medsam" else (out, None)
    if iou_pred is not None:
        loss, ce, dice, _ = medsam_loss(logits, iou_pred, target)
    else:
        loss, ce, dice = ce_dice_loss(logits.float(), target, cfg.ce_weight, cfg.dice_weight,
                                      dice_reduction=cfg.dice_reduction)
    if not math.isfinite(loss.item()):
        raise DataError(f"training diverged at step {step + 1} (loss {loss.item()}); "
                        "lower --lr or check the dataset")
    opt.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(opt.params, cfg.grad_clip)
    opt.optimizer.step()
    opt.scheduler.step()
    return StepResult(loss.item(), ce.item(), dice.item(), lr, logits)


# -- the metrics window ------------------------------------------------------------------------

class MetricsWindow:
    """Mean losses and throughput over the steps since the last metrics.jsonl record.

    A record is due at the first step of this invocation, every `log_every` steps and at the
    last step. Under DDP the sums are added over ranks (every rank must call :meth:`add`), so
    the means are over all ranks' batches."""

    def __init__(self, *, log_every: int, start_step: int, total_steps: int, start_sample: int,
                 n_train: int, global_batch: int, world: int = 1,
                 clock: Callable[[], float] = time.perf_counter):
        self.log_every, self.start_step, self.total_steps = log_every, start_step, total_steps
        self.start_sample, self.n_train = start_sample, n_train
        self.global_batch, self.world, self.clock = global_batch, world, clock
        self.sums = torch.zeros(4, dtype=torch.float64)  # loss, ce, dice sums, steps
        self.t0 = clock()
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        self.rate = 0.0

    def due(self, step: int) -> bool:
        return step == self.start_step + 1 or step % self.log_every == 0 or step == self.total_steps

    def add(self, step: int, loss: float, ce: float, dice: float, lr: float) -> dict | None:
        """Count step `step` (1-based); the metrics.jsonl record when one is due, else None."""
        self.sums += torch.tensor([loss, ce, dice, 1.0], dtype=torch.float64)
        if not self.due(step):
            return None
        sum_over_ranks(self.sums, self.world)  # steps sum to world * n
        now = self.clock()
        mean = (self.sums[:3] / self.sums[3]).tolist()
        self.rate = (self.sums[3].item() / self.world) * self.global_batch / max(now - self.t0, 1e-9)
        record = {"step": step, "loss": round(mean[0], 6), "ce": round(mean[1], 6),
                  "dice": round(mean[2], 6), "lr": lr, "samples_per_s": round(self.rate, 2),
                  "epoch": round(self.samples_seen(step) / self.n_train, 4)}
        if self.first_loss is None:
            self.first_loss = mean[0]
        self.last_loss = mean[0]
        self.sums.zero_()
        self.t0 = self.clock()
        return record

    def samples_seen(self, step: int) -> int:
        """The data position after `step` steps."""
        return self.start_sample + (step - self.start_step) * self.global_batch


# -- checkpoints -------------------------------------------------------------------------------

class Checkpointer:
    """Saves the run's checkpoints: periodic last.pt (every save_every_steps steps or
    save_every_minutes minutes; kill -9 or a power cut loses at most that much), kept
    step-NNNNNN.pt every checkpoint_every steps, and last.pt on demand (interrupt, error, end).
    Only trainable weights and their optimiser state are saved, so this is cheap for LoRA runs."""

    def __init__(self, out: Path, cfg: TrainConfig, dataset: dict, model: nn.Module, opt: Optimisation,
                 *, world: int, samples_seen: Callable[[int], int], start_step: int,
                 clock: Callable[[], float] = time.monotonic):
        self.out, self.cfg, self.dataset, self.model, self.opt = out, cfg, dataset, model, opt
        self.world, self.samples_seen, self.clock = world, samples_seen, clock
        self.saved_step = start_step        # the step last.pt holds
        self.saved_at = clock()

    @property
    def last(self) -> Path:
        return last_checkpoint(self.out)

    def save(self, step: int, path: Path | None = None) -> None:
        """Write the state after `step` steps to `path` (default last.pt)."""
        path = self.last if path is None else path
        save_checkpoint(path, step=step, samples_seen=self.samples_seen(step), config=self.cfg.to_dict(),
                        dataset=self.dataset, trainable=trainable_state_dict(self.model),
                        optimizer=self.opt.optimizer.state_dict(), scheduler=self.opt.scheduler.state_dict(),
                        world_size=self.world)
        if path == self.last:
            self.saved_step, self.saved_at = step, self.clock()

    def periodic_due(self, step: int) -> bool:
        if self.cfg.save_every_steps and step % self.cfg.save_every_steps == 0:
            return True
        return bool(self.cfg.save_every_minutes) and self.clock() - self.saved_at >= 60 * self.cfg.save_every_minutes

    def after_step(self, step: int, total_steps: int) -> None:
        """The saves due after `step` (the last step is saved by the caller at the end)."""
        if step == total_steps:
            return
        every = self.cfg.checkpoint_every
        if every and step % every == 0:
            self.save(step, self.out / CHECKPOINT_DIR / f"step-{step:06d}.pt")
            self.save(step)
        elif self.periodic_due(step):
            self.save(step)


# -- Ctrl-C and SIGTERM ------------------------------------------------------------------------

class StopRequest:
    """While active (``with``): Ctrl-C or SIGTERM is remembered in :attr:`signal_name` so the loop
    can finish its step, save last.pt and stop; a second signal stops at once (KeyboardInterrupt).

    Only for one process on the main thread (`enabled`); otherwise signals keep their handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signal_name: str | None = None
        self._previous: dict = {}

    def _on_signal(self, signum, _frame) -> None:
        if self.signal_name:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "StopRequest":
        if self.enabled:
            self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names and bytes (DDP debug: every rank must end equal)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()
