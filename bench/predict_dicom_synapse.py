"""DICOM in, DICOM SEG out (issue 31): `train predict` on the Synapse sample written as a DICOM CT series.

Writes the sample CT as a DICOM series (tests/dicomkit.py: shuffled file names, slope 0.5 /
intercept -1200, LPS geometry) and two prompt files in RAS mm made from its 8-organ ground truth
(tests/promptkit.py): (a) one tight box per organ on the slice where the organ is largest, (b) a
tight box on every slice holding the organ. Runs

    train predict --input DIR --prompts a.json --model lite_medsam --propagate --dicom-seg --out OUT/a
    train predict --input DIR --prompts b.json --model lite_medsam --dicom-seg --out OUT/b

as subprocesses (wall time measured), checks that each NIfTI's affine is the series' and that each
SEG references the series, and prints per-organ DSC (%) of both side by side as Markdown.

Usage:  python bench/predict_dicom_synapse.py [--root /work/shared/data/synapse_sample] [--out DIR]
            [--threads N] [--box-margin PX] [--min-pixels N] [--engine torch]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from bench.machine_info import cpu_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "synapse_sample"))
    ap.add_argument("--out", default=None, help="Working folder (default: a temporary one).")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--box-margin", type=float, default=None)
    ap.add_argument("--min-pixels", type=int, default=None)
    ap.add_argument("--engine", default="torch")
    args = ap.parse_args()

    import highdicom as hd

    from dicomkit import synapse_arrays, write_synapse_series
    from promptkit import box_prompts
    from shared.classmaps import SYNAPSE_MAP
    from shared.sources.dicom import read_dicom_series

    work = Path(args.out or tempfile.mkdtemp(prefix="predict_dicom_"))
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "case0001"
    if not folder.exists():
        write_synapse_series(folder, Path(args.root), extra_series=False)
    _, label13, affine = synapse_arrays(Path(args.root))
    gt = SYNAPSE_MAP.lut()[label13]
    organs = list(SYNAPSE_MAP.names[1:])
    _, series_affine, series = read_dicom_series(folder)
    train = str(Path(sys.executable).with_name("train"))
    rows = {}
    for mode, every, extra in (("a", False, ["--propagate"]), ("b", True, [])):
        prompts = work / f"prompts_{mode}.json"
        prompts.write_text(json.dumps(box_prompts(gt, affine, organs, every_slice=every), indent=1))
        if mode == "a":
            extra += [*(["--box-margin", str(args.box_margin)] if args.box_margin is not None else []),
                      *(["--min-pixels", str(args.min_pixels)] if args.min_pixels is not None else [])]
        cmd = [train, "predict", "--input", str(folder), "--prompts", str(prompts), "--model", "lite_medsam",
               *extra, "--dicom-seg", "--engine", args.engine, "--num-threads", str(args.threads),
               "--out", str(work / mode), "--overwrite"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
        img = nib.load(work / mode / "case0001.nii.gz")
        assert np.allclose(img.affine, series_affine, atol=1e-4), "NIfTI not aligned with the series"
        seg = hd.seg.segread(work / mode / "case0001.seg.dcm")
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
        pred = np.asarray(img.dataobj)
        dsc = {}
        for c, name in enumerate(organs, start=1):
            a, b = pred == c, gt == c
            dsc[name] = 100 * 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))
        n_prompts = len(json.loads(prompts.read_text())["prompts"])
        rows[mode] = {"dsc": dsc, "seconds": seconds, "prompts": n_prompts, "cmd": cmd,
                      "stdout": proc.stdout.strip().splitlines()[0]}
        print(proc.stdout.strip(), file=sys.stderr)

    names = {"a": "(a) one box per organ + --propagate", "b": "(b) a box on every slice"}
    short = [o.replace("_kidney", " kid.").replace("gallbladder", "gallbl.") for o in organs]
    print("| prompts | boxes | mean DSC | " + " | ".join(short) + " | time (s) |")
    print("|---|---|---|" + "---|" * len(organs) + "---|")
    for mode, r in rows.items():
        vals = [r["dsc"][o] for o in organs]
        print(f"| {names[mode]} | {r['prompts']} | {np.mean(vals):.2f} | " + " | ".join(f"{v:.2f}" for v in vals)
              + f" | {r['seconds']:.1f} |")
    print(f"\ndevice: {cpu_model()} ({platform.machine()}), {args.threads} torch thread(s), engine {args.engine}")
    for mode, r in rows.items():
        print(f"{mode}: {r['stdout']}")


if __name__ == "__main__":
    main()
