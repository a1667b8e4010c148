"""LoRA on SAM through loralib, and the trainable-weights checkpoint helpers.

- Image encoder: every block's fused ``attn.qkv`` (nn.Linear(dim, 3*dim)) becomes a
  ``loralib.MergedLinear(enable_lora=[True, False, True])``: q and v adapted, k not. TinyViT
  (lite_medsam) lays its qkv output out per head ([q_h k_h v_h] for each head h), so its layer is
  a :class:`HeadInterleavedQKV`: the same MergedLinear over the rows reordered to [q | k | v],
  its output put back in the per-head order, i.e. one rank-r adapter for q and one for v, as
  in SAM's ViT.
- Mask decoder: ``q_proj`` and ``v_proj`` of every attention of the two-way transformer (each
  layer's self_attn, cross_attn_token_to_image, cross_attn_image_to_token, and the final
  token-to-image attention) become ``loralib.Linear``.
The pretrained weights and biases are copied into the new layers and frozen; ``lora_B`` starts at
zero, so at initialisation the model computes exactly what the base model computes.

``merge_weights=False``: loralib would otherwise add B@A into the frozen weight on ``.eval()``
and subtract it on ``.train()``. Switching modes then changes ``weight`` in place (a full state
dict saved in eval mode would contain merged weights and be wrong when loaded into a fresh
LoRA model) and accumulates float rounding; the unmerged path costs one extra low-rank matmul.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import loralib
import torch
from segment_anything.modeling.transformer import Attention as DecoderAttention
from torch import nn

from shared.errors import ConfigError, DataError

from .build import BuiltSam
from .encoders import QKVLayer, qkv_layers
from .sam_weights import HEAD_PREFIXES

LORA_TARGETS = ("encoder_qv", "decoder_attn")
TRAIN_DECODER = ("lora", "full", "frozen")


class ParamCount(NamedTuple):
    trainable: int
    total: int

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (f"trainable parameters: {self.trainable:,} of {self.total:,} "
                f"({100 * self.share:.2f}%)")


def _unwrap(model: nn.Module | BuiltSam) -> nn.Module:
    """PromptSAM or BuiltSam -> its Sam, so checkpoint keys never depend on the wrapper."""
    return model.sam if isinstance(model, BuiltSam) else getattr(model, "sam", model)


def count_parameters(model: nn.Module | BuiltSam) -> ParamCount:
    params = list(_unwrap(model).parameters())
    return ParamCount(sum(p.numel() for p in params if p.requires_grad),
                      sum(p.numel() for p in params))


def _lora_linear(old: nn.Linear, rank: int, alpha: float) -> loralib.Linear:
    new = loralib.Linear(old.in_features, old.out_features, r=rank, lora_alpha=alpha,
                         bias=old.bias is not None, merge_weights=False)
    return _copy_base(old, new)


def _lora_qkv(old: nn.Linear, rank: int, alpha: float) -> loralib.MergedLinear:
    new = loralib.MergedLinear(old.in_features, old.out_features, r=rank, lora_alpha=alpha,
                               enable_lora=[True, False, True], bias=old.bias is not None,
                               merge_weights=False)
    return _copy_base(old, new)


def qkv_block_order(num_heads: int, key_dim: int, value_dim: int) -> torch.Tensor:
    """Indices of a per-head qkv output ([q_h k_h v_h] per head) in [q | k | v] order."""
    per_head = 2 * key_dim + value_dim
    heads = torch.arange(num_heads)[:, None] * per_head
    q = (heads + torch.arange(key_dim)).reshape(-1)
    k = (heads + key_dim + torch.arange(key_dim)).reshape(-1)
    v = (heads + 2 * key_dim + torch.arange(value_dim)).reshape(-1)
    return torch.cat([q, k, v])


class HeadInterleavedQKV(nn.Module):
    """LoRA on q and v of a fused qkv whose output is laid out per head (TinyViT).

    `merged` is a loralib.MergedLinear(enable_lora=[True, False, True]) whose base weight rows
    are the original ones in [q | k | v] order; ``forward`` returns its output in the original
    per-head order, so the attention module around it is unchanged.
    """

    def __init__(self, old: nn.Linear, layer: QKVLayer, rank: int, alpha: float):
        super().__init__()
        if layer.key_dim != layer.value_dim:
            raise ConfigError(f"LoRA on q/v needs equal q, k and v widths (got key {layer.key_dim}, "
                              f"value {layer.value_dim} per head)")
        order = qkv_block_order(layer.num_heads, layer.key_dim, layer.value_dim).to(old.weight.device)
        reordered = nn.Linear(old.in_features, old.out_features, bias=old.bias is not None)
        with torch.no_grad():
            reordered.weight.copy_(old.weight[order])
            if old.bias is not None:
                reordered.bias.copy_(old.bias[order])
        self.merged = _lora_qkv(reordered.to(old.weight.device, old.weight.dtype), rank, alpha)
        self.register_buffer("inverse_order", torch.argsort(order), persistent=False)

    @property
    def in_features(self) -> int:
        return self.merged.in_features

    @property
    def out_features(self) -> int:
        return self.merged.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merged(x).index_select(-1, self.inverse_order)


def _lora_encoder_qkv(layer: QKVLayer, rank: int, alpha: float) -> nn.Module:
    old = layer.owner.qkv
    if layer.layout == "blocks":
        return _lora_qkv(old, rank, alpha)
    return HeadInterleavedQKV(old, layer, rank, alpha)


def _copy_base(old: nn.Linear, new: nn.Linear) -> nn.Linear:
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    if hasattr(new, "lora_ind"):
        # loralib keeps this index as a plain attribute, which .to(device) would not move;
        # a non-persistent buffer moves with the model and stays out of state dicts.
        ind = new.lora_ind.to(old.weight.device)
        del new.lora_ind
        new.register_buffer("lora_ind", ind, persistent=False)
    return new


def add_lora(model: BuiltSam | nn.Module, rank: int = 4, alpha: float | None = None,
             targets: Iterable[str] = LORA_TARGETS, *, train_decoder: str = "lora",
             trainable: Iterable[str] = ()) -> dict:
    """Insert LoRA layers into the Sam of `model` (in place) and freeze everything else; returns
    what was added ({rank, alpha, targets, train_decoder, trainable}).

    rank, alpha: LoRA rank and loralib's lora_alpha (scaling = alpha / rank; default alpha = rank,
        i.e. scaling 1 as in SAMed).
    targets: "encoder_qv" (q, v of every image-encoder attention) and/or "decoder_attn" (q_proj,
        v_proj of the mask decoder's transformer attentions).
    train_decoder: "lora" (decoder adapted by LoRA only, if targeted), "full" (the whole mask
        decoder trained, as SAMed; no LoRA is put into it then), "frozen" (no decoder LoRA either).
    trainable: extra parameter-name prefixes (relative to the Sam) kept trainable.
    Given a BuiltSam, the heads build_sam(num_classes=...) re-initialised are always kept trainable
    and the returned facts are recorded in ``built.lora`` as well.
    """
    built = model if isinstance(model, BuiltSam) else None
    sam = _unwrap(model)
    targets = tuple(targets)
    if rank < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown:
        raise ConfigError(f"unknown LoRA target {unknown[0]!r}; choose from {', '.join(LORA_TARGETS)}")
    if train_decoder not in TRAIN_DECODER:
        raise ConfigError(f"train_decoder must be one of {', '.join(TRAIN_DECODER)}, got {train_decoder!r}")
    if any(isinstance(m, loralib.LoRALayer) for m in sam.modules()):
        raise ConfigError("add_lora: the model already has LoRA layers")
    alpha = float(rank if alpha is None else alpha)

    if "encoder_qv" in targets:
        for layer in qkv_layers(sam.image_encoder):
            layer.owner.qkv = _lora_encoder_qkv(layer, rank, alpha)
    if "decoder_attn" in targets and train_decoder == "lora":
        for module in sam.mask_decoder.transformer.modules():
            if isinstance(module, DecoderAttention):
                module.q_proj = _lora_linear(module.q_proj, rank, alpha)
                module.v_proj = _lora_linear(module.v_proj, rank, alpha)

    loralib.mark_only_lora_as_trainable(sam)
    keep = list(trainable)
    if train_decoder == "full":
        keep.append("mask_decoder.")
    if built is not None and built.reinitialised:
        keep.extend(HEAD_PREFIXES)
    if keep:
        for name, p in sam.named_parameters():
            if name.startswith(tuple(keep)):
                p.requires_grad = True
    info = {"rank": rank, "alpha": alpha, "targets": list(targets),
            "train_decoder": train_decoder, "trainable": list(trainable)}
    if built is not None:
        built.lora = info
    return info


def trainable_state_dict(model: nn.Module | BuiltSam) -> dict[str, torch.Tensor]:
    """The trainable weights (LoRA + unfrozen parameters) plus persistent buffers, detached.

    Keys are relative to the Sam (a PromptSAM is unwrapped). The buffers (only the prompt
    encoder's random Fourier matrix) are small and make a tiny model's checkpoint complete.
    """
    sam = _unwrap(model)
    names = {n for n, p in sam.named_parameters() if p.requires_grad}
    names |= {n for n, _ in sam.named_buffers() if _is_persistent(sam, n)}
    return {k: v.detach().clone() for k, v in sam.state_dict().items() if k in names}


def _is_persistent(sam: nn.Module, name: str) -> bool:
    owner, _, leaf = name.rpartition(".")
    module = sam.get_submodule(owner) if owner else sam
    return leaf not in module._non_persistent_buffers_set


def load_trainable_state(model: nn.Module | BuiltSam, state: dict[str, torch.Tensor],
                         source: str = "checkpoint") -> None:
    """Load what `trainable_state_dict` saved; names and shapes must match exactly.

    Raises a one-line DataError naming `source` (e.g. the checkpoint path) on any mismatch.
    """
    sam = _unwrap(model)
    expected = trainable_state_dict(sam)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                more = f" (+{len(items) - 2} more)" if len(items) > 2 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:2])}{more}")
        raise DataError(f"{source}: trained weights do not fit this model "
                        f"(different --model, --img-size, LoRA rank or targets?): {'; '.join(parts)}")
    result = sam.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
