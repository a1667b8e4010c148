"""How much DSC the model's mask grid alone can cost: the ground truth through a round trip.

    python bench/resolution_ceiling.py [--data-root ../shared/data] [--grids 64,128,256]

For the held-out cases of the leave-site-out folds (data_manifests/splits/brats2018_cohort_sites.json),
each slice's whole-tumour mask is area-averaged onto an r x r grid (what a model whose masks are
r x r could at best represent; the tiny model at 128 px predicts 64 x 64 masks: 16 x 16 tokens
upscaled 4x by SAM's mask decoder), resized back bilinearly and thresholded at 0.5, as `train
eval` brings logits back to the slice. The per-volume DSC of that against the ground truth is the
ceiling any model with that mask grid has (issue 30 item 2: "the 16 x 16 token grid at 128 px").
Prints one markdown row per case and the mean / minimum per grid.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def round_trip_dsc(labels: np.ndarray, grid: int) -> float:
    """Per-volume DSC of ``labels`` (S, H, W) bool against their r x r round trip."""
    inter = total = 0
    for mask in labels:
        if not mask.any():
            continue
        small = cv2.resize(mask.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA)
        back = cv2.resize(small, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR) > 0.5
        inter += int(np.count_nonzero(back & mask))
        total += int(np.count_nonzero(back)) + int(np.count_nonzero(mask))
    return 2.0 * inter / total if total else float("nan")


def main() -> None:
    from bench.cross_site import load_folds
    from shared.sources import open_source

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, default=Path(os.environ.get("EXEMPLAR_SAM_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--folds", type=Path, default=ROOT / "data_manifests" / "splits" / "brats2018_cohort_sites.json")
    ap.add_argument("--grids", default="64,128,256")
    args = ap.parse_args()
    grids = [int(g) for g in args.grids.split(",")]
    folds = load_folds(args.folds)
    source = open_source("brats", args.data_root / "brats2018_cohort")
    print("| Fold | Case | tumour voxels | " + " | ".join(f"DSC % at {g} x {g}" for g in grids) + " |")
    print("|:---|:---|---:|" + "---:|" * len(grids))
    values: dict[int, list[float]] = {g: [] for g in grids}
    for fold in folds.folds:
        for case in fold.test:
            labels = source.load_labels(case) > 0
            row = [round_trip_dsc(labels, g) for g in grids]
            for g, v in zip(grids, row):
                values[g].append(v)
            print(f"| {fold.name} | {case} | {int(labels.sum())} | " + " | ".join(f"{100 * v:.2f}" for v in row) + " |",
                  flush=True)
    for name, fn in (("mean", statistics.fmean), ("minimum", min)):
        print(f"| all | {name} | | " + " | ".join(f"{100 * fn(values[g]):.2f}" for g in grids) + " |")


if __name__ == "__main__":
    main()
