"""`build_sam`: assemble SAM from segment_anything's modeling classes and load weights.

It returns a :class:`BuiltSam`: the module together with the facts about it (model name, input
size, promptless head, weights file, heads left at random init). Code that needs those facts gets
the record passed to it; nothing is stored on the module itself."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                       TwoWayTransformer)

from shared.errors import ConfigError, DataError

from .sam_weights import guess_model, load_sam_state, read_checkpoint
from .registry import MODEL_NAMES, MODEL_SPECS, ModelSpec

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
    lora: dict | None = None                                   # recorded by add_lora
    trainable: dict | None = None                              # recorded by apply_trainable_set

    @property
    def embedding_size(self) -> int:
        return self.img_size // self.spec["patch_size"]


def assemble_sam(spec: ModelSpec, img_size: int, num_multimask_outputs: int | None = None) -> Sam:
    """SAM's three components with `spec`'s sizes at input size `img_size`, randomly initialised.

    Mirrors segment_anything.build_sam._build_sam, with the input size as a parameter.
    """
    grid = spec.grid(img_size)
    dim = spec.prompt_embed_dim
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.encoder_depth,
            embed_dim=spec.encoder_embed_dim,
            img_size=img_size,
            mlp_ratio=spec.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.encoder_num_heads,
            patch_size=spec.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.encoder_global_attn_indexes,
            window_size=spec.window_size,
            out_chans=dim,
        ),
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
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


def build_sam(model: str, checkpoint: str | Path | None, img_size: int | None = None, *,
              num_classes: int | None = None, seed: int = 0,
              allow_random: bool = False) -> BuiltSam:
    """Build SAM `model` ("tiny", "vit_b", "vit_l", "vit_h") for square inputs of `img_size`.

    - vit_*: `checkpoint` (an official SAM state dict) is required unless `allow_random` (tests);
      position tables are resized when `img_size` differs from the checkpoint's 1024.
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
    if img_size < 2 * spec.patch_size or img_size % spec.patch_size:
        raise ConfigError(f"--img-size {img_size} must be a positive multiple of "
                          f"{spec.patch_size} (the {model} patch size), at least {2 * spec.patch_size}")
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if checkpoint is None and model != "tiny" and not allow_random:
        raise ConfigError(f"--model {model} needs --checkpoint PATH (an official SAM {model} "
                          "checkpoint, e.g. sam_vit_b_01ec64.pth)")

    state = None
    if checkpoint is not None:
        # Read and identify the file before spending time and memory on a model it cannot fit.
        state = read_checkpoint(checkpoint)
        guess = guess_model(state)
        if guess is not None and guess != model:
            raise DataError(f"checkpoint {checkpoint} is a {guess} checkpoint, not {model}; "
                            f"use --model {guess}")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = assemble_sam(spec, img_size, num_classes)

    reinit: list[str] = []
    if state is not None:
        reinit = load_sam_state(sam, state, spec, checkpoint,
                                allow_head_reinit=num_classes is not None)
    return BuiltSam(sam=sam, model=model, img_size=img_size, num_classes=num_classes,
                    checkpoint=None if checkpoint is None else str(checkpoint),
                    spec=spec.to_dict(), reinitialised=reinit)
