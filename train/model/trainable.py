"""Named trainable sets: which parts of SAM a run adapts (LoRA) or trains, and their counts.

One function, :func:`apply_trainable_set`, turns a built Sam into the model a run trains, for
every model (vit_* on an official checkpoint, `tiny` from scratch or from a checkpoint): it inserts
the set's LoRA layers (seeded), freezes everything, then unfreezes the set's parameter groups.

Parameter groups (by name; every Sam parameter belongs to exactly one):

=====================  ==============================================================================
group                  parameters
=====================  ==============================================================================
encoder_lora           LoRA A/B of the image encoder's q and v (``attn.qkv``)
encoder                the image encoder itself (patch embedding, blocks, neck)
decoder_lora           LoRA A/B of q_proj / v_proj of the mask decoder's two-way transformer
decoder_transformer    the mask decoder's two-way transformer itself
point_embeddings       prompt encoder: point_embeddings (pos/neg/box corners) and not_a_point_embed
mask_prompt            prompt encoder: mask_downscaling convolutions and no_mask_embed
output_tokens          mask decoder: iou_token and mask_tokens
output_upscaling       mask decoder: output_upscaling (transposed convolutions + LayerNorm)
hypernetwork_mlps      mask decoder: output_hypernetworks_mlps
iou_head               mask decoder: iou_prediction_head
=====================  ==============================================================================

Sets (:data:`TRAINABLE_SETS`; docs/model.md has the counts for vit_b/l/h and tiny):

- ``samed_lora``: SAMed's decoder-LoRA module (``sam_lora_image_encoder_mask_decoder.py``): LoRA on
  encoder q/v and decoder-attention q/v; the image encoder and the decoder transformer frozen;
  everything else trained (prompt encoder, output tokens, upscaling, hypernetwork MLPs, IoU head).
  The paper's "LoRA + fine-tune the mask decoder with the point-based prompt embedding". Default
  for prompted vit_* runs.
- ``samed_full``: SAMed's encoder-LoRA module (``sam_lora_image_encoder.py``): LoRA on encoder
  q/v; the whole mask decoder and prompt encoder trained. Default for ``--prompt none`` (the
  SAMed baseline).
- ``lora``: LoRA on encoder q/v and decoder-attention q/v only (this project's earlier default).
- ``decoder_full``: LoRA on encoder q/v + the whole mask decoder (prompt encoder frozen).
- ``encoder_lora``: LoRA on encoder q/v only.
- ``full``: every parameter, no LoRA (tiny from random init).
- ``decoder_lora``: ``samed_lora`` without the image encoder: decoder-attention q/v LoRA, prompt
  encoder, output tokens, upscaling, hypernetwork MLPs and IoU head. Default for
  ``--frozen-encoder`` (the encoder's embeddings are computed once and cached).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn

from shared.errors import ConfigError

from .build import BuiltSam

GROUPS = ("encoder_lora", "encoder", "decoder_lora", "decoder_transformer", "point_embeddings",
          "mask_prompt", "output_tokens", "output_upscaling", "hypernetwork_mlps", "iou_head")

_HEADS = ("point_embeddings", "mask_prompt", "output_tokens", "output_upscaling",
          "hypernetwork_mlps", "iou_head")


@dataclass(frozen=True)
class TrainableSet:
    """LoRA targets to insert and parameter groups to train."""

    name: str
    lora_targets: tuple[str, ...]      # subset of train.model.lora.LORA_TARGETS
    groups: tuple[str, ...]            # subset of GROUPS
    description: str


TRAINABLE_SETS: dict[str, TrainableSet] = {s.name: s for s in (
    TrainableSet("samed_lora", ("encoder_qv", "decoder_attn"),
                 ("encoder_lora", "decoder_lora") + _HEADS,
                 "SAMed decoder-LoRA: encoder q/v + decoder attention q/v LoRA, prompt encoder, "
                 "output tokens, upscaling, hypernetwork MLPs and IoU head trained"),
    TrainableSet("samed_full", ("encoder_qv",),
                 ("encoder_lora", "decoder_transformer") + _HEADS,
                 "SAMed encoder-LoRA: encoder q/v LoRA, whole mask decoder and prompt encoder trained"),
    TrainableSet("lora", ("encoder_qv", "decoder_attn"), ("encoder_lora", "decoder_lora"),
                 "LoRA only: encoder q/v + decoder attention q/v"),
    TrainableSet("decoder_full", ("encoder_qv",),
                 ("encoder_lora", "decoder_transformer", "output_tokens", "output_upscaling",
                  "hypernetwork_mlps", "iou_head"),
                 "encoder q/v LoRA + whole mask decoder (prompt encoder frozen)"),
    TrainableSet("encoder_lora", ("encoder_qv",), ("encoder_lora",), "encoder q/v LoRA only"),
    TrainableSet("full", (), GROUPS, "every parameter, no LoRA (training from scratch)"),
    TrainableSet("decoder_lora", ("decoder_attn",), ("decoder_lora",) + _HEADS,
                 "frozen image encoder: decoder attention q/v LoRA, prompt encoder, output tokens, "
                 "upscaling, hypernetwork MLPs and IoU head trained"),
)}
ENCODER_GROUPS = ("encoder_lora", "encoder")
TRAINABLE_NAMES: tuple[str, ...] = tuple(TRAINABLE_SETS)

# Values of the former `train_decoder` config key (runs written before the named sets).
LEGACY_TRAIN_DECODER = {"lora": "lora", "full": "decoder_full", "frozen": "encoder_lora"}


def default_trainable(model: str, prompt: str, checkpoint: str | None, frozen_encoder: bool = False) -> str:
    """The set a run trains when the config says "auto".

    A frozen encoder (cached embeddings): "decoder_lora". tiny without a checkpoint has nothing
    pretrained to adapt: "full". Everything else adapts pretrained weights as SAMed does:
    "samed_full" for the promptless baseline, "samed_lora" (the paper's decoder fine-tuning with
    the point prompt embedding) for prompted runs.
    """
    if frozen_encoder:
        return "decoder_lora"
    if model == "tiny" and checkpoint is None:
        return "full"
    return "samed_full" if prompt == "none" else "samed_lora"


def param_group(name: str) -> str:
    """The group (see module doc) of a Sam parameter name."""
    lora = "lora_" in name
    if name.startswith("image_encoder."):
        return "encoder_lora" if lora else "encoder"
    if name.startswith("mask_decoder.transformer."):
        return "decoder_lora" if lora else "decoder_transformer"
    if name.startswith(("prompt_encoder.point_embeddings", "prompt_encoder.not_a_point_embed")):
        return "point_embeddings"
    if name.startswith(("prompt_encoder.mask_downscaling", "prompt_encoder.no_mask_embed")):
        return "mask_prompt"
    if name.startswith(("mask_decoder.iou_token", "mask_decoder.mask_tokens")):
        return "output_tokens"
    if name.startswith("mask_decoder.output_upscaling"):
        return "output_upscaling"
    if name.startswith("mask_decoder.output_hypernetworks_mlps"):
        return "hypernetwork_mlps"
    if name.startswith("mask_decoder.iou_prediction_head"):
        return "iou_head"
    raise ValueError(f"parameter {name!r} belongs to no trainable group")


def group_counts(model: nn.Module, trainable_only: bool = True) -> dict[str, int]:
    """Parameters per group (trainable ones only, or all), in GROUPS order, zeros left out."""
    sam = getattr(model, "sam", model)
    counts = dict.fromkeys(GROUPS, 0)
    for name, p in sam.named_parameters():
        if p.requires_grad or not trainable_only:
            counts[param_group(name)] += p.numel()
    return {g: n for g, n in counts.items() if n}


def lora_seed(seed: int) -> int:
    """Seed of the LoRA A initialisation: its own stream of `seed` (not the model-init stream)."""
    return int(np.random.SeedSequence([int(seed), 0x10EA]).generate_state(1)[0])


def apply_trainable_set(model: BuiltSam | nn.Module, name: str, *, rank: int = 4, seed: int = 0,
                        alpha: float | None = None, extra_groups: Iterable[str] = ()) -> dict[str, int]:
    """Make the Sam of `model` train the named set, in place; returns the counts per group.

    LoRA layers are created under ``torch.random.fork_rng`` seeded from `seed` (:func:`lora_seed`),
    so one seed gives identical LoRA weights and the global RNG is untouched. Given a BuiltSam,
    output heads that build_sam re-initialised (promptless head) are always trained, whatever the
    set, and the choice is recorded in ``built.lora`` / ``built.trainable``.
    """
    from .lora import add_lora

    if name not in TRAINABLE_SETS:
        raise ConfigError(f"unknown trainable set {name!r}; choose one of {', '.join(TRAINABLE_NAMES)}")
    tset = TRAINABLE_SETS[name]
    built = model if isinstance(model, BuiltSam) else None
    sam = model.sam if built is not None else model
    groups = set(tset.groups) | set(extra_groups)
    if built is not None and built.reinitialised:
        groups |= {"output_tokens", "hypernetwork_mlps", "iou_head"}
    if tset.lora_targets:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(lora_seed(seed))
            add_lora(model, rank, alpha, tset.lora_targets, train_decoder="lora")
    for pname, p in sam.named_parameters():
        p.requires_grad = param_group(pname) in groups
    counts = group_counts(sam)
    if built is not None:
        built.trainable = {"set": name, "groups": sorted(groups, key=GROUPS.index), "counts": counts,
                           "total": sum(counts.values())}
    return counts


def describe_counts(counts: dict[str, int]) -> str:
    """One line: 'encoder_lora 147,456 + decoder_lora 23,552 + ...'."""
    return " + ".join(f"{g} {n:,}" for g, n in counts.items()) or "nothing"
