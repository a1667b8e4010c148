"""Small synthetic slice banks for the synthesis tests (brain-like and abdomen-like phantoms)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from clikit import run_in_process
from shared.hashing import sha256_path
from synth.synthesis.bank import SliceBank, SliceRef

ORGANS = ("background", "spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach",
          "aorta", "pancreas")
# Relative organ centres (x, y) and radii (fraction of width/height), spaced so they never touch
# even after the default +-10 degree / x1.1 organ transforms and +-3% shifts.
_ORGAN_LAYOUT = {
    1: (0.18, 0.35, 0.06, 0.08), 2: (0.34, 0.35, 0.05, 0.06), 3: (0.66, 0.35, 0.05, 0.06),
    4: (0.50, 0.28, 0.03, 0.04), 5: (0.80, 0.50, 0.08, 0.12), 6: (0.22, 0.66, 0.07, 0.07),
    7: (0.50, 0.50, 0.03, 0.04), 8: (0.50, 0.72, 0.08, 0.04),
}


def _texture(rng: np.random.Generator, shape: tuple[int, int], sigma: float = 2.0) -> np.ndarray:
    return cv2.GaussianBlur(rng.random(shape, dtype=np.float32), (0, 0), sigma)


def ellipse(shape: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0


def brain_bank(n_ex: int = 6, n_bg: int = 6, shape: tuple[int, int] = (96, 96), seed: int = 0) -> SliceBank:
    """Heads (ellipses with texture) with one bright tumour blob each; backgrounds without."""
    rng = np.random.default_rng(seed)
    h, w = shape

    def head() -> tuple[np.ndarray, np.ndarray]:
        m = ellipse(shape, w / 2 + rng.uniform(-2, 2), h / 2 + rng.uniform(-2, 2),
                     w * rng.uniform(0.33, 0.38), h * rng.uniform(0.38, 0.43))
        img = np.where(m, 0.35 + 0.3 * _texture(rng, shape), 0.0).astype(np.float32)
        return img, m

    exemplars = {}
    for i in range(n_ex):
        img, m = head()
        cx, cy = w / 2 + rng.uniform(-0.15, 0.15) * w, h / 2 + rng.uniform(-0.15, 0.15) * h
        t = ellipse(shape, cx, cy, w * rng.uniform(0.05, 0.1), h * rng.uniform(0.05, 0.1)) & m
        img = np.where(t, 0.7 + 0.25 * _texture(rng, shape), img).astype(np.float32)
        exemplars[SliceRef(f"case{i % 3}", 40 + i)] = (np.clip(img, 0, 1), t.astype(np.uint8))
    backgrounds = {SliceRef(f"case{i % 3}", 10 + i): np.clip(head()[0], 0, 1) for i in range(n_bg)}
    return SliceBank(exemplars, backgrounds, ("background", "tumour"))


def small_heads_bank(n_bg_small: int = 6, n_bg_large: int = 1) -> SliceBank:
    """Exemplars with a large off-centre tumour; most backgrounds are small heads (skull-base
    like) where the tumour cannot sit at its own position."""
    shape = (96, 96)
    rng = np.random.default_rng(3)
    exemplars = {}
    for i in range(4):
        head = ellipse(shape, 48, 48, 34, 40)
        tum = ellipse(shape, 48 + (-1) ** i * 18, 40 + 4 * i, 9, 10) & head
        img = np.where(head, 0.4 + 0.2 * rng.random(shape), 0.0)
        img = np.where(tum, 0.85, img).astype(np.float32)
        exemplars[SliceRef("c", 60 + i)] = (img, tum.astype(np.uint8))
    backgrounds = {}
    for i in range(n_bg_small):
        m = ellipse(shape, 48, 52, 13 + i, 15 + i)
        backgrounds[SliceRef("c", i)] = np.where(m, 0.45, 0.0).astype(np.float32)
    for i in range(n_bg_large):
        m = ellipse(shape, 48, 48, 33, 39)
        backgrounds[SliceRef("c", 100 + i)] = np.where(m, 0.5, 0.0).astype(np.float32)
    return SliceBank(exemplars, backgrounds, ("background", "tumour"))


def abdomen_bank(shape: tuple[int, int] = (101, 122), bg_shapes: tuple[tuple[int, int], ...] = ((101, 122),) * 3,
                 n_ex: int = 3, seed: int = 0, drop: dict[int, tuple[int, ...]] | None = None) -> SliceBank:
    """Body ellipses with the 8 organs at fixed relative places; backgrounds are bodies only.
    ``drop`` removes organs from exemplar i (i -> classes)."""
    rng = np.random.default_rng(seed)

    def body(shp: tuple[int, int]) -> np.ndarray:
        h, w = shp
        m = ellipse(shp, w / 2, h / 2, w * 0.47, h * 0.45)
        return np.where(m, 0.3 + 0.2 * _texture(rng, shp), 0.0).astype(np.float32)

    h, w = shape
    exemplars = {}
    for i in range(n_ex):
        img, lab = body(shape), np.zeros(shape, np.uint8)
        for k, (fx, fy, rx, ry) in _ORGAN_LAYOUT.items():
            if drop and k in drop.get(i, ()):
                continue
            s = rng.uniform(0.85, 1.1)
            m = ellipse(shape, fx * w + rng.uniform(-1, 1), fy * h + rng.uniform(-1, 1), rx * w * s, ry * h * s)
            lab[m] = k
            img[m] = 0.4 + 0.05 * k + 0.1 * _texture(rng, shape)[m]
        exemplars[SliceRef("img0001", 5 + i)] = (np.clip(img, 0, 1), lab)
    backgrounds = {SliceRef("img0001", 20 + j): np.clip(body(s), 0, 1) for j, s in enumerate(bg_shapes)}
    return SliceBank(exemplars, backgrounds, ORGANS)


# --- real data (nibabel directly, so these tests do not depend on shared.sources) -------------

def _minmax(s: np.ndarray) -> np.ndarray:
    lo, hi = float(s.min()), float(s.max())
    return ((s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)).astype(np.float32)


def brats_real_bank(root: Path, cases: int = 1, n_ex: int = 8, n_bg: int = 8) -> SliceBank:
    """FLAIR slices of the first BraTS cases, per-slice min-max, whole tumour; tumour slices as
    exemplars, tumour-free slices with a large head as backgrounds."""
    import nibabel as nib

    exemplars, backgrounds = {}, {}
    for case in sorted((root / "HGG").iterdir())[:cases]:
        img = np.asarray(nib.load(case / f"{case.name}_flair.nii.gz").dataobj, dtype=np.float32).transpose(2, 1, 0)
        seg = np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj).transpose(2, 1, 0)
        lab = (seg > 0).astype(np.uint8)
        fg = lab.reshape(len(lab), -1).sum(1)
        head = (img > img.min()).reshape(len(img), -1).sum(1)
        ex = np.flatnonzero(fg >= 50)
        bg = np.flatnonzero((fg == 0) & (head > 0.6 * head.max()))
        for k in ex[:: max(1, len(ex) // n_ex)][:n_ex]:
            exemplars[SliceRef(case.name, int(k))] = (_minmax(img[k]), lab[k])
        for k in bg[:: max(1, len(bg) // n_bg)][:n_bg]:
            backgrounds[SliceRef(case.name, int(k))] = _minmax(img[k])
    return SliceBank(exemplars, backgrounds, ("background", "tumour"))


SYNAPSE_13_TO_8 = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}


def synapse_real_bank(root: Path) -> SliceBank:
    """The sample CT: HU clipped to [-125, 275] -> [0, 1], 8 organs. Every slice has organs, so the
    4 slices with the least foreground serve as backgrounds (a test stand-in for a real pool)."""
    import nibabel as nib

    d = root / "RawData" / "Training"
    img = np.asarray(nib.load(d / "img" / "img0001.nii.gz").dataobj, dtype=np.float32).transpose(2, 1, 0)
    seg = np.asarray(nib.load(d / "label" / "label0001.nii.gz").dataobj).transpose(2, 1, 0)
    lab = np.zeros(seg.shape, np.uint8)
    for a, b in SYNAPSE_13_TO_8.items():
        lab[seg == a] = b
    img = ((np.clip(img, -125, 275) + 125) / 400).astype(np.float32)
    fg = lab.reshape(len(lab), -1).astype(bool).sum(1)
    order = np.argsort(fg, kind="stable")
    backgrounds = {SliceRef("img0001", int(k)): img[k] for k in order[:4]}
    exemplars = {SliceRef("img0001", int(k)): (img[k], lab[k]) for k in range(len(img)) if fg[k] > 0}
    return SliceBank(exemplars, backgrounds, ORGANS)


# -- the synth CLI in-process (tests of synth build / pack / merge / audit) ----------------------------

# the demo's 2-case test split keeps each build to ~1 s (the phantoms are generated on every read)
SMALL = ["--dataset", "demo-brain", "--split", "test", "--exemplars", "12", "--num-samples", "40",
         "--shard-size", "8", "--seed", "3", "--no-progress"]


def synth(*args: str) -> tuple[int, str]:
    """Run the synth CLI in-process; returns (exit code, stdout + stderr)."""
    from synth.cli import cli

    return run_in_process(cli, *args)


def ok(*args: str) -> str:
    code, text = synth(*args)
    assert code == 0, text
    return text


def fail(*args: str) -> str:
    code, text = synth(*args)
    assert code != 0, text
    assert "Traceback" not in text
    return text


def same_dataset(a: Path, b: Path) -> None:
    """Byte-identical manifests and shards (the shard sha256 covers every file of a shard)."""
    assert (a / "dataset.json").read_bytes() == (b / "dataset.json").read_bytes()
    assert (a / "samples.jsonl").read_bytes() == (b / "samples.jsonl").read_bytes()
    info = json.loads((a / "dataset.json").read_text())
    for s in info["shards"]:
        assert sha256_path(a / s["path"]) == sha256_path(b / s["path"]) == s["sha256"]
