"""Trainable parameters per named set and group for every model (docs/model.md's table).

Models are assembled on PyTorch's "meta" device (shapes only, no memory, no init time), so vit_h
counts are exact and instant. Counts do not depend on --img-size except the encoder's position
tables, which no set trains; totals are given at each model's checkpoint size (1024 for vit_*).

    PYTHONPATH=. python bench/count_trainable.py [--rank 4] [--num-classes K]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.model import MODEL_SPECS, TRAINABLE_NAMES, apply_trainable_set, assemble_sam  # noqa: E402
from train.model.trainable import GROUPS  # noqa: E402


def counts(model: str, set_name: str, rank: int, num_classes: int | None) -> tuple[dict, int]:
    spec = MODEL_SPECS[model]
    with torch.device("meta"):
        sam = assemble_sam(spec, spec.checkpoint_img_size, num_classes)
        groups = apply_trainable_set(sam, set_name, rank=rank)
    total = sum(p.numel() for p in sam.parameters())
    return groups, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--num-classes", type=int, default=None,
                    help="promptless head with K+1 mask tokens (default: SAM's own 3+1)")
    args = ap.parse_args()
    print("| model | set | trainable | share | " + " | ".join(GROUPS) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(GROUPS))
    for model in MODEL_SPECS:
        for name in TRAINABLE_NAMES:
            groups, total = counts(model, name, args.rank, args.num_classes)
            n = sum(groups.values())
            cells = [f"{groups.get(g, 0):,}" for g in GROUPS]
            print(f"| {model} | {name} | {n:,} | {100 * n / total:.2f} % | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
