"""The straightforward baseline for the build benchmark: same draws, scipy.ndimage, one .npz per sample.

What a first implementation would look like: every sample makes the same random choices as
``synth.synthesis.synthesize`` (same exemplar, background, parameters and placement rules), but
renders them with ``scipy.ndimage`` on whole frames (``affine_transform`` order 1 for images,
order 0 for labels, ``gaussian_filter``, ``binary_dilation``) and writes each sample with
``np.savez_compressed`` (image float16, label uint8, the record as JSON). Outputs are
statistically the same as the fast path but not bit-identical (different interpolation code).

    from bench.naive_synthesis import build_naive
    stats = build_naive(bank, config, "single", n=500, seed=0, out_dir="/tmp/naive")

Run as a script for a quick per-sample timing on the demo phantoms or the real sample data:
    python bench/naive_synthesis.py --n 200
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from synth.synthesis import SliceBank, SliceRef, SynthesisConfig, _synthesize
from synth.transforms import TransformParams, forward_affine


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
    cls = obj["class"]
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


def naive_synthesize(index: int, seed: int, bank: SliceBank, config: SynthesisConfig, task: str):
    """The same draws as ``synthesize``, rendered with scipy.ndimage."""
    return _synthesize(index, seed, bank, config, task, naive_render_background, naive_paste_record)


def build_naive(bank: SliceBank, config: SynthesisConfig, task: str, n: int, seed: int,
                out_dir: str | Path) -> dict:
    """Synthesize samples 0..n-1 the straightforward way, one compressed .npz per sample.
    Returns {"samples", "seconds", "samples_per_s", "ms_per_sample", "bytes"}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    total = 0
    for i in range(n):
        image, label, record = naive_synthesize(i, seed, bank, config, task)
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

    from synth.synthesis import load_config, synthesize

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--task", choices=["single", "multi"], default="single")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from synthkit import abdomen_bank, brain_bank

    bank = brain_bank(shape=(240, 240)) if args.task == "single" else abdomen_bank(shape=(512, 512), bg_shapes=((512, 512),) * 3)
    config = load_config()
    with tempfile.TemporaryDirectory() as tmp:
        stats = build_naive(bank, config, args.task, args.n, 0, tmp)
    t0 = time.process_time()
    for i in range(args.n):
        synthesize(i, 0, bank, config, args.task)
    fast = 1e3 * (time.process_time() - t0) / args.n
    print(f"naive (scipy + npz): {stats['ms_per_sample']:.2f} ms/sample; fast synthesize (no writing): {fast:.2f} ms/sample")


if __name__ == "__main__":  # pragma: no cover
    _main()
