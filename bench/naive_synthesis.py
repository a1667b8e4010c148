"""The straightforward baselines for the build benchmark: same draws, scipy.ndimage, one .npz per sample.

Two variants, both making the same random choices as ``synth.synthesis.sample.synthesize`` (same exemplar,
background, parameters and placement rules; ``synth.synthesis.sample.synthesize_with`` with other renderers),
rendering on whole frames with scipy.ndimage and writing each sample with ``np.savez_compressed``
(image float16, label uint8, the record as JSON):

* ``"chained"`` -- what a first research implementation typically looks like: one ndimage call per
  transform, each on the whole frame: ``ndimage.shift`` to bring the object's centre to the frame
  centre, ``np.flip``, ``ndimage.zoom`` (then a centred crop/pad back to the frame size),
  ``ndimage.rotate(reshape=False)``, ``ndimage.shift`` to the destination, ``gaussian_filter``;
  images with scipy's default spline order (3, with its prefilter), labels with order 0.
  It approximates the fast path's geometry (integer crop/pad after the zoom may put an object
  half a pixel off; cubic instead of linear interpolation).
* ``"single-affine"`` -- already an optimised scipy version: each object rendered with ONE
  ``ndimage.affine_transform`` (the inverse of the combined matrix, order 1, no prefilter),
  ``gaussian_filter``, ``binary_dilation``. It agrees with the fast path to < 1e-3 per pixel (a
  test checks it), so it is also an independent check of the affine conventions.

    from bench.naive_synthesis import build_naive
    stats = build_naive(bank, config, "single", n=500, seed=0, out_dir="/tmp/naive", variant="chained")

Run as a script for a quick per-sample timing on the procedural phantoms:
    python bench/naive_synthesis.py --n 200 [--variant chained]
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from synth.synthesis.bank import SliceBank, SliceRef
from synth.synthesis.sample import synthesize_with
from synth.synthesis.config import SynthesisConfig
from synth.synthesis.transforms import TransformParams, forward_affine


def _scipy_warp(src: np.ndarray, a: np.ndarray, b: np.ndarray, out_shape: tuple[int, int], order: int) -> np.ndarray:
    """Whole-frame warp of the forward map p_dst = a @ p_src + b ((x, y) coordinates)."""
    ai = np.linalg.inv(a)
    bi = -ai @ b
    # scipy works in (row, col): swap axes of the inverse map.
    matrix = ai[::-1, ::-1]
    offset = bi[::-1]
    return ndimage.affine_transform(src, matrix, offset=offset, output_shape=out_shape, order=order,
                                    mode="constant", cval=0.0, prefilter=False)


def _photometric(img: np.ndarray, p: TransformParams) -> np.ndarray:
    if p.blur_sigma > 0:
        img = ndimage.gaussian_filter(img, p.blur_sigma, mode="mirror", truncate=4.0)
    img = np.power(np.clip(img, 0.0, 1.0), p.gamma) * p.gain + p.shift
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def naive_render_background(src: np.ndarray, params: TransformParams, center: tuple[float, float],
                            nonzero=None) -> np.ndarray:
    fwd = forward_affine(params, center, src.shape, src.shape)
    return _photometric(_scipy_warp(src, fwd.a, fwd.b, src.shape, 1), params)


def naive_paste_record(image: np.ndarray, label: np.ndarray, obj: dict, bank: SliceBank, feather: bool) -> None:
    ref = SliceRef.from_json(obj["ref"])
    src_img, src_lab = bank.exemplar(ref)
    params = TransformParams.from_dict(obj["params"])
    fwd = forward_affine(params, tuple(obj["center"]), src_img.shape, image.shape)
    a, b = fwd.a, fwd.b
    cls = obj.get("class")
    src_obj = src_lab if cls is None else (src_lab == cls).astype(np.uint8) * np.uint8(cls)
    lab = _scipy_warp(src_obj, a, b, image.shape, 0)
    mask = lab > 0
    if not mask.any():
        return
    warped = _photometric(_scipy_warp(src_img, a, b, image.shape, 1), params)
    if feather:
        ring = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool)) & ~mask
        image[ring] = 0.5 * (image[ring] + warped[ring])
    image[mask] = warped[mask]
    label[mask] = lab[mask]


# ---------------------------------------------------------------------------------------------
# "chained": one whole-frame ndimage call per transform


def _crop_pad(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre ``img`` in a zero frame of ``shape`` (cropping what sticks out), integer offsets."""
    out = np.zeros(shape, dtype=img.dtype)
    src, dst = [], []
    for n_in, n_out in zip(img.shape, shape):
        if n_in >= n_out:
            o = (n_in - n_out) // 2
            src.append(slice(o, o + n_out))
            dst.append(slice(0, n_out))
        else:
            o = (n_out - n_in) // 2
            src.append(slice(0, n_in))
            dst.append(slice(o, o + n_in))
    out[tuple(dst)] = img[tuple(src)]
    return out


def _chain(img: np.ndarray, p: TransformParams, center: tuple[float, float], out_shape: tuple[int, int],
           order: int) -> np.ndarray:
    """Flip, scale and rotate about ``center`` (x, y in source pixels), then translate, as separate
    whole-frame ndimage calls. (row, col) order, as scipy wants it."""
    hs, ws = img.shape
    h, w = out_shape
    if (hs, ws) != (h, w):  # the exemplar's frame resampled to the background's
        img = _crop_pad(ndimage.zoom(img, (h / hs, w / ws), order=order), (h, w))
    cx = (center[0] + 0.5) * w / ws - 0.5
    cy = (center[1] + 0.5) * h / hs - 0.5
    fx, fy = (w - 1) / 2.0, (h - 1) / 2.0
    if (cx, cy) != (fx, fy):
        img = ndimage.shift(img, (fy - cy, fx - cx), order=order)  # object centre -> frame centre
    if p.flip_h:
        img = np.flip(img, 1)
    if p.flip_v:
        img = np.flip(img, 0)
    if p.scale != 1.0:
        img = _crop_pad(ndimage.zoom(img, p.scale, order=order), (h, w))
    if p.rotation != 0.0:
        img = ndimage.rotate(img, p.rotation, reshape=False, order=order)
    dy, dx = cy + p.ty - fy, cx + p.tx - fx
    if (dx, dy) != (0.0, 0.0):
        img = ndimage.shift(img, (dy, dx), order=order)  # frame centre -> destination
    return np.ascontiguousarray(img)


def _chained_photometric(img: np.ndarray, p: TransformParams) -> np.ndarray:
    if p.blur_sigma > 0:
        img = ndimage.gaussian_filter(img, p.blur_sigma)
    img = np.power(np.clip(img, 0.0, 1.0), p.gamma) * p.gain + p.shift  # (cubic splines overshoot)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def chained_render_background(src: np.ndarray, params: TransformParams, center: tuple[float, float],
                              nonzero=None) -> np.ndarray:
    return _chained_photometric(_chain(src, params, center, src.shape, 3), params)


def chained_paste_record(image: np.ndarray, label: np.ndarray, obj: dict, bank: SliceBank, feather: bool) -> None:
    ref = SliceRef.from_json(obj["ref"])
    src_img, src_lab = bank.exemplar(ref)
    params = TransformParams.from_dict(obj["params"])
    center = (float(obj["center"][0]), float(obj["center"][1]))
    cls = obj.get("class")
    src_obj = src_lab if cls is None else (src_lab == cls).astype(np.uint8) * np.uint8(cls)
    lab = _chain(src_obj, params, center, image.shape, 0)
    mask = lab > 0
    if not mask.any():
        return
    warped = _chained_photometric(_chain(src_img, params, center, image.shape, 3), params)
    if feather:
        ring = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool)) & ~mask
        image[ring] = 0.5 * (image[ring] + warped[ring])
    image[mask] = warped[mask]
    label[mask] = lab[mask]


VARIANTS = {"single-affine": (naive_render_background, naive_paste_record),
            "chained": (chained_render_background, chained_paste_record)}


def naive_synthesize(index: int, seed: int, bank: SliceBank, config: SynthesisConfig, task: str,
                     variant: str = "single-affine"):
    """The same draws as ``synthesize``, rendered with scipy.ndimage (``variant``: see module doc)."""
    render_background, paste_record = VARIANTS[variant]
    return synthesize_with(index, seed, bank, config, task, render_background, paste_record)


def build_naive(bank: SliceBank, config: SynthesisConfig, task: str, n: int, seed: int,
                out_dir: str | Path, variant: str = "single-affine") -> dict:
    """Synthesize samples 0..n-1 the straightforward way, one compressed .npz per sample.
    Returns {"samples", "seconds", "samples_per_s", "ms_per_sample", "bytes"}."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (expected one of {', '.join(VARIANTS)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    total = 0
    for i in range(n):
        image, label, record = naive_synthesize(i, seed, bank, config, task, variant)
        path = out / f"sample_{i:06d}.npz"
        np.savez_compressed(path, image=image.astype(np.float16), label=label, record=np.array(json.dumps(record)))
        total += path.stat().st_size
    dt = time.perf_counter() - t0
    return {"samples": n, "seconds": dt, "samples_per_s": n / dt if dt > 0 else math.inf,
            "ms_per_sample": 1e3 * dt / max(n, 1), "bytes": total}


def _main() -> None:  # pragma: no cover - a convenience for manual timing
    import argparse
    import tempfile

    import cv2

    from synth.synthesis.sample import synthesize
    from synth.synthesis.config import load_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--task", choices=["single", "multi"], default="single")
    ap.add_argument("--variant", choices=list(VARIANTS), default="chained")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from synthkit import abdomen_bank, brain_bank

    bank = brain_bank(shape=(240, 240)) if args.task == "single" else abdomen_bank(shape=(512, 512), bg_shapes=((512, 512),) * 3)
    config = load_config()
    with tempfile.TemporaryDirectory() as tmp:
        stats = build_naive(bank, config, args.task, args.n, 0, tmp, args.variant)
    t0 = time.process_time()
    for i in range(args.n):
        synthesize(i, 0, bank, config, args.task)
    fast = 1e3 * (time.process_time() - t0) / args.n
    print(f"naive {args.variant} (scipy + npz): {stats['ms_per_sample']:.2f} ms/sample; fast synthesize (no writing): {fast:.2f} ms/sample")


if __name__ == "__main__":  # pragma: no cover
    _main()
