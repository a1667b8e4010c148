"""Model specs: the sizes of every SAM variant `build_sam` knows.

The ViT entries repeat the numbers of segment_anything's own registry (``build_sam.py``:
``build_sam_vit_b`` / ``_l`` / ``_h`` and ``_build_sam``), which hard-codes a 1024 input; keeping
them here lets `build_sam` assemble the same modules at any input size. A test checks that at 1024
the assembled ``vit_b`` has exactly the state-dict keys and shapes of
``segment_anything.sam_model_registry["vit_b"]()``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ModelSpec:
    """Constructor arguments of SAM's three components (one SAM variant)."""

    name: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256          # = encoder neck out_chans = decoder transformer_dim
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    checkpoint_img_size: int = 1024      # the input size official weights were trained at
    default_img_size: int = 512          # `--img-size` default: SAMed's 512 (the paper does not state its input size)
    default_training: str = "lora"       # "lora" (pretrained weights) or "full" (random init)
    notes: str = field(default="", compare=False)

    def grid(self, img_size: int) -> int:
        """Side of the image-embedding grid for an input of img_size pixels."""
        return img_size // self.patch_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return d


VIT_B = ModelSpec("vit_b", 768, 12, 12, (2, 5, 8, 11))
VIT_L = ModelSpec("vit_l", 1024, 24, 16, (5, 11, 17, 23))
VIT_H = ModelSpec("vit_h", 1280, 32, 16, (7, 15, 23, 31))

# A small SAM for CPU demos, tests and experiments, trained from random init (no pretrained weights
# exist for it). Patch 8 gives a 16x16 token grid at 128 px; global attention everywhere (the grid
# is small), relative positions on; the decoder is SAM's two-way transformer at width 64.
# Width 96 / MLP ratio 2 learned as well as width 128 / ratio 4 on a procedural point-prompt task
# (held-out Dice 0.715 vs 0.709 after 400 steps) at 0.72x the step time (docs/model.md).
TINY_CONFIG = ModelSpec(
    "tiny",
    encoder_embed_dim=96,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(0, 1, 2, 3),
    patch_size=8,
    window_size=0,
    mlp_ratio=2.0,
    prompt_embed_dim=64,
    mask_in_chans=16,
    decoder_depth=2,
    decoder_mlp_dim=256,
    decoder_num_heads=4,
    iou_head_depth=3,
    iou_head_hidden_dim=64,
    checkpoint_img_size=128,
    default_img_size=128,
    default_training="full",
    notes="CPU model: full training from random init",
)

MODEL_SPECS: dict[str, ModelSpec] = {s.name: s for s in (TINY_CONFIG, VIT_B, VIT_L, VIT_H)}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_SPECS)


def default_img_size(model: str) -> int:
    return MODEL_SPECS[model].default_img_size


def default_training(model: str) -> str:
    """'full' for tiny (random init, nothing to adapt), 'lora' for the pretrained ViTs."""
    return MODEL_SPECS[model].default_training
