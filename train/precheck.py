"""Checks of arguments, paths and files that `train` runs BEFORE importing torch (torch-free module).

Why: importing torch and building a model take 5-10 s; a typo in a path should be answered at
once (issue 14: under 1.5 s). Each check raises the same one-line ``ConfigError`` / ``DataError``
the deeper code would, naming the flag and the file. The deeper code keeps its own checks (API
callers do not come through here).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from shared.errors import ConfigError, DataError
from shared.fileio import read_json

# The run-directory layout (train.checkpointing re-exports these; kept here so checks need no torch).
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def last_checkpoint_path(rundir: str | Path) -> Path:
    return Path(rundir) / CHECKPOINT_DIR / LAST


def is_url(location: str | Path) -> bool:
    """A remote dataset location (``https://``, ``s3://`` ...; shared.shards.remote reads those)."""
    text = str(location)
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text)) and not text.lower().startswith("file://")


def check_dataset_dir(path: str | Path, flag: str = "--shards") -> dict[str, Any] | None:
    """A dataset folder written by `synth build` / `synth pack`: returns its parsed dataset.json
    (None for a remote URL: shared.shards.remote checks it when it opens it)."""
    if is_url(path):
        return None
    if str(path).lower().startswith("file://"):
        path = str(path)[len("file://"):]
    path = Path(path)
    if not path.exists():
        raise DataError(f"{flag} {path}: dataset directory does not exist")
    if not path.is_dir():
        raise DataError(f"{flag} {path}: not a directory (give the folder `synth build --out` wrote)")
    manifest = path / "dataset.json"
    if not manifest.is_file():
        hint = ""
        subs = sorted(p.parent.name for p in path.glob("*/dataset.json"))
        if subs:
            hint = f"; did you mean {path / subs[0]}?"
        raise DataError(f"{flag} {path}: no dataset.json (not a `synth build` output folder){hint}")
    info = read_json(manifest, what="dataset manifest")
    if not isinstance(info, dict):
        raise DataError(f"{manifest}: not a dataset manifest (expected a JSON object)")
    if info.get("num_samples") == 0:
        raise DataError(f"{path}: dataset holds no samples")
    if not (path / "shards").is_dir():
        raise DataError(f"{flag} {path}: no shards/ folder next to dataset.json (incomplete copy?)")
    return info


def check_fit_out(out: str | Path, *, resume: bool, overwrite: bool) -> None:
    """`train fit --out`: refuse to clobber a run, need a checkpoint to resume (no side effects;
    the same rules and messages as train.fit.prepare_rundir / require_checkpoint)."""
    out = Path(out)
    last = last_checkpoint_path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    if resume:
        if not last.exists():
            if (out / METRICS_FILE).exists() or (out / CONFIG_FILE).exists():
                raise DataError(f"{out}: the run stopped before its first checkpoint, nothing to resume; "
                                f"start it again with --overwrite")
            raise DataError(f"{last}: no checkpoint to resume from")
        return
    if (last.exists() or (out / METRICS_FILE).exists()) and not overwrite:
        if last.exists():
            raise ConfigError(f"--out {out}: already holds a run; use --resume to continue it from its last "
                              "checkpoint or --overwrite to start over")
        raise ConfigError(f"--out {out}: holds a run that stopped before its first checkpoint; "
                          "use --overwrite to start it again")


def check_file(path: str | Path | None, flag: str, what: str = "file") -> None:
    if path is None:
        return
    path = Path(path)
    if not path.exists():
        raise DataError(f"{flag} {path}: {what} not found")
    if not path.is_file():
        raise DataError(f"{flag} {path}: not a file")


def check_run_dir(rundir: str | Path, checkpoint: str | Path | None = None) -> Path:
    """A `train fit` run folder (config.json + a checkpoint); returns the checkpoint path."""
    rundir = Path(rundir)
    if not rundir.is_dir():
        raise DataError(f"--run {rundir}: run directory not found")
    if not (rundir / CONFIG_FILE).is_file():
        raise DataError(f"--run {rundir}: not a `train fit` run directory (no {CONFIG_FILE})")
    ckpt = Path(checkpoint) if checkpoint is not None else last_checkpoint_path(rundir)
    if not ckpt.is_file():
        raise DataError(f"--run {rundir}: no checkpoint at {ckpt} (has `train fit` written one yet?)")
    return ckpt


def check_nifti_in(path: str | Path, flag: str = "--image") -> None:
    check_file(path, flag, "scan")
    if not str(path).endswith(NIFTI_SUFFIXES):
        raise DataError(f"{flag} {path}: expected a NIfTI file (*.nii.gz or *.nii)")


def check_nifti_out(out: str | Path, *, overwrite: bool) -> None:
    out = Path(out)
    if not str(out).endswith(NIFTI_SUFFIXES):
        raise ConfigError(f"--out {out}: give a NIfTI file name (*.nii.gz or *.nii)")
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a file name (*.nii.gz)")
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out}: exists (use --overwrite to replace it)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--out {out}: {parent} is a file, not a folder")
            break


def check_json_file(path: str | Path | None, flag: str) -> Any:
    """A JSON file that must exist and parse (its content is checked where it is used); returns
    the parsed content (None without a path)."""
    if path is None:
        return None
    check_file(path, flag)
    return read_json(path)


def check_fit_model(config_file: str | Path | None, model: str | None, checkpoint: str | Path | None) -> None:
    """`train fit`: a vit_* model needs an existing --checkpoint. The model and checkpoint are
    those :func:`train.config.resolve_values` resolves from the flags, the --config file and
    default.json (the torch-free part of ``resolve_config``)."""
    from train.config import resolve_values

    if config_file is not None:
        check_file(config_file, "--config")
    values = resolve_values(config_file, {"model": model,
                                          "checkpoint": None if checkpoint is None else str(checkpoint)})
    name, ckpt = values["model"], values.get("checkpoint")
    if name == "tiny" or name == "lite_medsam" and ckpt is None:   # random init / package weights
        return
    if ckpt is None:
        raise ConfigError(f"--model {name} needs --checkpoint (the official SAM weights, e.g. "
                          "sam_vit_b_01ec64.pth); --model tiny trains without one")
    check_file(ckpt, "--checkpoint", "SAM checkpoint")
