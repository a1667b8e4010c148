"""SAM for exemplar-sam: building (official checkpoints or the CPU `tiny` model), LoRA, and the
batched prompt wrapper. See docs/model.md.

The names below load on first use (PEP 562), so ``train.model.registry`` (the model names and
sizes) can be imported by the command-line modules without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    ".build": ("PIXEL_MEAN", "PIXEL_STD", "BuiltSam", "assemble_sam", "build_sam"),
    ".sam_weights": ("guess_model", "read_checkpoint"),
    ".lora": ("LORA_TARGETS", "TRAIN_DECODER", "ParamCount", "add_lora", "count_parameters",
              "load_trainable_state", "trainable_state_dict"),
    ".prompt_sam": ("PromptSAM",),
    ".trainable": ("GROUPS", "TRAINABLE_NAMES", "TRAINABLE_SETS", "apply_trainable_set",
                   "default_trainable", "describe_counts", "group_counts"),
    ".registry": ("MODEL_NAMES", "MODEL_SPECS", "TINY_CONFIG", "ModelSpec", "default_img_size",
                  "default_training"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value   # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
