"""Published adapters: what fine-tuning changed, small enough to check in, with its card.

An adapter folder (``models/NAME``)::

    adapter.pt    {"format", "model", "trainable_set", "lora_rank", "seed", "tensors": {name: fp16}}
    model.json    the card: base weights (file name, sha256), the trainable set, the exemplar list
                  and its hash, the dataset's content hash, the run's commands, commit, device,
                  precision, seed, steps, the test-split scores, and adapter.pt's sha256

`train export --run RUN --out models/NAME [--eval EVALDIR ...]` writes one from a finished run;
`train eval|predict --model lite_medsam --adapter models/NAME` applies it to the base weights (the
package's, checked against the card's sha256). A damaged adapter.pt (sha256 differs from the
card), another base model, or tensors that do not fit are one-line errors.
"""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any, Sequence

import torch

from shared.errors import ConfigError, DataError
from shared.fileio import atomic_write_text, atomic_writer, read_json
from train.model.sam_weights import file_sha256

ADAPTER_FORMAT = "exemplar-sam-adapter/1"
ADAPTER_FILE = "adapter.pt"
CARD_FILE = "model.json"
MAX_BYTES = 5 * 2**20


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _trained_on(cfg: dict, scores: list[dict]) -> str:
    """The run's device: its config's, or "cpu" / "cuda" when it said "auto" (a CUDA run records
    bf16 autocast; an "auto" run on a machine without CUDA trained on the CPU)."""
    device = str(cfg.get("device") or "auto")
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def export_adapter(rundir: str | Path, out: str | Path, *, evals: Sequence[str | Path] = (),
                   commands: Sequence[str] = (), overwrite: bool = False) -> Path:
    """Write ``out/adapter.pt`` and ``out/model.json`` from the finished run `rundir`."""
    from train.checkpointing import last_checkpoint, load_checkpoint, read_run_config

    rundir, out = Path(rundir), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out}: exists and is not empty (use --overwrite to replace the adapter)")
    run = read_run_config(rundir)
    cfg = run.get("train") or {}
    saved = load_checkpoint(last_checkpoint(rundir))
    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in saved["trainable"].items()}
    model = run.get("model") or {}
    weights = model.get("base_weights")
    if not weights or not Path(weights).is_file():
        raise DataError(f"{rundir}/config.json: the base weights file {weights!r} is not there; an adapter "
                        "card must name the base weights by sha256")
    dataset = run.get("dataset") or {}
    ds_info = {}
    ds_path = Path(str(dataset.get("path") or "")) / "dataset.json"
    if ds_path.is_file():
        ds_info = read_json(ds_path, what="dataset.json")
    exemplars = ds_info.get("exemplars") or []
    exemplar_text = json.dumps(exemplars, sort_keys=True, separators=(",", ":"))
    scores = []
    for ev in evals:
        s = read_json(Path(ev) / "summary.json", what="evaluation summary")
        scores.append({"evaluation": Path(ev).name, "prompt": s.get("prompt"), "mean_dsc": s.get("mean_dsc"),
                       "mean_hd95": s.get("mean_hd95"), "n_volumes": s.get("n_volumes"),
                       "volumes": [c for c in (s.get("dataset") or {}).get("volume_ids", [])] or None,
                       "box_margin": s.get("box_margin"), "device": s.get("device")})
    out.mkdir(parents=True, exist_ok=True)
    obj = {"format": ADAPTER_FORMAT, "model": cfg.get("model"), "trainable_set": cfg.get("trainable"),
           "lora_rank": cfg.get("lora_rank"), "seed": cfg.get("seed"), "img_size": cfg.get("img_size"),
           "prompt": cfg.get("prompt"), "num_classes": model.get("num_classes"),
           "class_names": model.get("class_names"), "tensors": tensors}
    with atomic_writer(out / ADAPTER_FILE) as fh:
        torch.save(obj, fh)
    size = (out / ADAPTER_FILE).stat().st_size
    if size > MAX_BYTES:
        (out / ADAPTER_FILE).unlink()
        raise DataError(f"{rundir}: the adapter would be {size / 2**20:.1f} MiB (> 5 MiB); "
                        "publish a smaller trainable set")
    card = {
        "format": ADAPTER_FORMAT,
        "model": cfg.get("model"),
        "base_weights": {"file": Path(weights).name, "sha256": file_sha256(weights)},
        "adapter": {"file": ADAPTER_FILE, "sha256": file_sha256(out / ADAPTER_FILE), "bytes": size,
                    "dtype": "float16", "tensors": len(tensors),
                    "parameters": int(sum(t.numel() for t in tensors.values()))},
        "trainable_set": cfg.get("trainable"), "lora_rank": cfg.get("lora_rank"),
        "frozen_encoder": bool(cfg.get("frozen_encoder")), "prompt": cfg.get("prompt"),
        "lr": cfg.get("lr"), "batch_size": cfg.get("batch_size"), "seed": cfg.get("seed"),
        "steps": saved.get("step"), "img_size": cfg.get("img_size"),
        "input_contract": model.get("input_contract"), "class_names": model.get("class_names"),
        "dataset": {"kind": dataset.get("kind"), "num_samples": dataset.get("num_samples"),
                    "content_sha256": dataset.get("content_sha256"), "build_id": dataset.get("build_id"),
                    "source": {k: (dataset.get("source") or {}).get(k) for k in ("name", "intensity")}},
        "exemplars": exemplars,
        "exemplars_sha256": hashlib.sha256(exemplar_text.encode()).hexdigest(),
        "commands": list(commands),
        "export_commit": _git_commit(),   # the code that wrote this card (runs do not record theirs)
        "device": _trained_on(cfg, scores),
        "machine": platform.processor() or platform.machine(),
        "precision": "bf16 autocast" if _trained_on(cfg, scores).startswith("cuda") else "fp32",
        "fit_seconds": (read_json(rundir / "summary.json", what="run summary").get("seconds")
                        if (rundir / "summary.json").is_file() else None),
        "scores": scores,
        "run": str(rundir.resolve()),
    }
    atomic_write_text(out / CARD_FILE, json.dumps(card, indent=2) + "\n")
    return out


def read_adapter(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(card, adapter object) of an adapter folder; one-line DataError when missing or damaged."""
    folder = Path(folder)
    card_path, file = folder / CARD_FILE, folder / ADAPTER_FILE
    if not folder.is_dir():
        raise DataError(f"--adapter {folder}: not a folder (expected {CARD_FILE} and {ADAPTER_FILE})")
    card = read_json(card_path, what="adapter card")
    if not file.is_file():
        raise DataError(f"{file}: missing (the adapter's tensors)")
    want = (card.get("adapter") or {}).get("sha256")
    if want and file_sha256(file) != want:
        raise DataError(f"{file}: damaged (sha256 differs from {card_path}); download or export it again")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{file}: cannot read the adapter ({type(exc).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != ADAPTER_FORMAT or not isinstance(obj.get("tensors"), dict):
        raise DataError(f"{file}: not an exemplar-sam adapter (format {ADAPTER_FORMAT} expected)")
    return card, obj


def load_adapter_model(folder: str | Path, model: str, checkpoint: str | Path | None = None):
    """A LoadedModel (train.inference) of base weights + the adapter in `folder`."""
    from train.inference import LoadedModel
    from train.model import PromptSAM, apply_trainable_set, build_sam, load_trainable_state
    from train.model.registry import MODEL_SPECS

    card, obj = read_adapter(folder)
    if obj.get("model") != model:
        raise DataError(f"--adapter {folder}: adapts {obj.get('model')!r}, not --model {model}")
    built = build_sam(model, checkpoint, obj.get("img_size"), seed=int(obj.get("seed") or 0))
    base_sha = (card.get("base_weights") or {}).get("sha256")
    if built.weights and base_sha and file_sha256(built.weights) != base_sha:
        raise DataError(f"--adapter {folder}: made for base weights sha256 {base_sha[:12]}..., the weights "
                        f"loaded ({built.weights}) differ")
    apply_trainable_set(built, obj["trainable_set"], rank=int(obj.get("lora_rank") or 4), seed=int(obj.get("seed") or 0))
    state = {k: v.float() if v.is_floating_point() else v for k, v in obj["tensors"].items()}
    load_trainable_state(built, state, str(Path(folder) / ADAPTER_FILE))
    names = obj.get("class_names")
    info = {"model": model, "adapter": str(Path(folder).resolve()), "adapter_sha256": (card.get("adapter") or {}).get("sha256"),
            "weights": built.weights, "img_size": built.img_size, "trained_prompt": obj.get("prompt"),
            "zero_shot": False, "input_contract": MODEL_SPECS[model].contract.to_dict()}
    return LoadedModel(PromptSAM(built).eval(), Path(folder).name, tuple(names) if names else None,
                       obj.get("prompt"), info, {"dataset": {"source": (card.get("dataset") or {}).get("source") or {}}})


def sample_check(loaded, dataset: str, root: str | Path, case: str, *, every: int = 4, prompt: str = "center",
                 intensity: Any = None, engine: str = "auto") -> dict[str, Any]:
    """The DSC of `loaded` on every `every`-th ground-truth slice of one case of a source, with
    one prompt per slice (train.evaluate's rules): the card's quick reproduction check, cheap
    enough for a test on CPU. Returns the record stored on the card as ``sample_check``."""
    import dataclasses

    import numpy as np

    from train.evaluate import encoder_engine, predict_volume
    from train.inference import Inference
    from train.testsets import open_source_testset

    testset = open_source_testset(dataset, root, "all", intensity=intensity)
    vol = testset.load(case)
    ks = np.flatnonzero(vol.label.reshape(len(vol.label), -1).any(1))[::every]
    sub = dataclasses.replace(vol, image=vol.image[ks], label=vol.label[ks])
    cpu = torch.device("cpu")
    model = loaded.model.eval()
    inf = Inference(model, cpu, batch_size=8, engine=encoder_engine(model, engine, cpu))
    num_classes = len(testset.class_names) - 1
    with torch.inference_mode():
        pred, _ = predict_volume(inf, sub, num_classes, prompt, 0)
    scores = []
    for c in range(1, num_classes + 1):
        p, t = pred == c, sub.label == c
        if t.any():
            scores.append(float(2 * np.logical_and(p, t).sum() / (p.sum() + t.sum())))
    return {"dataset": dataset, "case": case, "every": every, "slices": int(len(ks)), "prompt": prompt,
            "intensity": intensity, "dsc": round(float(np.mean(scores)), 6)}
