"""Training configuration: one dataclass, resolved from defaults, a config file and flags.

Resolution order (later wins):
1. ``train/configs/default.json`` top-level keys,
2. its ``models.<model>`` section (per-model recipe, e.g. ``tiny`` uses img_size 128),
3. the ``--config FILE`` top-level keys, then its ``models.<model>`` section,
4. command-line flags.

The model is resolved first (flag > file > default) because it picks the per-model sections.
The resolved config is saved with the run as ``RUNDIR/config.json`` (key ``train``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from shared.errors import ConfigError
from shared.fileio import read_json
from train.model.registry import MODEL_NAMES

PROMPTS = ("point", "box", "mixed", "none")   # = train.prompts.TRAIN_PROMPTS (torch-free here)
LOSSES = ("ce_dice", "medsam")                 # train.losses.ce_dice_loss / medsam_loss


@dataclass
class AugmentConfig:
    """Train-time augmentation, applied on the fly per sample with a per-sample seeded rng.

    Every knob at 0 disables that transform. Geometric transforms act on image and label together.
    """

    flip_prob: float = 0.0        # probability of a horizontal flip (and, independently, a vertical one)
    rot90_prob: float = 0.0       # probability of a rotation by a random multiple of 90 degrees
    rotate_deg: float = 0.0       # small rotation, uniform in [-rotate_deg, rotate_deg]
    scale_range: float = 0.0      # zoom, uniform in [1 - scale_range, 1 + scale_range]
    intensity_scale: float = 0.0  # image * uniform(1 - s, 1 + s)
    intensity_shift: float = 0.0  # image + uniform(-s, s)
    gamma_range: float = 0.0      # image ** exp(uniform(-g, g))

    def enabled(self) -> bool:
        return any(getattr(self, f.name) > 0 for f in dataclasses.fields(self))


@dataclass
class TrainConfig:
    """Every hyper-parameter of `train fit`.

    Learning rate: linear warm-up from 0 to ``lr`` over ``warmup_steps``, then exponential decay
    ``lr * decay_gamma ** ((step - warmup_steps) / decay_every)``, floored at ``lr * min_lr_ratio``.
    The schedule depends on the step only (not on the total), so ``--resume --steps`` may grow.
    ``batch_size`` is per process; with DDP the global batch is ``batch_size * world_size``.
    """

    model: str = "vit_b"
    checkpoint: str | None = None
    img_size: int = 512
    lora_rank: int = 4
    trainable: str = "auto"         # named trainable set (train.model.trainable); "auto": per model/prompt
    batch_size: int = 8
    steps: int | None = None
    epochs: float | None = None
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 250
    decay_gamma: float = 0.9
    decay_every: int = 1000
    min_lr_ratio: float = 0.0
    ce_weight: float = 1.0
    dice_weight: float = 0.8
    loss: str = "ce_dice"           # ce_dice (the paper's weights above) or medsam (Dice + BCE + IoU-head MSE)
    dice_reduction: str = "sample"  # point prompts: soft Dice per "sample" (averaged) or over the "batch"
    prompt: str = "point"           # point (the paper), box (MedSAM), mixed, none (promptless)
    box_jitter: int = 5             # box prompts: each side moved out by a random 0..box_jitter input pixels
    frozen_encoder: bool = False    # train on cached image embeddings (train.embeddings); encoder untouched
    seed: int = 1234
    num_workers: int = 2
    prefetch_factor: int = 2
    shuffle_block_shards: int = 2
    log_every: int = 10
    checkpoint_every: int = 0
    save_every_steps: int = 500       # update checkpoints/last.pt every N steps (0: off)
    save_every_minutes: float = 10.0  # ... and when this many minutes passed since the last save (0: off)
    grad_checkpointing: bool = False
    grad_clip: float = 0.0
    device: str = "auto"
    num_threads: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at optimizer step ``step`` (0-based)."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decayed = self.decay_gamma ** ((step - self.warmup_steps) / max(1, self.decay_every))
        return max(decayed, self.min_lr_ratio)

    def total_steps(self, num_samples: int, world_size: int = 1) -> int:
        """Steps to run: ``steps``, or ``ceil(epochs * num_samples / global batch)``."""
        if self.steps is not None:
            return int(self.steps)
        assert self.epochs is not None
        return max(1, math.ceil(self.epochs * num_samples / (self.batch_size * world_size)))

    def validate(self, source: str = "config") -> "TrainConfig":
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"{source}: {msg}")

        if self.model not in MODEL_NAMES:
            raise bad(f"model {self.model!r} is not one of {', '.join(MODEL_NAMES)}")
        if self.prompt not in PROMPTS:
            raise bad(f"prompt {self.prompt!r} is not one of {', '.join(PROMPTS)}")
        if self.img_size < 16 or self.img_size % 16:
            raise bad(f"img_size {self.img_size} must be a positive multiple of 16")
        for name in ("batch_size", "decay_every", "log_every", "lora_rank", "prefetch_factor", "shuffle_block_shards"):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("warmup_steps", "checkpoint_every", "save_every_steps", "num_workers", "num_threads",
                     "box_jitter"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.steps is not None and self.epochs is not None:
            raise bad("give either steps or epochs, not both")
        if self.steps is not None and self.steps < 1:
            raise bad(f"steps must be >= 1 (got {self.steps})")
        if self.epochs is not None and self.epochs <= 0:
            raise bad(f"epochs must be > 0 (got {self.epochs})")
        if not self.save_every_minutes >= 0:
            raise bad(f"save_every_minutes must be >= 0 (got {self.save_every_minutes})")
        if not (self.lr > 0 and 0 < self.decay_gamma <= 1 and 0 <= self.min_lr_ratio <= 1):
            raise bad("need lr > 0, 0 < decay_gamma <= 1 and 0 <= min_lr_ratio <= 1")
        if self.ce_weight < 0 or self.dice_weight < 0 or self.ce_weight + self.dice_weight == 0:
            raise bad("ce_weight and dice_weight must be >= 0 and not both 0")
        if self.loss not in LOSSES:
            raise bad(f"loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.loss == "medsam" and self.prompt == "none":
            raise bad("loss medsam is MedSAM's prompted (binary) objective; --prompt none trains with ce_dice")
        if self.dice_reduction not in ("sample", "batch"):
            raise bad(f"dice_reduction {self.dice_reduction!r} is not one of sample, batch")
        from train.model.trainable import TRAINABLE_NAMES

        if self.trainable not in TRAINABLE_NAMES:
            raise bad(f"trainable {self.trainable!r} is not one of auto, {', '.join(TRAINABLE_NAMES)}")
        if self.frozen_encoder:
            from train.model.trainable import ENCODER_GROUPS, TRAINABLE_SETS

            if set(TRAINABLE_SETS[self.trainable].groups) & set(ENCODER_GROUPS):
                raise bad(f"frozen_encoder: the trainable set {self.trainable!r} adapts the image encoder; "
                          "use decoder_lora (the default) or another set without encoder groups")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise bad(f"device {self.device!r} must be auto, cpu or cuda[:N]")  # the names train.devices takes
        return self


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_AUG_FIELDS = {f.name for f in dataclasses.fields(AugmentConfig)}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file (same layout as default.json); ConfigError on any problem."""
    return read_json(path, what="config file", expect=dict, error=ConfigError)


_LEGACY_KEYS = {"train_decoder"}   # read, translated by _upgrade_legacy


def _upgrade_legacy(values: dict[str, Any]) -> None:
    """Translate keys of older configs in place: ``train_decoder`` lora/full/frozen -> ``trainable``.

    Runs saved before the named trainable sets keep loading with exactly the weights they trained
    (tiny always trained everything).
    """
    from train.model.trainable import LEGACY_TRAIN_DECODER

    if "train_decoder" not in values:
        return
    legacy = values.pop("train_decoder")
    if values.get("trainable", "auto") != "auto":
        return
    if values.get("model", "vit_b") == "tiny":
        values["trainable"] = "full"
    elif legacy in LEGACY_TRAIN_DECODER:
        values["trainable"] = LEGACY_TRAIN_DECODER[legacy]
    else:
        raise ConfigError(f"train_decoder {legacy!r} is not one of {', '.join(LEGACY_TRAIN_DECODER)} "
                          "(use the key trainable)")


def upgrade_config_dict(values: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config dict in today's keys (legacy keys translated, "auto" resolved)."""
    from train.model.trainable import default_trainable

    out = dict(values)
    _upgrade_legacy(out)
    if out.get("trainable", "auto") == "auto":
        out["trainable"] = default_trainable(out.get("model", "vit_b"), out.get("prompt", "point"),
                                             out.get("checkpoint"), bool(out.get("frozen_encoder")))
    return out


def _check_keys(layer: Mapping[str, Any], source: str) -> None:
    unknown = set(layer) - _FIELDS - _LEGACY_KEYS - {"models"} - {k for k in layer if k.startswith("_")}
    if unknown:
        raise ConfigError(f"{source}: unknown config key(s) {', '.join(sorted(unknown))}")
    aug = layer.get("augment")
    if aug is not None:
        if not isinstance(aug, dict):
            raise ConfigError(f"{source}: augment must be an object")
        bad = set(aug) - _AUG_FIELDS
        if bad:
            raise ConfigError(f"{source}: unknown augment key(s) {', '.join(sorted(bad))}")
    models = layer.get("models")
    if models is not None and not isinstance(models, dict):
        raise ConfigError(f"{source}: models must be an object of per-model sections")


def _apply(values: dict[str, Any], layer: Mapping[str, Any]) -> None:
    # A layer that sets only one of steps/epochs replaces the other (tiny's default steps must
    # not clash with "epochs" from a --config file).
    if layer.get("steps") is not None and "epochs" not in layer:
        values["epochs"] = None
    elif layer.get("epochs") is not None and "steps" not in layer:
        values["steps"] = None
    for key, value in layer.items():
        if key == "models" or key.startswith("_"):
            continue
        if key == "augment":
            values["augment"] = {**values.get("augment", {}), **value}
        else:
            values[key] = value


def resolve_config(config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                   base: Mapping[str, Any] | None = None) -> TrainConfig:
    """Resolve defaults -> per-model defaults -> config file (+ its per-model section) -> overrides.

    ``overrides`` holds flag values; keys whose value is None are ignored (flag not given).
    ``base`` replaces default.json (tests).
    """
    return config_from_dict(resolve_values(config_file, overrides, base), "resolved config")


def resolve_values(config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                   base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The layers of :func:`resolve_config` merged into one plain dict (keys checked, types not).

    Torch-free (``train.precheck`` reads the model and checkpoint from it before torch is
    imported); :func:`resolve_config` is this plus :func:`config_from_dict`.
    """
    from train.configs import DEFAULT_CONFIG

    layers: list[tuple[str, Mapping[str, Any]]] = [
        (str(DEFAULT_CONFIG), base if base is not None else read_config_file(DEFAULT_CONFIG))]
    if config_file is not None:
        layers.append((str(config_file), read_config_file(config_file)))
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "steps" in flags and "epochs" not in flags:
        flags["epochs"] = None  # a --steps flag replaces epochs from a file, and vice versa
    elif "epochs" in flags and "steps" not in flags:
        flags["steps"] = None
    for source, layer in layers:
        _check_keys(layer, source)
    _check_keys(flags, "command line")

    model = "vit_b"
    for _, layer in layers:
        model = layer.get("model", model)
    model = flags.get("model", model)

    values: dict[str, Any] = {}
    for source, layer in layers:
        _apply(values, layer)
        section = (layer.get("models") or {}).get(model)
        if section is not None:
            if not isinstance(section, dict):
                raise ConfigError(f"{source}: models.{model} must be an object")
            _check_keys(section, f"{source} (models.{model})")
            _apply(values, section)
    _apply(values, flags)
    values["model"] = model
    return values


def config_from_dict(values: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Build a TrainConfig from a plain dict (e.g. a saved config.json), with type checks."""
    values = dict(values)
    values.pop("models", None)
    _upgrade_legacy(values)
    aug = AugmentConfig(**{k: float(v) for k, v in (values.pop("augment", None) or {}).items()})
    _check_keys(values, source)
    values.pop("models", None)
    for k in [k for k in values if k.startswith("_")]:
        values.pop(k)
    try:
        cfg = TrainConfig(**values, augment=aug)
        for name in ("img_size", "lora_rank", "batch_size", "warmup_steps", "decay_every", "seed", "box_jitter",
                     "num_workers", "prefetch_factor", "shuffle_block_shards", "log_every",
                     "checkpoint_every", "save_every_steps", "num_threads"):
            v = getattr(cfg, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{source}: {name} must be an integer (got {v!r})")
        for name in ("frozen_encoder", "grad_checkpointing"):
            if not isinstance(getattr(cfg, name), bool):
                raise ConfigError(f"{source}: {name} must be true or false (got {getattr(cfg, name)!r})")
        if cfg.steps is not None:
            cfg.steps = _int(cfg.steps, "steps", source)
        for name in ("lr", "weight_decay", "decay_gamma", "min_lr_ratio", "ce_weight", "dice_weight", "grad_clip",
                     "save_every_minutes"):
            setattr(cfg, name, float(getattr(cfg, name)))
        if cfg.epochs is not None:
            cfg.epochs = float(cfg.epochs)
        cfg.betas = tuple(float(b) for b in cfg.betas)  # type: ignore[assignment]
        if len(cfg.betas) != 2:
            raise ConfigError(f"{source}: betas must be two numbers")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if cfg.trainable == "auto":
        from train.model.trainable import default_trainable

        cfg.trainable = default_trainable(cfg.model, cfg.prompt, cfg.checkpoint, cfg.frozen_encoder)
    return cfg.validate(source)


def _int(v: Any, name: str, source: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{source}: {name} must be an integer (got {v!r})")
    return v
