"""Run directories and training checkpoints (atomic writes, resume checks, loading a trained model).

A run directory (``train fit --out RUNDIR``)::

    RUNDIR/config.json            {"train": TrainConfig, "dataset": {...}, "model": {...}, ...}
    RUNDIR/metrics.jsonl          one JSON object per logged step
    RUNDIR/checkpoints/last.pt    the latest checkpoint (see :func:`save_checkpoint`): every
                                  save_every_steps steps / save_every_minutes minutes, on Ctrl-C,
                                  SIGTERM or an error in the loop, and at the end
    RUNDIR/checkpoints/step-000100.pt   with --checkpoint-every
    RUNDIR/summary.json           written when a fit finishes

Checkpoints hold only the trainable weights (LoRA, unfrozen heads; the whole model for `tiny`),
so evaluating needs the base SAM checkpoint named in the config as well.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch

from shared.errors import ConfigError, DataError
from shared.fileio import atomic_writer, read_json
from shared.shards.remote import is_remote

CHECKPOINT_FORMAT = "exemplar-sam-train/1"
# The run-folder layout lives in the torch-free train.precheck (checked before torch is imported).
from train.precheck import CHECKPOINT_DIR, CONFIG_FILE, LAST, METRICS_FILE, SUMMARY_FILE  # noqa: E402,F401

# Config fields a resumed run may not change (they change the model or what it learns from).
IDENTITY_FIELDS = ("model", "checkpoint", "img_size", "lora_rank", "trainable", "prompt", "seed")


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` through shared.fileio's atomic writer (a crash leaves the old file)."""
    with atomic_writer(path) as fh:
        torch.save(obj, fh)


def last_checkpoint(rundir: Path) -> Path:
    return Path(rundir) / CHECKPOINT_DIR / LAST


def dataset_identity(ds, shards_dir: str | Path) -> dict[str, Any]:
    """What a run records about its dataset (dataset.json summary + a content fingerprint).

    ``content_sha256`` hashes the shard sha256 list from dataset.json, so a rebuilt dataset with
    other samples is told apart even at the same path.
    """
    info = ds.info
    shard_hashes = [str(s.get("sha256", "")) for s in info.get("shards", [])]
    return {
        "path": shards_dir if is_remote(shards_dir) else str(Path(shards_dir).resolve()),
        "kind": info.get("kind"),
        "task": ds.task,
        "class_names": list(ds.class_names),
        "num_samples": len(ds),
        "num_shards": ds.num_shards,
        "source": info.get("source"),
        "fingerprint": info.get("fingerprint"),
        "seed": info.get("seed"),
        "build_id": getattr(ds, "generation", None),
        "content_sha256": hashlib.sha256("\n".join(shard_hashes).encode()).hexdigest(),
    }


def save_checkpoint(path: Path, *, step: int, samples_seen: int, config: dict, dataset: dict,
                    trainable: dict[str, torch.Tensor], optimizer: dict, scheduler: dict,
                    world_size: int, extra: dict | None = None) -> None:
    """Write a training checkpoint atomically (tmp file + os.replace).

    Contents: ``format``, ``step`` (optimizer steps done), ``samples_seen`` (the data position:
    stream positions consumed), ``config``, ``dataset`` (identity), ``trainable`` (state dict),
    ``optimizer``, ``scheduler``, ``world_size``, ``rng`` (torch CPU RNG state; training itself
    draws no global randomness, recorded for completeness).
    """
    obj = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "samples_seen": int(samples_seen),
        "config": config,
        "dataset": dataset,
        "trainable": {k: v.detach().to("cpu") for k, v in trainable.items()},
        "optimizer": optimizer,
        "scheduler": scheduler,
        "world_size": int(world_size),
        "rng": {"torch": torch.get_rng_state()},
        **(extra or {}),
    }
    atomic_torch_save(Path(path), obj)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint; one-line DataError if missing, unreadable or not ours."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {_first_sentence(exc)}); "
                        f"the file is damaged or not a `train fit` checkpoint") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path}: not a `train fit` checkpoint (format {CHECKPOINT_FORMAT} expected)")
    for key in ("step", "samples_seen", "config", "trainable", "optimizer", "scheduler"):
        if key not in obj:
            raise DataError(f"{path}: checkpoint lacks {key!r}")
    return obj


def check_resume_compatible(saved: dict, config: dict, dataset: dict, path: Path) -> None:
    """ConfigError/DataError (one line) when a resumed run would differ from the saved one."""
    from train.config import upgrade_config_dict

    was = upgrade_config_dict(saved["config"])   # runs saved before named trainable sets
    for name in IDENTITY_FIELDS:
        if name == "checkpoint" and _same_path(was.get(name), config.get(name)):
            continue
        if was.get(name) != config.get(name):
            raise ConfigError(f"{path}: cannot resume, {name} was {was.get(name)!r} "
                              f"and is now {config.get(name)!r}")
    old = saved.get("dataset") or {}
    for name in ("content_sha256", "num_samples", "class_names"):
        if old.get(name) != dataset.get(name):
            raise DataError(f"{path}: cannot resume, the dataset differs ({name}: was "
                            f"{_short(old.get(name))}, now {_short(dataset.get(name))}; run saved from "
                            f"{old.get('path')})")


def _same_path(a: str | None, b: str | None) -> bool:
    """Two recorded base-weight paths name the same file (runs before 2026-11-26 saved them as typed)."""
    if a is None or b is None:
        return a == b
    return Path(a).resolve() == Path(b).resolve()


def _first_sentence(exc: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception message (torch's are paragraphs), cut at a word if long."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    m = re.match(r"(.+?[.!?:])(\s|$)", text)
    if m:
        text = m.group(1).rstrip(":")
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) < 60 else s[:57] + "..."


def read_run_config(rundir: Path) -> dict[str, Any]:
    path = Path(rundir) / CONFIG_FILE
    if not path.exists():
        raise DataError(f"{path}: missing, {rundir} is not a `train fit` run directory")
    return read_json(path, what="run config")


def load_trained_model(rundir: str | Path, checkpoint: str | Path | None = None,
                       base_checkpoint: str | Path | None = None, device: str | torch.device = "cpu"):
    """Rebuild the trained PromptSAM of a run (eval / predict): base SAM + saved trainable weights.

    `checkpoint` defaults to RUNDIR/checkpoints/last.pt; `base_checkpoint` overrides the SAM
    weights path recorded in config.json (for vit_*; e.g. the run moved to another machine).
    Returns (model in eval mode, run config dict).
    """
    from train.config import config_from_dict
    from train.model import PromptSAM, load_trainable_state

    rundir = Path(rundir)
    run = read_run_config(rundir)
    cfg = config_from_dict(run["train"], str(rundir / CONFIG_FILE))
    ckpt_path = Path(checkpoint) if checkpoint is not None else last_checkpoint(rundir)
    saved = load_checkpoint(ckpt_path)
    base = base_checkpoint if base_checkpoint is not None else cfg.checkpoint
    if base_checkpoint is None and base is not None and not Path(base).is_file():
        raise DataError(f"{rundir}: the run was trained from base weights {base}, which are not there "
                        f"(moved, or another machine); pass --checkpoint PATH to say where they are")
    built = build_model(cfg, run["model"].get("num_classes"), base=base)
    load_trainable_state(built, saved["trainable"], str(ckpt_path))
    model = PromptSAM(built).to(device).eval()
    return model, run


def build_model(cfg, num_classes: int | None, base: str | Path | None = None):
    """The model a config trains, as a train.model.BuiltSam: base weights (or random init), then
    the named trainable set ``cfg.trainable`` (train.model.trainable; LoRA seeded from
    ``cfg.seed``), recorded in its ``lora`` / ``trainable`` facts."""
    from train.model import apply_trainable_set, build_sam

    built = build_sam(cfg.model, base if base is not None else cfg.checkpoint, cfg.img_size,
                      num_classes=num_classes, seed=cfg.seed)
    apply_trainable_set(built, cfg.trainable, rank=cfg.lora_rank, seed=cfg.seed)
    return built
