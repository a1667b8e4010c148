"""Issue 29 on CPU: LiteMedSAM fine-tuned with a frozen encoder (`train fit --frozen-encoder`) from a
few exemplars of the BraTS cohort, recipe chosen on validation, then scored on the test split.

    python bench/lite_medsam_cpu.py --data ../shared/data --out runs/lm-cpu [--stage val|test|all]

Stages (each step skipped when its output is complete, so a run can span sessions):
1. val: exemplars and samples from the 18 training cases of data_manifests/splits/
   brats2018_cohort_val.json, scored on its 6 validation cases; the recipes of RECIPES compete
   (the paper's lr 1e-3 and 1.0 CE + 0.8 Dice vs MedSAM's fine-tuning lr 5e-5 and its loss, Dice +
   BCE + IoU-head MSE; point vs mixed point/box prompts) on centre-point DSC (one click is the goal).
2. test: the winning recipe (or --recipe) on the cohort's 24 training cases, synthesized and
   exemplars-only at 8 exemplars (0.5 %), scored on the 6 test cases with centre points and boxes.
   Zero-shot rows: `train eval --model lite_medsam` with boxes and centre points.
Every command is printed and logged to OUT/commands.log; all commands are the public CLIs.
CPU scale: SAMPLES synthesized samples (the paper: 4500), STEPS steps at batch 8; seed 0 unless
--seed S (test stage: the exemplar choice, the synthesis and the fit all take S; folders get a -sS
suffix, and --table gives each arm's mean and spread over the seeds that are done).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VAL_SPLIT = ROOT / "data_manifests" / "splits" / "brats2018_cohort_val.json"
SAMPLES = 480
STEPS = 300
SEED = 0
RECIPES = {
    "paper-point": {"lr": "1e-3", "prompt": "point"},
    "medsam-lr-point": {"lr": "5e-5", "prompt": "point"},
    "paper-mixed": {"lr": "1e-3", "prompt": "mixed"},
    # MedSAM's own fine-tuning objective (squared Dice + BCE + IoU-head MSE), alone and with its lr
    "medsam-loss-point": {"lr": "1e-3", "prompt": "point", "loss": "medsam"},
    "medsam-point": {"lr": "5e-5", "prompt": "point", "loss": "medsam"},
}


def run(cmd: list, log: Path, done: Path | None = None) -> None:
    if done is not None and done.exists():
        return
    line = " ".join(shlex.quote(str(c)) for c in cmd)
    print(f"$ {line}", flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"$ {line}\n")
        fh.flush()
        proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        fh.write(f"# exit {proc.returncode} after {time.perf_counter() - t0:.0f} s\n")
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {line}; see {log}")


# test-stage arms: name -> (exemplars, synthesized); "full" = every eligible labelled slice of the
# 24 training cases, no synthesis (the paper's fully supervised reference row)
ARMS = {"syn8": ("8", True), "ex8": ("8", False), "syn17": ("17", True), "syn150": ("150", True),
        "full": ("100%", False)}


def build(out: Path, cohort: Path, log: Path, *, split_file: Path | None, synthesis: bool,
          exemplars: str = "8", seed: int = SEED) -> Path:
    cmd = [BIN / "synth", "build", "--dataset", "brats", "--root", cohort, "--split", "train",
           "--exemplars", exemplars, "--seed", seed, "--intensity", "mr-medsam", "--out", out, "--no-progress"]
    if split_file:
        cmd += ["--split-file", split_file]
    cmd += ["--num-samples", SAMPLES] if synthesis else ["--no-synthesis"]
    run(cmd, log, out / "dataset.json")
    return out


def pack(out: Path, cohort: Path, log: Path, split_file: Path | None) -> Path:
    cmd = [BIN / "synth", "pack", "--dataset", "brats", "--root", cohort, "--split", "test",
           "--intensity", "mr-medsam", "--out", out]
    if split_file:
        cmd += ["--split-file", split_file]
    run(cmd, log, out / "dataset.json")
    return out


def fit(shards: Path, out: Path, recipe: dict, log: Path, cache: Path, threads: int, seed: int = SEED) -> Path:
    run([BIN / "train", "fit", "--shards", shards, "--model", "lite_medsam", "--frozen-encoder",
         "--embedding-cache", cache, "--prompt", recipe["prompt"], "--lr", recipe["lr"],
         "--loss", recipe.get("loss", "ce-dice"), "--steps", STEPS,
         "--batch-size", 8, "--seed", seed, "--num-workers", 0, "--num-threads", threads, "--out", out,
         "--no-progress"], log, out / "summary.json")
    return out


def evaluate(model_args: list, test: Path, out: Path, prompt: str, log: Path, cache: Path, threads: int) -> dict:
    run([BIN / "train", "eval", *model_args, "--shards", test, "--prompt", prompt, "--out", out,
         "--embedding-cache", cache / "eval", "--num-threads", threads, "--no-progress"], log, out / "summary.json")
    return json.loads((out / "summary.json").read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stage", choices=("val", "zero-shot", "test", "synapse", "all"), default="all",
                    help="zero-shot: only the zero-shot rows of the test split (no recipe needed; they fill "
                         "the test slices' embedding cache that the test stage reuses)")
    ap.add_argument("--recipe", choices=tuple(RECIPES), default=None, help="test stage: skip the choice")
    ap.add_argument("--arms", default="syn8,ex8", help="test stage, comma list: syn8 / syn17 / syn150 (synthesized from 8 / 17 / 150 exemplars), "
                         "ex8 (the 8 exemplars only), full (every labelled training slice, no synthesis)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=SEED, help="test stage: seed of exemplars, synthesis and fit")
    ap.add_argument("--table", action="store_true", help="only print the Markdown tables of what is done")
    ap.add_argument("--recipes", default=",".join(RECIPES),
                    help="val stage: the recipes to run (comma list; two processes may share one OUT)")
    args = ap.parse_args(argv)
    cohort = args.data / "brats2018_cohort"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log, cache = out / "commands.log", out / "cache"
    results_file = out / "results.json"

    def load() -> dict:
        return json.loads(results_file.read_text()) if results_file.exists() else {}

    def save(results: dict) -> None:
        results_file.write_text(json.dumps(results, indent=2) + "\n")

    def record(stage: str, name: str, prompt: str, s: dict, **extra) -> dict:
        """One evaluation's scores into OUT/results.json, re-read first: several processes (one
        per seed or recipe list) share one OUT."""
        results = load()
        results.setdefault(stage, {}).setdefault(name, {})[prompt] = {
            "dsc": s["mean_dsc"], "hd95": s["mean_hd95"], "volume_ratio": s["median_volume_ratio"], **extra}
        save(results)
        return results

    results = load()

    if args.table:
        print(tables(out))
        return 0
    recipe = args.recipe
    if args.stage in ("val", "all"):
        val_test = pack(out / "val" / "volumes", cohort, log, VAL_SPLIT)
        syn = build(out / "val" / "syn8", cohort, log, split_file=VAL_SPLIT, synthesis=True)
        for name in args.recipes.split(","):
            r = RECIPES[name]
            run_dir = fit(syn, out / "val" / f"run-{name}", r, log, cache, args.threads)
            for prompt in ("center", "box"):
                s = evaluate(["--run", run_dir], val_test, out / "val" / f"eval-{name}-{prompt}", prompt, log,
                             cache, args.threads)
                record("val", name, prompt, s)
        results = load()
        recipe = recipe or max(results["val"], key=lambda n: results["val"][n]["center"]["dsc"])
        results["chosen_recipe"] = recipe
        save(results)
        print(f"validation: {json.dumps(results['val'])}; chosen {recipe}", flush=True)
    if args.stage in ("zero-shot", "test", "all"):
        test = pack(out / "test" / "volumes", cohort, log, None)
        for prompt in ("box", "center"):
            s = evaluate(["--model", "lite_medsam"], test, out / "test" / f"eval-zero-shot-{prompt}", prompt, log,
                         cache, args.threads)
            results = record("test", "zero-shot", prompt, s)
    if args.stage in ("test", "all"):
        recipe = recipe or results.get("chosen_recipe") or "paper-point"
        for arm in args.arms.split(","):
            if arm not in ARMS:
                raise SystemExit(f"--arms: unknown arm {arm!r} (one of {', '.join(ARMS)})")
            exemplars, synthesis = ARMS[arm]
            arm = arm if args.seed == SEED else f"{arm}-s{args.seed}"
            ds = build(out / "test" / arm, cohort, log, split_file=None, synthesis=synthesis, exemplars=exemplars,
                       seed=args.seed)
            run_dir = fit(ds, out / "test" / f"run-{arm}-{recipe}", RECIPES[recipe], log, cache, args.threads,
                          seed=args.seed)
            for prompt in ("center", "box"):
                s = evaluate(["--run", run_dir], test, out / "test" / f"eval-{arm}-{prompt}", prompt, log, cache,
                             args.threads)
                results = record("test", arm, prompt, s, recipe=recipe)
    if args.stage == "synapse":
        synapse(args.data / "synapse_sample", out / "synapse", log, cache, args.threads,
                recipe or results.get("chosen_recipe") or "paper-point")
    print(json.dumps(results, indent=2))
    return 0


def tables(out: Path) -> str:
    """Markdown tables from the evaluations' summary.json files under OUT (val and test): one row
    per arm and prompt, the mean over its seeds (folders eval-ARM[-sS]-PROMPT), the spread (sd, or
    the two values) and the per-seed DSCs."""
    import re
    import statistics

    lines = []
    for stage, title in (("val", "validation split (6 patients of the 24 training cases)"),
                         ("test", "test split (6 patients)")):
        evals = sorted((out / stage).glob("eval-*/summary.json"))
        if not evals:
            continue
        rows: dict[tuple[str, str], list[tuple[int, dict]]] = {}
        for path in evals:
            s = json.loads(path.read_text())
            arm = path.parent.name[len("eval-"):].rsplit("-", 1)[0]
            m = re.fullmatch(r"(.+)-s(\d+)", arm)
            base, seed = (m.group(1), int(m.group(2))) if m else (arm, SEED)
            rows.setdefault((base, s["prompt"]), []).append((seed, s))
        lines += [f"\n{title}:\n", "| arm | prompt | seeds | DSC (%) mean ± sd | per seed | HD95 (mm) | "
                  "median predicted / true volume |", "|:---|:---|---:|---:|:---|---:|---:|"]
        for (base, prompt), runs in rows.items():
            runs.sort(key=lambda r: r[0])
            dsc = [100 * r[1]["mean_dsc"] for r in runs]
            sd = f" ± {statistics.stdev(dsc):.2f}" if len(dsc) > 1 else ""
            hd = statistics.mean(r[1]["mean_hd95"] for r in runs)
            vr = statistics.mean(r[1]["median_volume_ratio"] for r in runs)
            per = ", ".join(f"s{seed}: {100 * r['mean_dsc']:.2f}" for seed, r in runs)
            lines.append(f"| {base} | {prompt} | {len(runs)} | {statistics.mean(dsc):.2f}{sd} | {per} | {hd:.2f} | "
                         f"{vr:.3f} |")
    return "\n".join(lines)


def synapse(root: Path, out: Path, log: Path, cache: Path, threads: int, recipe: str) -> None:
    """The paper's 1-exemplar Synapse setting on the sample's one CT (scored on that CT, which holds
    the exemplar slice: a pipeline check, not generalisation), ct-medsam window."""
    out.mkdir(parents=True, exist_ok=True)
    test = out / "volumes"
    run([BIN / "synth", "pack", "--dataset", "synapse", "--root", root, "--split", "all", "--intensity",
         "ct-medsam", "--out", test], log, test / "dataset.json")
    for prompt in ("box", "center"):
        evaluate(["--model", "lite_medsam"], test, out / f"eval-zero-shot-{prompt}", prompt, log, cache, threads)
    ds = out / "syn1"
    run([BIN / "synth", "build", "--dataset", "synapse", "--root", root, "--split", "all", "--exemplars", "1",
         "--seed", SEED, "--intensity", "ct-medsam", "--num-samples", SAMPLES // 2, "--out", ds, "--no-progress"],
        log, ds / "dataset.json")
    run_dir = fit(ds, out / f"run-syn1-{recipe}", RECIPES[recipe], log, cache, threads)
    for prompt in ("center", "box"):
        evaluate(["--run", run_dir], test, out / f"eval-syn1-{prompt}", prompt, log, cache, threads)


if __name__ == "__main__":
    sys.exit(main())
