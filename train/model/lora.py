"""LoRA on SAM through loralib, and the trainable-weights checkpoint helpers.

- Image encoder: every block's fused ``attn.qkv`` (nn.Linear(dim, 3*dim)) becomes a
  ``loralib.MergedLinear(enable_lora=[True, False, True])``: q and v adapted, k not.
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
        for block in sam.image_encoder.blocks:
            block.attn.qkv = _lora_qkv(block.attn.qkv, rank, alpha)
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
