"""SAM for exemplar-sam: building (official checkpoints or the CPU `tiny` model), LoRA, and the
batched prompt wrapper. See docs/model.md."""
from .build import PIXEL_MEAN, PIXEL_STD, SamInfo, assemble_sam, build_sam
from .checkpoint import guess_model, read_checkpoint
from .lora import (LORA_TARGETS, TRAIN_DECODER, ParamCount, add_lora, count_parameters,
                   load_trainable_state, trainable_state_dict)
from .prompt_sam import PromptSAM
from .trainable import (GROUPS, TRAINABLE_NAMES, TRAINABLE_SETS, apply_trainable_set,
                        default_trainable, describe_counts, group_counts)
from .registry import (MODEL_NAMES, MODEL_SPECS, TINY_CONFIG, ModelSpec, default_img_size,
                       default_training)

__all__ = [
    "MODEL_NAMES", "MODEL_SPECS", "TINY_CONFIG", "ModelSpec", "SamInfo", "PIXEL_MEAN", "PIXEL_STD",
    "build_sam", "assemble_sam", "read_checkpoint", "guess_model", "add_lora", "count_parameters",
    "ParamCount", "trainable_state_dict", "load_trainable_state", "PromptSAM", "LORA_TARGETS",
    "TRAIN_DECODER", "default_img_size", "default_training", "GROUPS", "TRAINABLE_NAMES",
    "TRAINABLE_SETS", "apply_trainable_set", "default_trainable", "describe_counts", "group_counts",
]
