"""How the tiny model's sizes were chosen (docs/model.md): learning quality vs size.

Trains each named variant of TINY_CONFIG from random init for 400 steps (batch 8, AdamW lr 1e-3,
50 warm-up steps then exponential decay, one torch thread) on procedural 128 px scenes (1-2
textured ellipses on smooth noise; a random point of a random object, target its mask) and
prints one JSON line per variant with the mean Dice on held-out objects prompted at their centre
point (train.prompts.center_point).

Usage:  python bench/bench_tiny_sizes.py base e96 e96m2 e96d3 ...   (names: see VARIANTS)
"""
import dataclasses
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)
from train.model import TINY_CONFIG, PromptSAM, count_parameters
from train.model.build import assemble_sam
from train.losses import ce_dice_loss
from train.prompts import center_point, sample_training_prompt  # noqa: E402

S = 128


def make(rng):
    img = cv2.GaussianBlur(rng.random((S, S)).astype(np.float32), (0, 0), 3) * 0.6
    img += rng.random((S, S)).astype(np.float32) * 0.15
    lab = np.zeros((S, S), np.uint8)
    for k in range(1, rng.integers(2, 4)):
        m = np.zeros((S, S), np.uint8)
        cv2.ellipse(m, (int(rng.integers(20, 108)), int(rng.integers(20, 108))),
                    (int(rng.integers(5, 22)), int(rng.integers(5, 22))), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        lab[m > 0] = k
        img[m > 0] = img[m > 0] * 0.3 + rng.uniform(0.3, 0.9)
    return np.clip(img, 0, 1), lab


def batch(rng, n):
    xs, ts, ps = [], [], []
    for _ in range(n):
        img, lab = make(rng)
        r = sample_training_prompt(lab, rng)
        if r is None: continue
        c, (x, y), t = r
        xs.append(img); ts.append(t); ps.append([[x, y]])
    return (torch.tensor(np.array(xs))[:, None], torch.tensor(np.array(ps), dtype=torch.float32),
            torch.tensor(np.array(ts), dtype=torch.float32))


def run(name, steps=400, lr=1e-3, **kw):
    spec = dataclasses.replace(TINY_CONFIG, **kw)
    with torch.random.fork_rng():
        torch.manual_seed(0); m = PromptSAM(assemble_sam(spec, S))
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 50) * 0.995 ** max(0, s - 50))
    rng = np.random.default_rng(1); t0 = time.time()
    for s in range(steps):
        x, p, t = batch(rng, 8)
        loss, _, _ = ce_dice_loss(m(x, p, torch.ones(len(p), 1, dtype=torch.long)), t)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    tt = time.time() - t0
    m.eval(); erng = np.random.default_rng(123); dices = []
    with torch.no_grad():
        for _ in range(8):
            xs, ps, ts = [], [], []
            for _ in range(8):
                img, lab = make(erng)
                for c in range(1, lab.max() + 1):
                    if (lab == c).any():
                        xs.append(img); ts.append(lab == c); ps.append([center_point(lab == c)])
            pr = m(torch.tensor(np.array(xs))[:, None], torch.tensor(np.array(ps), dtype=torch.float32),
                   torch.ones(len(ps), 1, dtype=torch.long))[:, 0] > 0
            t = torch.tensor(np.array(ts))
            dices += (2 * (pr & t).sum((1, 2)) / (pr.sum((1, 2)) + t.sum((1, 2))).clamp(min=1)).tolist()
    print(json.dumps({"name": name, "params": count_parameters(m).total, "train_s": round(tt, 1),
                      "dice": round(float(np.mean(dices)), 4)}), flush=True)


VARIANTS = {  # overrides of TINY_CONFIG; 'base' = the previous 128-wide, MLP-ratio-4 tiny
 "base": dict(encoder_embed_dim=128, mlp_ratio=4.0),
 "chosen": {},
 "e96": dict(encoder_embed_dim=96, mlp_ratio=4.0),
 "dec96": dict(prompt_embed_dim=96, mlp_ratio=4.0, encoder_embed_dim=128),
 "d6": dict(encoder_depth=6, encoder_global_attn_indexes=(0, 1, 2, 3, 4, 5)),
 "p16": dict(patch_size=16),
 "e96m2": dict(encoder_embed_dim=96, mlp_ratio=2.0),
 "e96d3": dict(encoder_embed_dim=96, mlp_ratio=4.0, encoder_depth=3, encoder_global_attn_indexes=(0, 1, 2)),
}
if __name__ == "__main__":
    for n in sys.argv[1:] or ["chosen"]:
        run(n, **VARIANTS[n])
