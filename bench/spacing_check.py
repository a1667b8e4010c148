"""Issue 30, item 4: does a common in-plane pixel spacing let 3 mm exemplars teach a finer scan?

Stages (each skips what is already there under --work):
  copies  the Synapse sample (3 mm pixels) resampled in-plane to 1 mm and 0.7 mm, written as
          Synapse layouts (RawData/Training/img + label, NIfTI with the resampled affines) under
          --work (never into the project or the data folder): images linear, labels nearest
          (shared.spacing), the slice axis untouched.
  build   synth build --dataset synapse --root SAMPLE --split all --exemplars 1 --seed 0 (3 mm, native)
  fit     train fit --model tiny --steps N --seed 0 --num-threads 1 on it
  eval    train eval of that run on 3 mm / 1 mm / 0.7 mm, --spacing native and --spacing 3
          (optionally also --model lite_medsam --adapter models/synapse-1-exemplar)
  table   the Markdown table of docs/spacing.md

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python bench/spacing_check.py --work /tmp/spacing_check --steps 2000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EXEMPLAR_SAM_DATA", ROOT.parent / "shared" / "data"))
BIN = Path(sys.executable).parent
COPIES = {"3mm": None, "1mm": 1.0, "0.7mm": 0.7}
ARMS = ("native", "3")


def write_copy(sample: Path, out: Path, mm: float) -> None:
    """The sample's volumes resampled in-plane to ``mm``, same layout and file names."""
    import nibabel as nib

    from shared.spacing import resample_image, resample_label, target_geometry

    for sub in ("img", "label"):
        (out / "RawData" / "Training" / sub).mkdir(parents=True, exist_ok=True)
    for img_file in sorted((sample / "RawData" / "Training" / "img").glob("img*.nii.gz")):
        lab_file = img_file.parent.parent / "label" / img_file.name.replace("img", "label", 1)
        img, lab = nib.load(str(img_file)), nib.load(str(lab_file))
        raw = np.asarray(img.dataobj).transpose(2, 1, 0)  # (S, R, C)
        labels = np.asarray(lab.dataobj).astype(np.uint8).transpose(2, 1, 0)
        zooms = img.header.get_zooms()[:3]
        out_hw, spacing, affine = target_geometry(raw.shape, (zooms[2], zooms[1], zooms[0]), img.affine, mm)
        hu = np.rint(resample_image(raw.astype(np.float32), out_hw)).astype(np.int16)
        for arr, src, name, dtype in ((hu, img, img_file.name, np.int16),
                                      (resample_label(labels, out_hw), lab, lab_file.name, np.uint8)):
            nii = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)).astype(dtype), affine)
            nii.header.set_zooms((spacing[2], spacing[1], spacing[0]))
            nii.set_qform(affine, code=1)
            nii.set_sform(affine, code=1)
            sub = "img" if dtype is np.int16 else "label"
            nib.save(nii, str(out / "RawData" / "Training" / sub / name))


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/spacing_check"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", default="copies,build,fit,eval,table")
    ap.add_argument("--lite", action="store_true", help="also evaluate models/synapse-1-exemplar (LiteMedSAM)")
    args = ap.parse_args()
    work, stages = args.work.resolve(), set(args.stages.split(","))
    sample = DATA / "synapse_sample"
    if work.is_relative_to(ROOT) or work.is_relative_to(DATA):
        sys.exit(f"--work {work}: write the copies outside the project and the data folder")
    roots = {name: sample if mm is None else work / f"synapse_{name}" for name, mm in COPIES.items()}
    if "copies" in stages:
        for name, mm in COPIES.items():
            if mm is not None and not (roots[name] / "RawData").exists():
                write_copy(sample, roots[name], mm)
    build, rundir = work / "syn3mm_build", work / "run_tiny_3mm"
    if "build" in stages and not (build / "dataset.json").exists():
        run([str(BIN / "synth"), "build", "--dataset", "synapse", "--root", str(sample), "--split", "all",
             "--exemplars", "1", "--seed", str(args.seed), "--workers", "1", "--no-progress", "--out", str(build)])
    if "fit" in stages and not (rundir / "summary.json").exists():
        run([str(BIN / "train"), "fit", "--shards", str(build), "--model", "tiny", "--steps", str(args.steps),
             "--seed", str(args.seed), "--num-threads", "1", "--num-workers", "0", "--no-progress", "--out", str(rundir)])
    models = {"tiny": ["--run", str(rundir)]}
    if args.lite:
        models["lite_medsam"] = ["--model", "lite_medsam", "--adapter", str(ROOT / "models" / "synapse-1-exemplar")]
    if "eval" in stages:
        for model, flags in models.items():
            for name in COPIES:
                for arm in ARMS:
                    out = work / f"eval_{model}_{name}_{arm}"
                    if (out / "summary.json").exists():
                        continue
                    run([str(BIN / "train"), "eval", *flags, "--dataset", "synapse", "--root", str(roots[name]),
                         "--split", "all", "--prompt", "center", "--spacing", arm, "--num-threads", "1",
                         "--no-progress", "--out", str(out)])
    if "table" in stages:
        print("| model | test copy (in-plane) | slice size | --spacing | model sees | DSC (%) | HD95 (mm) | "
              "spleen | r kidney | l kidney | gallbl. | liver | stomach | aorta | pancreas |")
        print("|---|---|---|---|---|---|---|" + "---|" * 8)
        for model in models:
            for name in COPIES:
                for arm in ARMS:
                    f = work / f"eval_{model}_{name}_{arm}" / "summary.json"
                    if not f.exists():
                        continue
                    s = json.loads(f.read_text())
                    size = _slice_size(roots[name])
                    seen = size if arm == "native" else "122 x 101"
                    organs = " | ".join(f"{100 * v['dsc']:.1f}" if v["dsc"] is not None else "-"
                                        for v in s["per_class"].values())
                    print(f"| {model} | {name} | {size} | {s['spacing']} | {seen} | {100 * s['mean_dsc']:.2f} | "
                          f"{s['mean_hd95']:.2f} | {organs} |")


def _slice_size(root: Path) -> str:
    import nibabel as nib

    f = next((root / "RawData" / "Training" / "img").glob("img*.nii.gz"))
    shape = nib.load(str(f)).shape
    return f"{shape[0]} x {shape[1]}"


if __name__ == "__main__":
    main()
