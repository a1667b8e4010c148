"""`train pretrain`: promptable pretraining of the tiny SAM on automatic, label-free masks."""
from __future__ import annotations

from pathlib import Path

import click

from shared.cli_support import debug_option

DEFAULT_STEPS = 2000


@click.command("pretrain")
@click.option("--dataset", "datasets", multiple=True, required=True,
              help="Source of unlabelled slices: brats, synapse, transunet, nifti, demo-brain, "
                   "demo-abdomen. Repeat with --root for several sources (paired in order).")
@click.option("--root", "roots", multiple=True, type=click.Path(path_type=Path),
              help="The dataset folder, one per --dataset (demo sources need none).")
@click.option("--modality", default="flair", show_default=True, help="BraTS MRI modality.")
@click.option("--split", type=click.Choice(("train", "all")), default="train", show_default=True,
              help="Cases to pretrain on (data_manifests/splits). 'train' keeps the test cases unseen; "
                   "'all' only for a source without a test split of its own.")
@click.option("--split-file", type=click.Path(path_type=Path), default=None,
              help='Your own split, JSON {"train": [...], "test": [...]} of case ids (default: each '
                   "dataset's recorded split, see docs/sources.md).")
@click.option("--steps", type=int, default=DEFAULT_STEPS, show_default=True,
              help="Optimizer steps (total, counting resumed ones).")
@click.option("--batch-size", type=int, help="Samples per step. [default: 8, the tiny recipe]")
@click.option("--slice-stride", type=int, default=2, show_default=True,
              help="Use every n-th slice of each case (neighbouring slices are near copies).")
@click.option("--max-cases", type=int, help="Only the first N cases of the split of each source (quick runs).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Output folder PRE: model.pt, config.json, metrics.jsonl, preview.png, "
                   "automasks/ (the mask dataset), checkpoints/last.pt.")
@click.option("--seed", type=int, help="Seed of the model init, the sample order, prompts and "
                                       "augmentation. [default: 1234]")
@click.option("--device", help="auto (CUDA if available), cpu, cuda or cuda:N. [default: auto]")
@click.option("--num-threads", "--threads", "num_threads", type=int,
              help="torch intra-op threads (0: all CPUs).")
@click.option("--resume", is_flag=True, help="Continue PRE from checkpoints/last.pt up to --steps "
                                             "(the mask dataset is reused).")
@click.option("--overwrite", is_flag=True, help="Start over in a PRE that already holds a run.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@debug_option
def pretrain(datasets, roots, modality, split, split_file, steps, batch_size, slice_stride, max_cases, out, seed, device,
             num_threads, resume, overwrite, no_progress) -> None:
    """Pretrain the tiny SAM without labels, so it can be fine-tuned with LoRA like SAM.

    Every slice of the chosen cases is cut into regions by classic unsupervised segmenters
    (Felzenszwalb at two scales, SLIC superpixels, connected components of intensity bands);
    labels are never read. Each step shows the model a random point of a random region and
    trains it to output that region, with the loss, optimiser and schedule of `train fit`
    (the tiny recipe of train/configs/default.json).

    Then: `train fit --model tiny --checkpoint PRE/model.pt ...` (LoRA) and
    `train eval --model tiny --checkpoint PRE/model.pt ...` (zero-shot).

    Example: train pretrain --dataset brats --root data/brats2018 --out runs/pre
    """
    from shared.errors import ConfigError
    from train.config import resolve_config
    from train.fit import resume_config
    from train.pretrain import PretrainOptions, PretrainSource, pretrain as run_pretrain

    if roots and len(roots) != len(datasets):
        raise ConfigError(f"give one --root per --dataset ({len(datasets)} --dataset, {len(roots)} --root)")
    if not roots and not all(d.startswith("demo") for d in datasets):
        raise ConfigError("give --root DIR for each --dataset (only demo sources need none)")
    sources = [PretrainSource(d, None if not roots else str(r), modality)
               for d, r in zip(datasets, roots or [None] * len(datasets))]
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    overrides = {"model": "tiny", "steps": steps, "batch_size": batch_size, "seed": seed,
                 "device": device, "num_threads": num_threads, "prompt": "point"}
    if resume:
        cfg = resume_config(out, overrides)
    else:
        cfg = resolve_config(None, overrides)
    opts = PretrainOptions(sources=sources, split=split, slice_stride=slice_stride,
                           max_cases=max_cases,
                           split_file=None if split_file is None else str(split_file.resolve()))
    result = run_pretrain(cfg, opts, out, resume=resume, overwrite=overwrite,
                          progress=not no_progress, echo=click.echo)
    first = "n/a" if result.first_loss is None else f"{result.first_loss:.4f}"
    last = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
    click.echo(f"done: {result.num_samples} mask samples from {result.num_slices} slices, loss {first} -> "
               f"{last}; masks {result.mask_seconds:.1f} s, training {result.fit_seconds:.1f} s; "
               f"model {result.model}")
