"""Test helpers for `train eval` / `train predict`: an untrained tiny run in `train fit`'s layout,
and packed test volumes (via `synth pack` when it exists, else shared.shards directly)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def make_tiny_run(rundir: Path, source, *, img_size: int = 64, prompt: str = "point", seed: int = 3) -> Path:
    """A run directory as `train fit` writes it (config.json + checkpoints/last.pt), not trained.

    Built with the fit helper's own `build_model` / `save_checkpoint`, so eval and predict load it
    through exactly the code path of a real run.
    """
    from shared.fileio import atomic_write_json
    from train.checkpointing import CONFIG_FILE, build_model, last_checkpoint, save_checkpoint
    from train.config import resolve_config
    from train.model import PromptSAM, trainable_state_dict

    cfg = resolve_config(overrides={"model": "tiny", "img_size": img_size, "prompt": prompt, "seed": seed})
    class_names = list(source.class_names)
    num_classes = len(class_names) - 1 if prompt == "none" else None
    built = build_model(cfg, num_classes)
    dataset = {"path": None, "kind": "synthesized", "task": source.task, "class_names": class_names,
               "source": source.describe()}
    rundir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(rundir / CONFIG_FILE, {
        "train": cfg.to_dict(), "dataset": dataset,
        "model": {"name": "tiny", "img_size": img_size, "num_classes": num_classes,
                  "class_names": class_names, "prompt": prompt}})
    save_checkpoint(last_checkpoint(rundir), step=0, samples_seen=0, config=cfg.to_dict(), dataset=dataset,
                    trainable=trainable_state_dict(PromptSAM(built)), optimizer={}, scheduler={}, world_size=1)
    return rundir


def pack_volumes(out: Path, dataset: str, root, split: str = "all") -> Path:
    """Packed test volumes of a source split, as float32 (what `synth pack` writes)."""
    if importlib.util.find_spec("synth.commands.build_cmd") is not None:
        cmd = [sys.executable, "-m", "synth", "pack", "--dataset", dataset, "--split", split, "--out", str(out)]
        if root is not None:
            cmd += ["--root", str(root)]
        proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True)
        if proc.returncode == 0:
            return out
        if "No such command" not in proc.stderr:
            raise AssertionError(f"synth pack failed: {proc.stderr}")
    return _pack_with_shards(out, dataset, root, split)


def _pack_with_shards(out: Path, dataset: str, root, split: str) -> Path:
    from shared.manifest import write_dataset
    from shared.shards import shard_relpath, write_shard
    from shared.sources import open_source
    from shared.splits import resolve_split

    source = open_source(dataset, root)
    images, labels, volumes, records = [], [], [], []
    for vid in resolve_split(source, split):
        vol = source.load(vid)
        start = len(images)
        for k in range(vol.num_slices):
            images.append(vol.image[k])
            labels.append(vol.label[k])
            records.append({"id": f"{vid}/{k:03d}", "shard": 0, "index": len(records), "volume": vid, "slice": k})
        volumes.append({"id": vid, "start": start, "count": vol.num_slices, "slices": list(range(vol.num_slices)),
                        "spacing": list(vol.spacing), "affine": np.asarray(vol.affine).tolist(),
                        "shape": list(vol.image.shape)})
    out.mkdir(parents=True)
    res = write_shard(out / shard_relpath(0, "zarr"), images, labels, image_dtype="float32")
    info = {"schema_version": 1, "kind": "volumes", "source": source.describe(),
            "class_names": list(source.class_names), "task": source.task, "image_dtype": "float32",
            "shards": [{"path": shard_relpath(0, "zarr"), "start": 0, "count": res.count,
                        "sha256": res.sha256, "bytes": res.bytes}],
            "num_samples": res.count, "volumes": volumes}
    write_dataset(out, info, records)
    return out


def run_train(args: list, capsys) -> tuple[int, str, str]:
    """Run the `train` CLI in-process, as the console script does; (exit code, stdout, stderr)."""
    from shared.cli_support import run_cli
    from train.cli import cli

    code = 0
    try:
        run_cli(cli, [str(a) for a in args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
