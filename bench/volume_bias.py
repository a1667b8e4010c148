"""Where does a cross-validation's volume bias come from? (issue 30; numbers in docs/cross_site.md)

Reads a finished `bench/experiment.py` cross-validation folder (OUT/fold-*/data/test: the packed
held-out volumes the evaluation scored; OUT/fold-*/seed-*/evals/NAME/cases.csv: its per-volume
rows) and splits the median predicted/true volume ratio by three candidate causes, with no model
run:

* **unreached components**: the one-click protocol puts one point per class per slice (the
  pixel farthest from the border, train.prompts.center_point); the share of each volume's ground
  truth in the 2-D components (8-connected) that hold no click is what a click cannot point at.
  `ideal` = 1 - that share: the ratio of a model that segments exactly the clicked components
  (the centre click's; random-prompt evaluations are held against the same reference).
* **a size prior**: the slope of log predicted on log true volume across volumes (1 = sizes
  follow the truth; < 1 = small tumours grow and large ones shrink toward a typical size), and
  the median ratio of the smaller and the larger half of the volumes.
* **what is left**: a ratio below `ideal` on small and large volumes alike is a bias of the
  boundary itself (the model stops inside the true border: MSSD < 0 in cases.csv).

Usage:
  python bench/volume_bias.py runs/cv-sites-lm                       # every evaluation found
  python bench/volume_bias.py runs/cv-sites-lm --eval synth_150_center --json bias.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def unreached_share(mask: np.ndarray) -> float:
    """Share of the voxels of one class's boolean mask (S, R, C) in 2-D components that hold no
    centre click (one per slice, where `train eval --prompt center` places it); nan if empty."""
    from train.prompts import center_point

    total = outside = 0
    for k in np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1)):
        plane = mask[k]
        _, components = cv2.connectedComponents(plane.astype(np.uint8), connectivity=8)
        x, y = center_point(plane)
        area = int(plane.sum())
        total += area
        outside += area - int((components == components[y, x]).sum())
    return outside / total if total else math.nan


@dataclass
class Bias:
    """One evaluation (e.g. synth_150_center) over every fold and seed found."""

    eval: str
    rows: int                 # (volume, class, seed) rows
    median_ratio: float
    median_ideal: float       # 1 - unreached share: a perfect model of the clicked components
    median_ratio_to_ideal: float
    corr_unreached_ratio: float
    size_slope: float         # log predicted on log true volume
    median_ratio_smaller_half: float
    median_ratio_larger_half: float
    median_mssd: float        # < 0: the prediction's border lies inside the truth's


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and a.std() > 0 and b.std() > 0 else math.nan


def summarise(name: str, rows: list[dict]) -> Bias:
    gt = np.array([r["gt_voxels"] for r in rows], float)
    pred = np.array([r["pred_voxels"] for r in rows], float)
    ratio = np.array([r["volume_ratio"] for r in rows], float)
    ideal = 1.0 - np.array([r["unreached"] for r in rows], float)
    mssd = np.array([r["mssd"] for r in rows], float)
    ok = (gt > 0) & (pred > 0)
    slope = float(np.polyfit(np.log(gt[ok]), np.log(pred[ok]), 1)[0]) if ok.sum() > 2 else math.nan
    larger = gt > np.median(gt)
    return Bias(name, len(rows), float(np.median(ratio)), float(np.median(ideal)), float(np.median(ratio / ideal)),
                _corr(1.0 - ideal, ratio), slope, float(np.median(ratio[~larger])), float(np.median(ratio[larger])),
                float(np.nanmedian(mssd)) if np.isfinite(mssd).any() else math.nan)


def collect(out: Path, only: list[str] | None = None) -> dict[str, list[dict]]:
    """{evaluation name: rows} over OUT/fold-*/seed-*/evals/*/cases.csv, each row joined with the
    unreached share of its held-out volume (computed once per fold and volume)."""
    from bench.experiment_tables import read_cases
    from train.testsets import open_shards_testset

    folds = sorted(p for p in out.glob("fold-*") if (p / "data" / "test" / "dataset.json").exists())
    if not folds:
        raise SystemExit(f"error: {out}: no fold-*/data/test/dataset.json (not a finished cross-validation folder)")
    by_eval: dict[str, list[dict]] = {}
    for fold in folds:
        cases = sorted(fold.glob("seed-*/evals/*/cases.csv"))
        cases = [c for c in cases if only is None or c.parent.name in only]
        if not cases:
            continue
        testset = open_shards_testset(fold / "data" / "test")
        classes = {name: i for i, name in enumerate(testset.class_names)}
        shares: dict[tuple[str, str], float] = {}
        for vid in testset.volume_ids:
            label = testset.load(vid).label
            for name, c in classes.items():
                if c:
                    shares[(vid, name)] = unreached_share(label == c)
        for path in cases:
            seed = int(path.parents[2].name.split("-", 1)[1])
            for r in read_cases(path.parent):
                key = (r["volume"], r["class"])
                if key in shares and math.isfinite(r["volume_ratio"]):
                    by_eval.setdefault(path.parent.name, []).append(
                        {**r, "fold": fold.name.removeprefix("fold-"), "seed": seed, "unreached": shares[key]})
    if not by_eval:
        raise SystemExit(f"error: {out}: no finished evaluation (seed-*/evals/*/cases.csv)"
                         + (f" named {only}" if only else ""))
    return by_eval


def table(biases: list[Bias]) -> str:
    head = ("| evaluation | rows | median vol. ratio | median ideal (1 - unreached) | median ratio / ideal | "
            "corr(unreached, ratio) | size slope | ratio, smaller half | ratio, larger half | median MSSD |")
    lines = [head, "|" + "---|" * 10]
    for b in biases:
        lines.append(f"| {b.eval} | {b.rows} | {b.median_ratio:.3f} | {b.median_ideal:.3f} | "
                     f"{b.median_ratio_to_ideal:.3f} | {b.corr_unreached_ratio:+.2f} | {b.size_slope:.2f} | "
                     f"{b.median_ratio_smaller_half:.3f} | {b.median_ratio_larger_half:.3f} | {b.median_mssd:+.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="a cross-validation folder of bench/experiment.py (holds fold-*)")
    parser.add_argument("--eval", nargs="+", default=None, metavar="NAME",
                        help="only these evaluations (folder names under seed-*/evals, e.g. synth_150_center)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summaries and every row here")
    args = parser.parse_args(argv)
    by_eval = collect(args.out, args.eval)
    biases = [summarise(name, rows) for name, rows in sorted(by_eval.items())]
    print(table(biases))
    if args.json:
        args.json.write_text(json.dumps({"out": str(args.out), "summaries": [asdict(b) for b in biases],
                                         "rows": by_eval}, indent=1) + "\n")


if __name__ == "__main__":
    main()
