"""Seconds per slice of zero-shot LiteMedSAM evaluation on CPU (issue 28: <= 0.5 s on 2 threads).

What `train eval --model lite_medsam --prompt box` does per slice, through its own code
(train.evaluate.predict_volume: batches of 8 slices encoded once, one box per class decoded):
the tumour slices of BraTS sample patients, each engine variant at the given thread count,
after one warm-up batch. Masks are compared with eager torch's (Dice of the predicted volumes).

    .venv/bin/python bench/bench_lite_eval.py --threads 2 --slices 32

Prints a Markdown table with the load average beside each row: on a shared machine it moves the
figures, so measure on an idle one (or pause other jobs) and repeat.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = {
    "torch": ("torch", {}),
    "ort": ("onnxruntime", {}),
    "ov-latency": ("openvino", {"hint": "LATENCY"}),
    "ov-throughput": ("openvino", {"hint": "THROUGHPUT"}),
}


def main(argv=None) -> int:
    import numpy as np
    import torch

    from train.evaluate import predict_volume
    from train.inference import Inference, load_zero_shot
    from train.model.engines import make_encoder_engine
    from train.testsets import open_source_testset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "brats2018_sample"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slices", type=int, default=32, help="tumour slices (spread over the sample's cases)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    testset = open_source_testset("brats", args.root, "all", intensity="mr-medsam")
    per_case = max(1, args.slices // len(testset.volume_ids))
    vols = []
    for vid in testset.volume_ids:
        v = testset.load(vid)
        ks = np.flatnonzero(v.label.reshape(len(v.label), -1).any(1))
        ks = ks[np.linspace(0, len(ks) - 1, per_case).astype(int)]
        vols.append(dataclasses.replace(v, image=v.image[ks], label=v.label[ks]))
    loaded = load_zero_shot("lite_medsam", None)
    model = loaded.model.eval()
    cpu = torch.device("cpu")
    rows, reference = [], None
    print(f"| variant | threads | s / slice (enc + dec) | Dice vs torch | load | peak RSS GB |")
    print("|:---|---:|---:|---:|---:|---:|")
    for name in args.variants.split(","):
        engine, options = VARIANTS[name]
        runner = None if engine == "torch" else make_encoder_engine(
            model.sam.image_encoder, engine, img_size=256, num_threads=args.threads, **options)
        inf = Inference(model, cpu, batch_size=8, engine=runner)
        with torch.inference_mode():
            predict_volume(inf, vols[0], 1, "box", 0)            # warm-up
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                preds = [predict_volume(inf, v, 1, "box", 0)[0] for v in vols]
                n = sum(len(v.label) for v in vols)
                best = min(best, (time.perf_counter() - t0) / n)
        if reference is None:
            reference = preds
        inter = sum(int(np.logical_and(a > 0, b > 0).sum()) for a, b in zip(preds, reference))
        total = sum(int((a > 0).sum() + (b > 0).sum()) for a, b in zip(preds, reference))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        load = os.getloadavg()[0]
        print(f"| {name} | {args.threads} | {best:.3f} | {2 * inter / max(total, 1):.4f} | {load:.2f} | {rss:.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
