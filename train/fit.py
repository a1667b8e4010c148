"""The training loop of `train fit`: LoRA-SAM (or the tiny model) on shard datasets.

One process, or DDP under torchrun (``WORLD_SIZE`` > 1: NCCL on GPUs, gloo on CPU). The data
order, the data position and the resume rules are described in :mod:`train.data` and
:mod:`train.checkpointing`. Only rank 0 writes files, except the per-rank debug record of
``log_sample_ids``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from shared.errors import ConfigError, DataError
from shared.cli_support import check_writable
from shared.remote import as_location
from train.checkpointing import (CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE,
                                 atomic_write_json, build_model, check_resume_compatible,
                                 dataset_identity, last_checkpoint, load_checkpoint,
                                 save_checkpoint)
from train.config import TrainConfig, config_from_dict
from train.data import ShardBatchStream, StreamSpec, batch_loader, foreground_samples


@dataclass
class FitResult:
    steps: int
    start_step: int
    first_loss: float | None
    final_loss: float | None
    seconds: float
    samples_per_s: float
    rundir: Path


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class TrainForward(nn.Module):
    """The module DDP wraps: one forward per prompt mode, returning logits."""

    def __init__(self, model: nn.Module, prompt: str):
        super().__init__()
        self.model = model
        self.prompt = prompt

    def forward(self, images: torch.Tensor, points: torch.Tensor | None = None,
                point_labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.prompt == "none":
            return self.model.forward_promptless(images)
        return self.model(images, points, point_labels)


def setup_distributed(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    # Under torchrun even one process joins a group (NCCL on a GPU) and trains through DDP: the
    # code path of N GPUs, checkable on a one-GPU machine (bench/gpu_check.py).
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return DistInfo()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local, initialised_here=True)


def pick_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device}: CUDA is not available on this machine")
    if cfg.device == "auto" or cfg.device == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(cfg.device)


def set_threads(cfg: TrainConfig, device: torch.device) -> int:
    """Intra-op threads: cfg.num_threads, or on CPU the CPUs available / processes on this node."""
    if cfg.num_threads > 0:
        n = cfg.num_threads
    elif device.type == "cpu":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    else:
        return torch.get_num_threads()
    torch.set_num_threads(n)
    return n


def prepare_rundir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber a run; create the directory (and check it is writable)."""
    last = last_checkpoint(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    for tmp in (out / CHECKPOINT_DIR).glob(".*.tmp-*") if out.is_dir() else ():
        tmp.unlink(missing_ok=True)  # a save cut short by kill -9 (last.pt itself is intact)
    if resume:
        require_checkpoint(out)
        check_writable(out)
        return
    if last.exists() or (out / METRICS_FILE).exists():
        if not overwrite:
            if last.exists():
                raise ConfigError(f"--out {out}: already holds a run; use --resume to continue it from its last "
                                  "checkpoint or --overwrite to start over")
            raise ConfigError(f"--out {out}: holds a run that stopped before its first checkpoint; "
                              "use --overwrite to start it again")
        for p in (out / METRICS_FILE, out / SUMMARY_FILE):
            if p.exists():
                p.unlink()
        ckdir = out / CHECKPOINT_DIR
        if ckdir.is_dir():
            for p in ckdir.glob("*.pt"):
                p.unlink()
    check_writable(out)


def require_checkpoint(out: Path) -> Path:
    """checkpoints/last.pt of a run to resume, or a DataError that says what to do instead."""
    last = last_checkpoint(out)
    if not last.exists():
        if (out / METRICS_FILE).exists() or (out / CONFIG_FILE).exists():
            raise DataError(f"{out}: the run stopped before its first checkpoint, nothing to resume; "
                            f"start it again with --overwrite")
        raise DataError(f"{last}: no checkpoint to resume from")
    return last


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after the checkpoint a run resumes from (they will be logged again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    from train.checkpointing import atomic_write_bytes

    atomic_write_bytes(path, "".join(line + "\n" for line in keep).encode())


def _weights_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def _safe_augment(cfg: TrainConfig, class_names: list[str]):
    """The augmentation a run applies: the configured one, except that promptless multi-class
    training never flips or rotates by 90 degrees (the class of an organ depends on its side:
    a flip would teach "left kidney" on the right). Prompted targets are binary, so flips are safe.
    """
    if cfg.prompt == "none" and len(class_names) > 2 and (cfg.augment.flip_prob or cfg.augment.rot90_prob):
        return dataclasses.replace(cfg.augment, flip_prob=0.0, rot90_prob=0.0)
    return cfg.augment


def fit(cfg: TrainConfig, shards: str | Path, out: str | Path, *, resume: bool = False,
        overwrite: bool = False, log_sample_ids: bool = False, progress: bool = True,
        echo: Callable[[str], None] = print, tensorboard: bool = False,
        tensorboard_images_every: int = 100) -> FitResult:
    """Train per `cfg` on the dataset at `shards` (a folder or an fsspec URL), writing the run to
    `out`. See the module doc. `tensorboard`: also write RUNDIR/tensorboard (train.tensorboard),
    prediction pictures every `tensorboard_images_every` steps.

    With `resume`, `cfg` must equal the saved config in its identity fields
    (:data:`train.checkpointing.IDENTITY_FIELDS`); steps/epochs and runtime knobs may change.
    """
    from shared import open_dataset
    from train.losses import ce_dice_loss
    from train.model import PromptSAM, count_parameters, load_trainable_state, trainable_state_dict

    if cfg.steps is None and cfg.epochs is None:
        raise ConfigError("give --steps N or --epochs N")
    out = Path(out)
    shards = as_location(shards)   # a URL stays a string (shared.remote)
    device_kind = "cuda" if (cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())) else "cpu"
    dist_info = setup_distributed(device_kind)
    threads_before = torch.get_num_threads()  # set_threads changes a process-wide setting
    try:
        return _fit(cfg, shards, out, dist_info, resume=resume, overwrite=overwrite,
                    log_sample_ids=log_sample_ids, progress=progress, echo=echo,
                    tensorboard=tensorboard, tensorboard_images_every=tensorboard_images_every,
                    open_dataset=open_dataset, ce_dice_loss=ce_dice_loss, PromptSAM=PromptSAM,
                    count_parameters=count_parameters, load_trainable_state=load_trainable_state,
                    trainable_state_dict=trainable_state_dict)
    finally:
        torch.set_num_threads(threads_before)
        if dist_info.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _fit(cfg: TrainConfig, shards: str | Path, out: Path, di: DistInfo, *, resume: bool, overwrite: bool,
         log_sample_ids: bool, progress: bool, echo: Callable[[str], None], tensorboard: bool,
         tensorboard_images_every: int, open_dataset,
         ce_dice_loss, PromptSAM, count_parameters, load_trainable_state,
         trainable_state_dict) -> FitResult:
    import torch.distributed as dist

    say = echo if di.is_main else (lambda _msg: None)
    device = pick_device(cfg, di.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    threads = set_threads(cfg, device)

    # -- data ----------------------------------------------------------------------------------
    ds = open_dataset(shards)
    if len(ds) == 0:
        raise DataError(f"{shards}: dataset holds no samples")
    class_names = list(ds.class_names)
    if len(class_names) < 2:
        raise DataError(f"{shards}/dataset.json: class_names must list background and at least one class")
    identity = dataset_identity(ds, shards)
    num_classes = len(class_names) - 1 if cfg.prompt == "none" else None
    # Prompted training never clicks on a class that is absent: samples without foreground (at
    # the model size) are left out of the stream; promptless training keeps them (all background).
    eligible = foreground_samples(ds, cfg.img_size) if cfg.prompt == "point" else None
    n_train = len(ds) if eligible is None else int(eligible.sum())
    if n_train == 0:
        raise DataError(f"{shards}: no sample holds foreground at {cfg.img_size} px, nothing to prompt "
                        "(prompted training needs labelled slices; --prompt none trains on any)")
    augment = _safe_augment(cfg, class_names)

    # -- run directory, resume -----------------------------------------------------------------
    saved = None
    if di.is_main:
        prepare_rundir(out, resume=resume, overwrite=overwrite)
    if di.world_size > 1:
        dist.barrier()
    if resume:
        ck = last_checkpoint(out)
        saved = load_checkpoint(ck)
        check_resume_compatible(saved, cfg.to_dict(), identity, ck)
    start_step = int(saved["step"]) if saved else 0
    start_sample = int(saved["samples_seen"]) if saved else 0
    world = di.world_size
    total_steps = cfg.total_steps(n_train, world)
    if resume and total_steps <= start_step:
        raise ConfigError(f"{last_checkpoint(out)}: the run is already at step {start_step}; "
                          f"give a larger --steps (got {total_steps}) to continue")

    # -- model ---------------------------------------------------------------------------------
    sam = build_model(cfg, num_classes)
    model = PromptSAM(sam, grad_checkpoint=cfg.grad_checkpointing)
    if saved:
        load_trainable_state(model, saved["trainable"], str(last_checkpoint(out)))
    model.to(device).train()
    params = count_parameters(model)
    trainable_info = getattr(getattr(sam, "exemplar", None), "trainable", None) or {}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=tuple(cfg.betas),
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.lr_factor)
    if saved:
        try:
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise DataError(f"{last_checkpoint(out)}: optimizer state does not fit this model ({exc})") from None
    forward: nn.Module = TrainForward(model, cfg.prompt)
    ddp = dist.is_available() and dist.is_initialized()
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # find_unused_parameters: the IoU head and box/mask prompt embeddings get no gradient.
        forward = DDP(forward, device_ids=[device.index] if device.type == "cuda" else None,
                      find_unused_parameters=True)

    run_config = {
        "train": cfg.to_dict(),
        "dataset": identity,
        "model": {"name": cfg.model, "img_size": cfg.img_size, "num_classes": num_classes,
                  "class_names": class_names, "prompt": cfg.prompt,
                  "trainable_params": params.trainable, "total_params": params.total,
                  "base_checkpoint": cfg.checkpoint,
                  "lora": getattr(getattr(sam, "exemplar", None), "lora", None),
                  "trainable": trainable_info},
        "data": {"samples": len(ds), "trained_samples": n_train,
                 "skipped_without_foreground": len(ds) - n_train,
                 "augment": dataclasses.asdict(augment)},
        "world_size": world,
        "global_batch_size": cfg.batch_size * world,
        "total_steps": total_steps,
    }
    if di.is_main:
        atomic_write_json(out / CONFIG_FILE, run_config)
        from train.model import describe_counts

        say(f"model {cfg.model} at {cfg.img_size}px, prompt {cfg.prompt}: "
            f"trainable parameters {params.trainable:,} ({100 * params.share:.2f}%) of {params.total:,}")
        say(f"trainable set {cfg.trainable}: {describe_counts(trainable_info.get('counts', {}))}")
        names = class_names[1:]
        shown = ", ".join(names) if len(names) <= 16 else f"{', '.join(names[:3])} ... {names[-1]} ({len(names)})"
        say(f"dataset {shards}: {len(ds)} samples in {ds.num_shards} shard{'s' if ds.num_shards != 1 else ''}, "
            f"classes {shown}")
        if n_train != len(ds):
            say(f"prompted training skips {len(ds) - n_train} of {len(ds)} samples without foreground "
                f"at {cfg.img_size}px; an epoch is {n_train} samples")
        if augment != cfg.augment:
            say("augment: flips and 90-degree rotations off for promptless multi-class training "
                "(they would swap left and right organs)")
        resumed = f", resuming at step {start_step}" if saved else ""
        say(f"steps {total_steps} at batch {cfg.batch_size} x {world} process(es) "
            f"(= {total_steps * cfg.batch_size * world / n_train:.2f} epochs){resumed}; device {device}, "
            f"{threads} threads, {cfg.num_workers} loader workers"
            + (f", DDP over {dist.get_backend()}" if ddp else ""))

    # -- data stream from the saved position ---------------------------------------------------
    stream = ShardBatchStream(StreamSpec(
        shards=str(shards), img_size=cfg.img_size, batch_size=cfg.batch_size, seed=cfg.seed,
        prompt=cfg.prompt, augment=augment, block_shards=cfg.shuffle_block_shards,
        start_sample=start_sample, num_batches=total_steps - start_step,
        rank=di.rank, world_size=world, eligible=eligible))
    batches = batch_loader(stream, cfg.num_workers, cfg.prefetch_factor,
                           pin_memory=device.type == "cuda")

    if di.is_main and resume:
        _truncate_metrics(out / METRICS_FILE, start_step)
    metrics_file = open(out / METRICS_FILE, "a") if di.is_main else None
    board = None
    if tensorboard and di.is_main:
        from train.tensorboard import TrainBoard

        board = TrainBoard(out, start_step=start_step, images_every=tensorboard_images_every)
    ids_file = None
    if log_sample_ids:
        (out / "debug").mkdir(parents=True, exist_ok=True)
        ids_file = open(out / "debug" / f"samples-rank{di.rank}.jsonl", "a")
    bar = None
    if di.is_main and progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=start_step, desc="fit", unit="step", dynamic_ncols=True)

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    step = start_step
    global_batch = cfg.batch_size * world
    window = torch.zeros(4, dtype=torch.float64)  # loss, ce, dice sums, steps
    window_t0 = time.perf_counter()
    t_start = window_t0
    first_loss: float | None = None
    last_loss: float | None = None
    last_rate = 0.0

    saved_step = start_step  # the step last.pt holds
    saved_at = time.monotonic()

    def checkpoint(path: Path) -> None:
        nonlocal saved_step, saved_at
        save_checkpoint(path, step=step, samples_seen=start_sample + (step - start_step) * global_batch,
                        config=cfg.to_dict(), dataset=identity, trainable=trainable_state_dict(model),
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        world_size=world)
        if path == last_checkpoint(out):
            saved_step, saved_at = step, time.monotonic()

    def save_due() -> bool:
        """Periodic last.pt (kill -9 or a power cut loses at most this much): every
        save_every_steps steps or save_every_minutes minutes. Only trainable weights and their
        optimizer state are saved, so this is cheap for LoRA runs."""
        if cfg.save_every_steps and step % cfg.save_every_steps == 0:
            return True
        return bool(cfg.save_every_minutes) and time.monotonic() - saved_at >= 60 * cfg.save_every_minutes

    # Ctrl-C or SIGTERM (one process): finish the current step, save last.pt, then stop.
    interrupted: str | None = None
    restore_signals = lambda: None  # noqa: E731
    if world == 1 and threading.current_thread() is threading.main_thread():
        def on_signal(signum, _frame):
            nonlocal interrupted
            if interrupted:            # a second signal stops at once
                raise KeyboardInterrupt
            interrupted = signal.Signals(signum).name

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        restore_signals = lambda: [signal.signal(s, h) for s, h in previous.items()]  # noqa: E731

    try:
        for batch in batches:
            images = batch["image"].to(device, non_blocking=True)
            target = batch["target"].to(device, non_blocking=True)
            lr = scheduler.get_last_lr()[0]
            with autocast:
                if cfg.prompt == "none":
                    logits = forward(images)
                else:
                    logits = forward(images, batch["points"].to(device), batch["point_labels"].to(device))
            loss, ce, dice = ce_dice_loss(logits.float(), target, cfg.ce_weight, cfg.dice_weight,
                                          dice_reduction=cfg.dice_reduction)
            if not math.isfinite(loss.item()):  # before the step: no NaN reaches a checkpoint
                raise DataError(f"training diverged at step {step + 1} (loss {loss.item()}); "
                                "lower --lr or check the dataset")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            window += torch.tensor([loss.item(), ce.item(), dice.item(), 1.0], dtype=torch.float64)
            if ids_file is not None:
                ids_file.write(json.dumps({"step": step, "ids": batch["ids"],
                                           "positions": batch["position"].tolist()}) + "\n")
            if step == start_step + 1 or step % cfg.log_every == 0 or step == total_steps:
                if world > 1:
                    dist.all_reduce(window)  # sums over ranks; steps sum to world * n
                now = time.perf_counter()
                mean = (window[:3] / window[3]).tolist()
                last_rate = (window[3].item() / world) * global_batch / max(now - window_t0, 1e-9)
                record = {"step": step, "loss": round(mean[0], 6), "ce": round(mean[1], 6),
                          "dice": round(mean[2], 6), "lr": lr, "samples_per_s": round(last_rate, 2),
                          "epoch": round((start_sample + (step - start_step) * global_batch) / n_train, 4)}
                if first_loss is None:
                    first_loss = mean[0]
                last_loss = mean[0]
                if metrics_file is not None:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                if board is not None:
                    board.record(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{mean[0]:.4f}", lr=f"{lr:.2e}", samples_s=f"{last_rate:.1f}")
                window.zero_()
                window_t0 = time.perf_counter()
            if board is not None and board.wants_images(step, step == total_steps):
                board.predictions(step, batch, logits)
            if bar is not None:
                bar.update(1)
            if di.is_main and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != total_steps:
                checkpoint(out / CHECKPOINT_DIR / f"step-{step:06d}.pt")
                checkpoint(last_checkpoint(out))
            elif di.is_main and step != total_steps and save_due():
                checkpoint(last_checkpoint(out))
            if interrupted:
                checkpoint(last_checkpoint(out))
                by = " by SIGTERM" if interrupted == "SIGTERM" else ""
                say(f"\ninterrupted{by}: saved step {step} to {last_checkpoint(out)}; continue with --resume")
                raise KeyboardInterrupt
    except Exception:
        # A corrupt sample, out of memory, a diverged loss ...: the steps done so far are intact
        # (the failing step never reached optimizer.step), keep them for --resume.
        if di.is_main and step > saved_step:
            try:
                checkpoint(last_checkpoint(out))
                say(f"\nstopped by an error: saved step {step} to {last_checkpoint(out)}; "
                    "fix the cause and continue with --resume")
            except Exception:
                pass  # the original error is the one to report
        raise
    finally:
        restore_signals()
        ds.close()  # lets go of the dataset folder's reader lock (a rebuild may start now)
        if bar is not None:
            bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if board is not None:
            board.close()
        if ids_file is not None:
            ids_file.close()

    if step != total_steps:
        raise DataError(f"{shards}: the data stream ended at step {step} of {total_steps}")
    seconds = time.perf_counter() - t_start
    samples_per_s = (step - start_step) * global_batch / max(seconds, 1e-9)
    if log_sample_ids:
        atomic_write_json(out / "debug" / f"weights-rank{di.rank}.json",
                          {"rank": di.rank, "step": step, "sha256": _weights_digest(trainable_state_dict(model))})
    if di.is_main:
        checkpoint(last_checkpoint(out))
        atomic_write_json(out / SUMMARY_FILE, {
            "steps": step, "start_step": start_step, "first_loss": first_loss, "final_loss": last_loss,
            "seconds": round(seconds, 3), "samples_per_s": round(samples_per_s, 2),
            "world_size": world, "trainable_params": params.trainable, "total_params": params.total,
            "skipped_without_foreground": len(ds) - n_train})
    if world > 1:
        dist.barrier()
    return FitResult(step, start_step, first_loss, last_loss, seconds, samples_per_s, out)


def resume_config(rundir: str | Path, overrides: dict[str, Any]) -> TrainConfig:
    """The config of a resumed run: the saved one with the given flag values applied.

    Raises ConfigError when a flag would change an identity field (model, img_size, prompt, ...).
    """
    from train.checkpointing import IDENTITY_FIELDS

    from train.config import upgrade_config_dict

    ck = load_checkpoint(require_checkpoint(Path(rundir)))
    values = upgrade_config_dict(ck["config"])
    for key, value in overrides.items():
        if value is None:
            continue
        if key in IDENTITY_FIELDS and values.get(key) != value:
            raise ConfigError(f"--resume: {key} is {values.get(key)!r} in {rundir}, cannot change it to {value!r}")
        values[key] = value
    if overrides.get("steps") is not None:
        values["epochs"] = None
    elif overrides.get("epochs") is not None:
        values["steps"] = None
    return config_from_dict(values, f"{last_checkpoint(Path(rundir))} config")
