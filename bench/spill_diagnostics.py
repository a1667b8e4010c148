"""Where does a run's over-/under-segmentation come from? (issue 18; numbers in docs/evaluation.md)

Runs the model ONCE per prompted slice (centre and random prompt) and keeps the decoder's
low-resolution logits (64 x 64 for tiny at 128 px), then varies only the evaluation path on them,
without retraining:

* the resize path back to the slice: the eval's 64 -> 128 -> source bilinear, a direct bilinear,
  align_corners=True, thresholding at mask resolution then nearest upsampling;
* the threshold (logit 0 = p 0.5, and higher), and the expected volume (sum of probabilities);
* the prompt (centre point vs a random point of the class);
* oracles: the ground truth through the same resolutions (what resizing alone costs);
* per slice: predicted vs true area by ground-truth area bin and the log-log slope of predicted
  on true area (1 = sizes follow the truth; < 1 = sizes shrink toward a typical size);
* ``--zoom CROP``: small slices predicted again from a CROP x CROP window around the prompt
  resized to the model input, i.e. with a finer token grid on the object.

Volumes are scored over their prompted slices only (the eval's protocol: unprompted slices are
empty), with DSC and the pred/true volume ratio per volume.

Usage:
  python bench/spill_diagnostics.py --run RUN --dataset brats --root ../shared/data/brats2018_cohort \
      --split test [--cache logits.npz]
  python bench/spill_diagnostics.py --run RUN --shards OUT/fold-CBICA/data/test    # a CV fold's held-out site
  python bench/spill_diagnostics.py --run RUN --synthetic DATASET_DIR --n 300   # training distribution
  python bench/spill_diagnostics.py --run RUN --dataset brats --root ... --zoom 120  # resolution test
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.evaluate import prompt_point, volume_key  # noqa: E402
from train.inference import load_run_model  # noqa: E402
from train.testsets import open_shards_testset, open_source_testset  # noqa: E402
from train.resize import resize_image, scale_points  # noqa: E402

BINS = ((0, 100), (100, 300), (300, 1000), (1000, 3000), (3000, 10**7))


def _low_res(model, slices: list[np.ndarray], prompts: list[np.ndarray]) -> list[np.ndarray]:
    """Low-res logits (B, m, m) for each prompt set (B, 1, 2) at model scale, one encoder call."""
    s = model.img_size
    x = torch.from_numpy(np.stack([resize_image(im, s) for im in slices])).float().unsqueeze(1)
    emb = model.encode(x)
    out = []
    for p in prompts:
        labels = torch.ones(len(p), 1, dtype=torch.long)
        sparse, dense = model.sam.prompt_encoder(points=(torch.from_numpy(p).float(), labels), boxes=None,
                                                 masks=None)
        low = model._decode_masks(emb, sparse, dense.expand(len(p), -1, -1, -1))[:, 0]
        out.append(low.numpy().astype(np.float32))
    return out


def _points(masks: list[np.ndarray], mode: str, img_size: int, keys: list[tuple[int, int]]) -> np.ndarray:
    return np.stack([scale_points(np.asarray([prompt_point(m, mode, 0, vk, k, 1)]), m.shape, img_size)
                     for m, (vk, k) in zip(masks, keys)]).astype(np.float32)


def collect_source(model, dataset: str, root: str, split: str, max_volumes: int | None,
                   shards: str | None = None) -> dict:
    """The test volumes of a source split, or of a `synth pack` folder (``shards``: e.g. a
    cross-validation fold's held-out site, bench/cross_site.py)."""
    ts = open_shards_testset(shards) if shards else open_source_testset(dataset, root, split)
    rec: dict[str, list] = {"vol": [], "gt": [], "lc": [], "lr": []}
    for vid in ts.volume_ids[:max_volumes]:
        vol = ts.load(vid)
        ks = np.flatnonzero(vol.label.reshape(len(vol.label), -1).any(1))
        vk = volume_key(vid)
        for b in range(0, len(ks), 8):
            kk = [int(k) for k in ks[b:b + 8]]
            masks = [vol.label[k] > 0 for k in kk]
            keys = [(vk, k) for k in kk]
            lc, lr = _low_res(model, [vol.image[k] for k in kk],
                              [_points(masks, "center", model.img_size, keys),
                               _points(masks, "random", model.img_size, keys)])
            rec["vol"] += [vid] * len(kk)
            rec["gt"] += masks
            rec["lc"] += list(lc)
            rec["lr"] += list(lr)
        print(f"  {vid}: {len(ks)} slices", file=sys.stderr, flush=True)
    return rec


def collect_synthetic(model, directory: str, n: int) -> dict:
    """n random samples of a `synth build` dataset, grouped 50 to a pseudo-volume."""
    from shared import open_dataset

    ds = open_dataset(directory)
    picks = np.sort(np.random.default_rng(0).choice(len(ds.ids), min(n, len(ds.ids)), replace=False))
    images, masks, cache = [], [], {}
    for i in picks:
        k, j = ds.shard_of(int(i))
        if k not in cache:
            cache = {k: ds.shard_arrays(k)}
        im, lb, sz = cache[k]
        h, w = int(sz[j, 0]), int(sz[j, 1])
        if (lb[j, :h, :w] > 0).any():
            images.append(np.asarray(im[j, :h, :w], np.float32))
            masks.append(lb[j, :h, :w] > 0)
    rec: dict[str, list] = {"vol": [], "gt": [], "lc": [], "lr": []}
    for b in range(0, len(images), 8):
        mm = masks[b:b + 8]
        keys = [(0, b + j) for j in range(len(mm))]
        lc, lr = _low_res(model, images[b:b + 8], [_points(mm, "center", model.img_size, keys),
                                                   _points(mm, "random", model.img_size, keys)])
        rec["vol"] += [f"synthetic{(b + j) // 50}" for j in range(len(mm))]
        rec["gt"] += mm
        rec["lc"] += list(lc)
        rec["lr"] += list(lr)
    return rec


def _up(logits: np.ndarray, size: tuple[int, int], align_corners: bool = False) -> np.ndarray:
    t = torch.from_numpy(np.asarray(logits, np.float32))[:, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=align_corners)[:, 0].numpy()


def _nearest(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.stack([cv2.resize(m.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST_EXACT)
                     for m in masks]) > 0


def score(vols: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> tuple[float, float, list[float]]:
    """(mean volume DSC, median volume ratio, ratios) over the pseudo-volumes."""
    dsc, ratio = [], []
    for v in dict.fromkeys(vols.tolist()):
        s = vols == v
        p, g = pred[s], gt[s]
        dsc.append(2 * np.count_nonzero(p & g) / (np.count_nonzero(p) + np.count_nonzero(g)))
        ratio.append(np.count_nonzero(p) / np.count_nonzero(g))
    return float(np.mean(dsc)), float(np.median(ratio)), ratio


def report(d: dict, model_size: int) -> str:
    vols, gt = np.asarray(d["vol"]), np.stack(d["gt"])
    hw = gt.shape[1:]
    lc, lr = np.stack(d["lc"]), np.stack(d["lr"])
    m = lc.shape[-1]
    lines = ["| eval path variant | mean DSC | median pred/true | per-volume ratios |", "|:---|---:|---:|:---|"]

    def row(name: str, pred: np.ndarray) -> None:
        dsc, med, ratios = score(vols, gt, pred)
        lines.append(f"| {name} | {dsc:.4f} | {med:.3f} | {' '.join(f'{r:.2f}' for r in ratios)} |")

    cur = _up(_up(lc, (model_size, model_size)), hw)
    row(f"eval as is: {m} -> {model_size} -> {hw[0]} bilinear, logit > 0 (centre prompt)", cur > 0)
    row(f"direct {m} -> {hw[0]} bilinear", _up(lc, hw) > 0)
    row("align_corners=True (both steps)", _up(_up(lc, (model_size, model_size), True), hw, True) > 0)
    row(f"threshold at {m}, nearest to {hw[0]}", _nearest(lc > 0, hw))
    row(f"threshold at {model_size}, nearest to {hw[0]}", _nearest(_up(lc, (model_size, model_size)) > 0, hw))
    for t in (-1.0, 0.5, 1.0, 2.0):
        row(f"logit > {t:+.1f} (p > {1 / (1 + np.exp(-t)):.2f})", cur > t)
    row("random prompt instead of centre", _up(_up(lr, (model_size, model_size)), hw) > 0)
    prob = 1 / (1 + np.exp(-cur))
    ev = [prob[vols == v].sum() / gt[vols == v].sum() for v in dict.fromkeys(vols.tolist())]
    lines.append(f"| expected volume (sum of p) | | {np.median(ev):.3f} | |")
    g8 = gt.astype(np.uint8)
    for s in (model_size, m):
        small = np.stack([cv2.resize(x, (s, s), interpolation=cv2.INTER_NEAREST_EXACT) for x in g8])
        row(f"oracle: ground truth -> {s} (nearest) -> {hw[0]} bilinear", _up(small - 0.5, hw) > 0)
    small = np.stack([cv2.resize(x, (model_size, model_size), interpolation=cv2.INTER_NEAREST) for x in g8])
    row(f"oracle: ground truth -> {model_size} (cv2 INTER_NEAREST) -> {hw[0]} bilinear", _up(small - 0.5, hw) > 0)

    pred = cur > 0
    ga = gt.reshape(len(gt), -1).sum(1)
    pa = pred.reshape(len(gt), -1).sum(1)
    inter = (pred & gt).reshape(len(gt), -1).sum(1)
    lines += ["", "| ground-truth area (px) | slices | sum true | sum predicted | ratio | mean slice DSC |",
              "|:---|---:|---:|---:|---:|---:|"]
    for lo, hi in BINS:
        s = (ga >= lo) & (ga < hi)
        if s.any():
            lines.append(f"| {lo}-{hi if hi < 10**7 else ''} | {s.sum()} | {ga[s].sum()} | {pa[s].sum()} | "
                         f"{pa[s].sum() / ga[s].sum():.2f} | {np.mean(2 * inter[s] / (pa[s] + ga[s])):.3f} |")
    ok = pa > 0
    b, a = np.polyfit(np.log(ga[ok]), np.log(pa[ok]), 1)
    lines += ["", f"log(predicted area) = {a:.2f} + {b:.2f} log(true area) over {ok.sum()} slices "
              f"({(~ok).sum()} predicted empty); predicted = true at {np.exp(a / (1 - b)):.0f} px"
              if b != 1 else ""]
    return "\n".join(lines) + "\n"


def zoom_test(model, dataset: str, root: str, split: str, crop: int, max_area: int = 1000) -> str:
    """Resolution test: slices whose ground truth is under ``max_area`` px, predicted again from a
    ``crop`` x ``crop`` window around the centre prompt resized to the model input (a 240 / crop
    zoom: a token then covers crop / tokens source pixels instead of 240 / tokens)."""
    ts = open_source_testset(dataset, root, split)
    s = model.img_size

    def predict(img: np.ndarray, xy: tuple[float, float]) -> np.ndarray:
        x = torch.from_numpy(resize_image(img, s))[None, None].float()
        p = torch.from_numpy(scale_points(np.asarray([xy]), img.shape, s))[None].float()
        logits = model.decode(model.encode(x), p, torch.ones(1, 1, dtype=torch.long))
        return F.interpolate(logits, size=img.shape, mode="bilinear", align_corners=False)[0, 0].numpy() > 0

    rows = []
    for vid in ts.volume_ids:
        vol = ts.load(vid)
        h, w = vol.label.shape[1:]
        for k in np.flatnonzero(vol.label.reshape(len(vol.label), -1).any(1)):
            g = vol.label[k] > 0
            if g.sum() >= max_area:
                continue
            x, y = prompt_point(g, "center", 0, volume_key(vid), int(k), 1)
            full = predict(vol.image[k], (x, y))
            x0, y0 = int(np.clip(x - crop // 2, 0, w - crop)), int(np.clip(y - crop // 2, 0, h - crop))
            zoomed = np.zeros_like(g)
            zoomed[y0:y0 + crop, x0:x0 + crop] = predict(vol.image[k][y0:y0 + crop, x0:x0 + crop], (x - x0, y - y0))
            rows.append((g.sum(), full.sum(), zoomed.sum(), (full & g).sum(), (zoomed & g).sum()))
    r = np.asarray(rows, np.float64)
    lines = [f"| ground-truth area (px) | slices | pred/true, whole slice | pred/true, {crop} px crop | "
             "slice DSC, whole | slice DSC, crop |", "|:---|---:|---:|---:|---:|---:|"]
    for lo, hi in BINS[:3]:
        b = (r[:, 0] >= lo) & (r[:, 0] < hi)
        if b.any():
            lines.append(f"| {lo}-{hi} | {b.sum()} | {r[b, 1].sum() / r[b, 0].sum():.2f} | "
                         f"{r[b, 2].sum() / r[b, 0].sum():.2f} | {np.mean(2 * r[b, 3] / (r[b, 0] + r[b, 1])):.3f} | "
                         f"{np.mean(2 * r[b, 4] / (r[b, 0] + r[b, 2])):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--dataset", default="brats")
    ap.add_argument("--root")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-volumes", type=int)
    ap.add_argument("--shards", help="a `synth pack` folder of test volumes instead of --dataset/--root/--split")
    ap.add_argument("--synthetic", help="a `synth build` dataset: score its samples instead")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--cache", help="npz of the collected logits (reused when it exists)")
    ap.add_argument("--zoom", type=int, metavar="CROP",
                    help="instead: the resolution test on slices under 1000 px, from CROP x CROP crops")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_run_model(args.run).model.eval()
    t0 = time.perf_counter()
    if args.zoom:
        with torch.inference_mode():
            print(zoom_test(model, args.dataset, args.root, args.split, args.zoom))
        return
    if args.cache and Path(args.cache).is_file():
        z = np.load(args.cache)
        d = {k: list(z[k]) for k in ("vol", "gt", "lc", "lr")}
    else:
        with torch.inference_mode():
            d = (collect_synthetic(model, args.synthetic, args.n) if args.synthetic
                 else collect_source(model, args.dataset, args.root, args.split, args.max_volumes, args.shards))
        if args.cache:
            np.savez_compressed(args.cache, vol=np.asarray(d["vol"]), gt=np.stack(d["gt"]),
                                lc=np.stack(d["lc"]).astype(np.float16), lr=np.stack(d["lr"]).astype(np.float16))
    print(f"{len(d['gt'])} prompted slices, model run in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(report(d, model.img_size))


if __name__ == "__main__":
    main()
