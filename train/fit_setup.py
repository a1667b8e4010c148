"""`train fit`, step 1: prepare the run (run folder, data, resume point, model, optimiser, config).

:func:`prepare_run` does it in order and returns a :class:`PreparedRun`; each part is its own
function so it can be called and tested alone. Only rank 0 touches the run folder.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from shared import open_dataset
from shared.cli_support import check_writable
from shared.errors import ConfigError, DataError
from shared.fileio import atomic_write_bytes, atomic_write_text
from train.checkpointing import (CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, build_model,
                                 check_resume_compatible, dataset_identity, last_checkpoint,
                                 load_checkpoint)
from train.config import AugmentConfig, TrainConfig
from train.data import foreground_samples
from train.devices import pick_device, set_threads
from train.distributed import DistInfo, barrier, in_process_group, wrap_for_training
from train.fit_steps import Optimisation, make_optimizer
from train.model.registry import MODEL_SPECS, input_resize
from train.model import BuiltSam, ParamCount, PromptSAM, count_parameters, describe_counts, load_trainable_state


# -- the run folder ----------------------------------------------------------------------------

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


def truncate_metrics(path: Path, step: int) -> None:
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
    atomic_write_bytes(path, "".join(line + "\n" for line in keep).encode())


def write_run_json(path: Path, obj: Any) -> None:
    """config.json / summary.json of a run: indented JSON, non-ASCII escaped (as always), atomic."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# -- the data ----------------------------------------------------------------------------------

@dataclass
class TrainingData:
    """The opened dataset and what training takes from it."""

    ds: Any                         # shared.ShardDataset
    class_names: list[str]
    identity: dict                  # train.checkpointing.dataset_identity
    num_classes: int | None         # promptless head size (None: point prompts)
    eligible: np.ndarray | None     # samples with foreground (prompted training), None: all
    n_train: int                    # samples in an epoch
    augment: AugmentConfig

    @property
    def skipped(self) -> int:
        return len(self.ds) - self.n_train


def safe_augment(cfg: TrainConfig, class_names: list[str]) -> AugmentConfig:
    """The augmentation a run applies: the configured one, except that promptless multi-class
    training never flips or rotates by 90 degrees (the class of an organ depends on its side:
    a flip would teach "left kidney" on the right). Prompted targets are binary, so flips are safe.
    A frozen encoder trains on embeddings computed once per sample: no augmentation at all.
    """
    if cfg.frozen_encoder:
        return AugmentConfig()
    if cfg.prompt == "none" and len(class_names) > 2 and (cfg.augment.flip_prob or cfg.augment.rot90_prob):
        return dataclasses.replace(cfg.augment, flip_prob=0.0, rot90_prob=0.0)
    return cfg.augment


def open_training_data(cfg: TrainConfig, shards: str | Path) -> TrainingData:
    """Open the dataset at `shards`; one-line DataError when it cannot be trained on."""
    ds = open_dataset(shards)
    if len(ds) == 0:
        raise DataError(f"{shards}: dataset holds no samples")
    class_names = list(ds.class_names)
    if len(class_names) < 2:
        raise DataError(f"{shards}/dataset.json: class_names must list background and at least one class")
    # Prompted training never clicks on a class that is absent: samples without foreground (at
    # the model size) are left out of the stream; promptless training keeps them (all background).
    eligible = (foreground_samples(ds, cfg.img_size, input_resize(cfg.model))
                if cfg.prompt != "none" else None)
    n_train = len(ds) if eligible is None else int(eligible.sum())
    if n_train == 0:
        raise DataError(f"{shards}: no sample holds foreground at {cfg.img_size} px, nothing to prompt "
                        "(prompted training needs labelled slices; --prompt none trains on any)")
    return TrainingData(ds, class_names, dataset_identity(ds, shards),
                        len(class_names) - 1 if cfg.prompt == "none" else None,
                        eligible, n_train, safe_augment(cfg, class_names))


# -- where the run starts ----------------------------------------------------------------------

@dataclass
class StartPoint:
    """Where training starts: a fresh run at 0, or the checkpoint it resumes from."""

    saved: dict | None              # the checkpoint resumed from
    step: int
    sample: int                     # data position (stream samples consumed)
    total_steps: int


def start_point(cfg: TrainConfig, out: Path, data: TrainingData, world: int, resume: bool) -> StartPoint:
    saved = None
    if resume:
        ck = last_checkpoint(out)
        saved = load_checkpoint(ck)
        check_resume_compatible(saved, cfg.to_dict(), data.identity, ck)
    step = int(saved["step"]) if saved else 0
    total = cfg.total_steps(data.n_train, world)
    if resume and total <= step:
        raise ConfigError(f"{last_checkpoint(out)}: the run is already at step {step}; "
                          f"give a larger --steps (got {total}) to continue")
    return StartPoint(saved, step, int(saved["samples_seen"]) if saved else 0, total)


# -- everything together -----------------------------------------------------------------------

@dataclass
class PreparedRun:
    """What the training loop needs, made by :func:`prepare_run`."""

    cfg: TrainConfig
    shards: str | Path
    out: Path
    di: DistInfo
    device: torch.device
    threads: int
    data: TrainingData
    start: StartPoint
    built: BuiltSam
    model: PromptSAM
    forward: nn.Module              # TrainForward, in DDP under torchrun
    opt: Optimisation
    params: ParamCount
    embeddings: Any = None          # train.embeddings.EmbeddingReport with a frozen encoder

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.di.world_size


def prepare_run(cfg: TrainConfig, shards: str | Path, out: Path, di: DistInfo, *, resume: bool,
                overwrite: bool, say: Callable[[str], None], embedding_cache: str | Path | None = None,
                progress: bool = True) -> PreparedRun:
    """Device and threads, data, run folder, resume point, model, optimiser; config.json written.

    With ``cfg.frozen_encoder`` the samples' image embeddings are computed first where missing
    (train.embeddings; `embedding_cache` or its default folder)."""
    device = pick_device(cfg.device, di.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    threads = set_threads(cfg.num_threads, device)
    data = open_training_data(cfg, shards)
    if di.is_main:
        prepare_rundir(out, resume=resume, overwrite=overwrite)
    barrier(di)
    start = start_point(cfg, out, data, di.world_size, resume)

    built = build_model(cfg, data.num_classes)
    model = PromptSAM(built, grad_checkpoint=cfg.grad_checkpointing)
    if start.saved:
        load_trainable_state(model, start.saved["trainable"], str(last_checkpoint(out)))
    model.to(device).train()
    report = None
    if cfg.frozen_encoder:
        report = prepare_embeddings(model, cfg, data, device, threads, embedding_cache, di, say, progress)
    opt = make_optimizer(model, cfg, start.saved, str(last_checkpoint(out)))
    run = PreparedRun(cfg, shards, out, di, device, threads, data, start, built, model,
                      wrap_for_training(model, cfg.prompt, device), opt, count_parameters(model), report)
    if di.is_main:
        write_run_json(out / CONFIG_FILE, run_config(run))
        announce(run, say)
    return run


def prepare_embeddings(model: PromptSAM, cfg: TrainConfig, data: TrainingData, device: torch.device, threads: int,
                       cache_dir: str | Path | None, di: DistInfo, say: Callable[[str], None],
                       progress: bool):
    """Every sample's image embedding in the cache (computed by the main process where missing,
    through the default CPU engine, train.model.engines.default_engine): the report of
    train.embeddings.build_embeddings."""
    from train.embeddings import EmbeddingCache, build_embeddings, check_frozen_encoder, default_cache_dir, encoder_key

    check_frozen_encoder(cfg)
    cache = EmbeddingCache(Path(cache_dir) if cache_dir is not None else default_cache_dir(), encoder_key(model))
    engine = _embedding_engine(model, device, threads)
    was_training = model.training
    model.eval()
    try:
        report = build_embeddings(data.ds, model, cache, engine=engine, progress=progress and di.is_main,
                                  say=say if di.is_main else None) if di.is_main else None
    finally:
        model.train(was_training)
    barrier(di)
    if report is None:   # other ranks: everything is cached now
        report = build_embeddings(data.ds, model, cache, engine=engine, progress=False)
    if di.is_main and report.computed:
        say(f"frozen encoder: {report.computed} embeddings in {report.seconds:.0f} s "
            f"({report.computed / max(report.seconds, 1e-9):.2f} samples/s), {report.bytes / 2**30:.2f} GiB "
            f"in {report.folder}")
    return report


def _embedding_engine(model: PromptSAM, device: torch.device, threads: int):
    """On CPU the default engine (OpenVINO, else ONNX Runtime; BENCHMARKS.md), on CUDA eager."""
    enc = model.sam.image_encoder
    if device.type == "cpu":
        from train.model.engines import default_engine, make_encoder_engine

        return make_encoder_engine(enc, default_engine(), img_size=model.img_size, num_threads=threads)

    def eager(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return enc(x.to(device)).float().cpu()
    return eager


def run_config(run: PreparedRun) -> dict[str, Any]:
    """RUNDIR/config.json: the resolved config, the dataset's identity, the model's facts."""
    cfg, data, world = run.cfg, run.data, run.di.world_size
    return {
        "train": cfg.to_dict(),
        "dataset": data.identity,
        "model": {"name": cfg.model, "img_size": cfg.img_size, "num_classes": data.num_classes,
                  "class_names": data.class_names, "prompt": cfg.prompt,
                  "trainable_params": run.params.trainable, "total_params": run.params.total,
                  "base_checkpoint": cfg.checkpoint, "base_weights": run.built.weights,
                  "input_contract": MODEL_SPECS[cfg.model].contract.to_dict(), "lora": run.built.lora,
                  "trainable": run.built.trainable or {}},
        "embeddings": None if run.embeddings is None else {
            "folder": str(run.embeddings.folder), "samples": len(run.data.ds),
            "computed_now": run.embeddings.computed, "bytes": run.embeddings.bytes,
            "seconds": round(run.embeddings.seconds, 1), "dtype": "float16"},
        "data": {"samples": len(data.ds), "trained_samples": data.n_train,
                 "skipped_without_foreground": data.skipped,
                 "augment": dataclasses.asdict(data.augment)},
        "world_size": world,
        "global_batch_size": cfg.batch_size * world,
        "total_steps": run.start.total_steps,
    }


def announce(run: PreparedRun, say: Callable[[str], None]) -> None:
    """The lines `train fit` prints before the first step."""
    cfg, data, ds, params = run.cfg, run.data, run.data.ds, run.params
    say(f"model {cfg.model} at {cfg.img_size}px, prompt {cfg.prompt}: "
        f"trainable parameters {params.trainable:,} ({100 * params.share:.2f}%) of {params.total:,}")
    say(f"trainable set {cfg.trainable}: {describe_counts((run.built.trainable or {}).get('counts', {}))}")
    names = data.class_names[1:]
    shown = ", ".join(names) if len(names) <= 16 else f"{', '.join(names[:3])} ... {names[-1]} ({len(names)})"
    say(f"dataset {run.shards}: {len(ds)} samples in {ds.num_shards} shard{'s' if ds.num_shards != 1 else ''}, "
        f"classes {shown}")
    if data.skipped:
        say(f"prompted training skips {data.skipped} of {len(ds)} samples without foreground "
            f"at {cfg.img_size}px; an epoch is {data.n_train} samples")
    if data.augment != cfg.augment:
        say("augment: off with --frozen-encoder (each sample's embedding is computed once)" if cfg.frozen_encoder
            else "augment: flips and 90-degree rotations off for promptless multi-class training "
                 "(they would swap left and right organs)")
    world, total = run.di.world_size, run.start.total_steps
    resumed = f", resuming at step {run.start.step}" if run.start.saved else ""
    ddp = f", DDP over {torch.distributed.get_backend()}" if in_process_group() else ""
    say(f"steps {total} at batch {cfg.batch_size} x {world} process(es) "
        f"(= {total * cfg.batch_size * world / data.n_train:.2f} epochs){resumed}; device {run.device}, "
        f"{run.threads} threads, {cfg.num_workers} loader workers{ddp}")
