"""The training loop of `train fit`: LoRA-SAM (or the tiny model) on shard datasets.

One process, or DDP under torchrun (``WORLD_SIZE`` > 1: NCCL on GPUs, gloo on CPU). The data
order, the data position and the resume rules are described in :mod:`train.data` and
:mod:`train.checkpointing`. Only rank 0 writes files, except the per-rank debug record of
``log_sample_ids``.

:func:`fit` is a short sequence of named steps: :func:`train.fit_setup.prepare_run` (device, data,
run folder, resume point, model, optimiser, config.json), then for every batch
:func:`train.fit_steps.train_step`, the :class:`~train.fit_steps.MetricsWindow`, the
:class:`~train.fit_steps.Checkpointer` and the :class:`~train.fit_steps.StopRequest` of Ctrl-C,
then the final checkpoint and summary.json.
"""
from __future__ import annotations

import json
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator

import torch
from tqdm import tqdm

from shared.errors import ConfigError, DataError
from shared.shards.remote import as_location
from train.checkpointing import IDENTITY_FIELDS, METRICS_FILE, SUMMARY_FILE, last_checkpoint, load_checkpoint
from train.config import TrainConfig, config_from_dict, upgrade_config_dict
from train.data import ShardBatchStream, StreamSpec, batch_loader
from train.devices import describe_device, device_kind
from train.distributed import barrier, setup_distributed
from train.fit_setup import (PreparedRun, prepare_run, require_checkpoint, truncate_metrics,
                             write_run_json)
from train.fit_steps import Checkpointer, MetricsWindow, StopRequest, train_step, weights_digest
from train.model import trainable_state_dict
from train.embeddings import embedding_shape
from train.model.registry import input_resize
from train.tensorboard import TrainBoard


@dataclass
class FitResult:
    steps: int
    start_step: int
    first_loss: float | None
    final_loss: float | None
    seconds: float
    samples_per_s: float
    rundir: Path


def fit(cfg: TrainConfig, shards: str | Path, out: str | Path, *, resume: bool = False,
        overwrite: bool = False, log_sample_ids: bool = False, progress: bool = True,
        echo: Callable[[str], None] = print, tensorboard: bool = False,
        tensorboard_images_every: int = 100, embedding_cache: str | Path | None = None) -> FitResult:
    """Train per `cfg` on the dataset at `shards` (a folder or an fsspec URL), writing the run to
    `out`. See the module doc. `tensorboard`: also write RUNDIR/tensorboard (train.tensorboard),
    prediction pictures every `tensorboard_images_every` steps. `embedding_cache`: the folder of
    the frozen encoder's embeddings (``cfg.frozen_encoder``; default train.embeddings.default_cache_dir).

    With `resume`, `cfg` must equal the saved config in its identity fields
    (:data:`train.checkpointing.IDENTITY_FIELDS`); steps/epochs and runtime knobs may change.
    """
    if cfg.steps is None and cfg.epochs is None:
        raise ConfigError("give --steps N or --epochs N")
    out = Path(out)
    shards = as_location(shards)   # a URL stays a string (shared.shards.remote)
    di = setup_distributed(device_kind(cfg.device))
    threads_before = torch.get_num_threads()  # prepare_run changes a process-wide setting
    say = echo if di.is_main else (lambda _msg: None)
    try:
        run = prepare_run(cfg, shards, out, di, resume=resume, overwrite=overwrite, say=say,
                          embedding_cache=embedding_cache, progress=progress)
        logs = FitLogs(run, resume=resume, log_sample_ids=log_sample_ids, progress=progress,
                       tensorboard=tensorboard, tensorboard_images_every=tensorboard_images_every)
        window = MetricsWindow(log_every=cfg.log_every, start_step=run.start.step,
                               total_steps=run.start.total_steps, start_sample=run.start.sample,
                               n_train=run.data.n_train, global_batch=run.global_batch, world=di.world_size)
        ckpt = Checkpointer(out, cfg, run.data.identity, run.model, run.opt, world=di.world_size,
                            samples_seen=window.samples_seen, start_step=run.start.step)
        t_start = window.t0
        step = train_loop(run, logs, window, ckpt, say)
        return finish(run, step, window, ckpt, time.perf_counter() - t_start, log_sample_ids)
    finally:
        torch.set_num_threads(threads_before)
        if di.initialised_here:
            torch.distributed.destroy_process_group()


def batches_of(run: PreparedRun) -> Generator[dict[str, Any], None, None]:
    """The run's data stream from its start point (train.data)."""
    cfg, start = run.cfg, run.start
    stream = ShardBatchStream(StreamSpec(
        shards=str(run.shards), img_size=cfg.img_size, batch_size=cfg.batch_size, seed=cfg.seed,
        prompt=cfg.prompt, box_jitter=cfg.box_jitter, resize=input_resize(cfg.model),
        augment=run.data.augment, block_shards=cfg.shuffle_block_shards,
        start_sample=start.sample, num_batches=start.total_steps - start.step,
        rank=run.di.rank, world_size=run.di.world_size, eligible=run.data.eligible,
        embeddings=None if run.embeddings is None else str(run.embeddings.folder),
        embedding_shape=None if run.embeddings is None else embedding_shape(run.model)))
    return batch_loader(stream, cfg.num_workers, cfg.prefetch_factor, pin_memory=run.device.type == "cuda")


class FitLogs:
    """Where a run reports as it trains: metrics.jsonl, TensorBoard, the per-rank sample ids
    (debug) and the progress bar. Rank 0 writes all but the sample ids."""

    def __init__(self, run: PreparedRun, *, resume: bool, log_sample_ids: bool, progress: bool,
                 tensorboard: bool, tensorboard_images_every: int):
        main, out, start = run.di.is_main, run.out, run.start
        self.total_steps = start.total_steps
        if main and resume:
            truncate_metrics(out / METRICS_FILE, start.step)
        self.metrics = open(out / METRICS_FILE, "a") if main else None
        self.board = (TrainBoard(out, start_step=start.step, images_every=tensorboard_images_every)
                      if tensorboard and main else None)
        self.ids = None
        if log_sample_ids:
            (out / "debug").mkdir(parents=True, exist_ok=True)
            self.ids = open(out / "debug" / f"samples-rank{run.di.rank}.jsonl", "a")
        self.bar = (tqdm(total=start.total_steps, initial=start.step, desc="fit", unit="step", dynamic_ncols=True)
                    if main and progress else None)

    def sample_ids(self, step: int, batch: dict[str, Any]) -> None:
        if self.ids is not None:
            self.ids.write(json.dumps({"step": step, "ids": batch["ids"],
                                       "positions": batch["position"].tolist()}) + "\n")

    def record(self, record: dict, rate: float) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()
        if self.board is not None:
            self.board.record(record)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", samples_s=f"{rate:.1f}")

    def after_step(self, step: int, batch: dict[str, Any], logits: torch.Tensor) -> None:
        if self.board is not None and self.board.wants_images(step, step == self.total_steps):
            self.board.predictions(step, batch, logits)
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        for thing in (self.bar, self.metrics, self.board, self.ids):
            if thing is not None:
                thing.close()


def train_loop(run: PreparedRun, logs: FitLogs, window: MetricsWindow, ckpt: Checkpointer,
               say: Callable[[str], None]) -> int:
    """Train from the start point to the end of the data stream; returns the steps done.

    On Ctrl-C / SIGTERM the current step finishes and last.pt is saved; on an error (a corrupt
    sample, out of memory, a diverged loss ...) the steps done so far are saved for --resume (the
    failing step never reached the optimiser)."""
    main, total = run.di.is_main, run.start.total_steps
    step = run.start.step
    try:
        with StopRequest(enabled=run.di.world_size == 1) as stop, closing(batches_of(run)) as batches:
            for batch in batches:  # closing(): the prefetch thread ends here, not at garbage collection
                result = train_step(run.forward, batch, run.opt, run.cfg, run.device, step)
                step += 1
                logs.sample_ids(step, batch)
                record = window.add(step, result.loss, result.ce, result.dice, result.lr)
                if record is not None:
                    logs.record(record, window.rate)
                logs.after_step(step, batch, result.logits)
                if main:
                    ckpt.after_step(step, total)
                if stop.signal_name:
                    ckpt.save(step)
                    by = " by SIGTERM" if stop.signal_name == "SIGTERM" else ""
                    say(f"\ninterrupted{by}: saved step {step} to {ckpt.last}; continue with --resume")
                    raise KeyboardInterrupt
    except Exception:
        if main and step > ckpt.saved_step:
            try:
                ckpt.save(step)
                say(f"\nstopped by an error: saved step {step} to {ckpt.last}; "
                    "fix the cause and continue with --resume")
            except Exception:
                pass  # the original error is the one to report
        raise
    finally:
        run.data.ds.close()  # lets go of the dataset folder's reader lock (a rebuild may start now)
        logs.close()
    return step


def finish(run: PreparedRun, step: int, window: MetricsWindow, ckpt: Checkpointer, seconds: float,
           log_sample_ids: bool) -> FitResult:
    """After the loop: the final last.pt and summary.json (rank 0), the debug weight hash."""
    di, start = run.di, run.start
    if step != start.total_steps:
        raise DataError(f"{run.shards}: the data stream ended at step {step} of {start.total_steps}")
    samples_per_s = (step - start.step) * run.global_batch / max(seconds, 1e-9)
    if log_sample_ids:
        write_run_json(run.out / "debug" / f"weights-rank{di.rank}.json",
                       {"rank": di.rank, "step": step, "sha256": weights_digest(trainable_state_dict(run.model))})
    if di.is_main:
        ckpt.save(step)
        write_run_json(run.out / SUMMARY_FILE, {
            "steps": step, "start_step": start.step, "first_loss": window.first_loss,
            "final_loss": window.last_loss, "seconds": round(seconds, 3),
            "samples_per_s": round(samples_per_s, 2), "world_size": di.world_size,
            "trainable_params": run.params.trainable, "total_params": run.params.total,
            "skipped_without_foreground": run.data.skipped,
            "device": str(run.device), "device_name": describe_device(run.device), "threads": run.threads})
    barrier(di)
    return FitResult(step, start.step, window.first_loss, window.last_loss, seconds, samples_per_s, run.out)


def resume_config(rundir: str | Path, overrides: dict[str, Any]) -> TrainConfig:
    """The config of a resumed run: the saved one with the given flag values applied.

    Raises ConfigError when a flag would change an identity field (model, img_size, prompt, ...).
    """
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
