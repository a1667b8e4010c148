"""Run one of the paper's experiment grids at CPU scale and write one Markdown table.

    python bench/experiment.py bench/experiments/brats_sample.json --out runs/exp-brats

For each exemplar count in the config, three training sets are built from the SAME exemplar list
(chosen on the training cases only):
  (a) synthesized   - `synth build` (exemplar-guided cut-paste synthesis),
  (b) exemplars     - `synth build --no-synthesis` (the real exemplar slices only),
and once per grid
  (c) full set      - `synth build --all-slices` (every slice of the training cases).
Each is trained with the same recipe (`train fit`) and evaluated on the held-out test cases
(`synth pack` + `train eval`) with centre and random point prompts. The table goes to
OUT/table.md and stdout; every step's command line and wall time goes to OUT/log.jsonl.

This is a script (not a `train` subcommand) because it drives both CLIs and `train` never imports
`synth`; it only calls the two public command-line tools, exactly as a user would. Finished
steps (their output has its completion marker) are skipped on a rerun, so an interrupted grid
continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ExperimentConfig:
    name: str
    dataset: str
    root: str                          # may contain {data}: replaced by --data-root
    exemplar_counts: list[str]
    train_split: str = "train"
    test_split: str = "test"
    split_file: str | None = None      # relative to the project root, or absolute
    arms: list[str] = field(default_factory=lambda: ["synthesized", "exemplars", "full"])
    prompts: list[str] = field(default_factory=lambda: ["center", "random"])
    seed: int = 0
    num_samples: int | None = None     # synthesized set size (None: the dataset preset)
    fit: dict = field(default_factory=dict)   # flags for `train fit` (model, img_size, steps, ...)
    notes: str = ""

    @classmethod
    def load(cls, path: Path) -> "ExperimentConfig":
        raw = json.loads(path.read_text())
        raw.pop("_comment", None)
        return cls(**raw)


def tool(name: str) -> str:
    """The CLI next to this interpreter (the venv's), so the grid uses the installed tools."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


class Runner:
    """Runs the grid's steps. With jobs > 1 each step's output goes to OUT/logs/<step>.log."""

    def __init__(self, out: Path, dry_run: bool = False, jobs: int = 1):
        self.out = out
        self.dry_run = dry_run
        self.jobs = jobs
        self.log_path = out / "log.jsonl"
        self.timings: dict[str, float] = {}
        self._lock = threading.Lock()

    def say(self, line: str) -> None:
        """One whole line to stdout: with --jobs > 1, print()'s separate newline write interleaves."""
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def run(self, key: str, argv: list[str], done_marker: Path, output_dir: Path | None = None) -> None:
        """Run a step unless its completion marker exists; record the command and wall time.

        output_dir: the folder the step writes (removed first if an interrupted run left it)."""
        if done_marker.exists():
            self.say(f"[skip] {key}: {done_marker} exists")
            return
        self.say(f"[run ] {key}: {' '.join(argv)}")
        if self.dry_run:
            return
        if output_dir is not None and output_dir.exists():
            shutil.rmtree(output_dir)  # an incomplete output of an interrupted step
        start = time.perf_counter()
        if self.jobs > 1:
            step_log = self.out / "logs" / f"{key}.log"
            step_log.parent.mkdir(parents=True, exist_ok=True)
            with step_log.open("w") as fh:
                result = subprocess.run(argv, cwd=PROJECT_ROOT, stdout=fh, stderr=subprocess.STDOUT)
        else:
            step_log = None
            result = subprocess.run(argv, cwd=PROJECT_ROOT)
        seconds = time.perf_counter() - start
        with self._lock:
            self.timings[key] = seconds
            with self.log_path.open("a") as fh:
                fh.write(json.dumps({"step": key, "argv": argv, "seconds": round(seconds, 2),
                                     "returncode": result.returncode}) + "\n")
        where = f"see {step_log}" if step_log else "see the output above"
        if result.returncode != 0:
            raise SystemExit(f"experiment step {key!r} failed (exit {result.returncode}); {where}")
        self.say(f"[done] {key}: {seconds:.0f} s")


def fit_flags(fit: dict) -> list[str]:
    flags: list[str] = []
    for key, value in fit.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                flags.append(flag)
        elif value is not None:
            flags += [flag, str(value)]
    return flags


def run_grid(cfg: ExperimentConfig, data_root: Path, out: Path, dry_run: bool, steps: int | None,
             jobs: int = 1) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, dry_run, jobs)
    grid_start = time.perf_counter()
    root = cfg.root.replace("{data}", str(data_root))
    source = ["--dataset", cfg.dataset, "--root", root]
    split_file: list[str] = []
    if cfg.split_file:
        split_path = Path(cfg.split_file)
        split_file = ["--split-file", str(split_path if split_path.is_absolute() else PROJECT_ROOT / split_path)]
    fit = dict(cfg.fit)
    if steps is not None:
        fit["steps"] = steps
    synth, train = tool("synth"), tool("train")

    test_dir = out / "data" / "test"
    runner.run("pack-test", [synth, "pack", *source, "--split", cfg.test_split, *split_file,
                             "--out", str(test_dir)], test_dir / "dataset.json", test_dir)

    trainsets: list[tuple[str, str, Path]] = []  # (count, arm, shard dir)
    for count in cfg.exemplar_counts:
        tag = count.replace("%", "pct")
        exemplar_list = out / "exemplars" / f"exemplars_{tag}.json"
        exemplar_list.parent.mkdir(parents=True, exist_ok=True)
        runner.run(f"select-{tag}", [synth, "select", *source, "--split", cfg.train_split, *split_file,
                                     "--exemplars", count, "--seed", str(cfg.seed),
                                     "--out", str(exemplar_list)], exemplar_list)
        if "synthesized" in cfg.arms:
            shards = out / "data" / f"synth_{tag}"
            extra = ["--num-samples", str(cfg.num_samples)] if cfg.num_samples else []
            runner.run(f"build-synth-{tag}", [synth, "build", *source, "--split", cfg.train_split, *split_file,
                                              "--exemplar-list", str(exemplar_list), "--seed", str(cfg.seed),
                                              *extra, "--out", str(shards)], shards / "dataset.json", shards)
            trainsets.append((count, "synthesized", shards))
        if "exemplars" in cfg.arms:
            shards = out / "data" / f"exemplars_{tag}"
            runner.run(f"build-exemplars-{tag}", [synth, "build", *source, "--split", cfg.train_split, *split_file,
                                                  "--exemplar-list", str(exemplar_list), "--no-synthesis",
                                                  "--out", str(shards)], shards / "dataset.json", shards)
            trainsets.append((count, "exemplars only", shards))
    if "full" in cfg.arms:
        shards = out / "data" / "full"
        runner.run("build-full", [synth, "build", *source, "--split", cfg.train_split, *split_file,
                                  "--all-slices", "--out", str(shards)], shards / "dataset.json", shards)
        trainsets.append(("all", "full set", shards))

    # Training and evaluation: one task per training set, `jobs` of them at a time.
    thread_flags: list[str] = []
    if jobs > 1:
        thread_flags = ["--num-threads", str(max(1, len(os.sched_getaffinity(0)) // jobs))]

    def train_and_eval(count: str, arm: str, shards: Path):
        run_dir = out / "runs" / shards.name
        fit_argv = [train, "fit", "--shards", str(shards), *fit_flags(fit), "--seed", str(cfg.seed),
                    *thread_flags, "--no-progress", "--out", str(run_dir)]
        recipe = " ".join(fit_flags(fit)) + f" --seed {cfg.seed}"
        done = run_dir / "DONE"
        evals = {p: out / "evals" / f"{shards.name}_{p}" for p in cfg.prompts}
        if done.exists() and done.read_text().strip() != recipe:
            # a finished run of another recipe (e.g. a --steps check): redo it and its evaluations
            runner.say(f"[redo] fit-{shards.name}: recipe changed ({done.read_text().strip()!r} -> {recipe!r})")
            if not dry_run:
                shutil.rmtree(run_dir)
                for eval_dir in evals.values():
                    shutil.rmtree(eval_dir, ignore_errors=True)
        runner.run(f"fit-{shards.name}", fit_argv, done, run_dir)
        if not dry_run and not done.exists():
            done.write_text(recipe + "\n")
        for prompt, eval_dir in evals.items():
            runner.run(f"eval-{shards.name}-{prompt}",
                       [train, "eval", "--run", str(run_dir), "--shards", str(test_dir), "--prompt", prompt,
                        "--seed", str(cfg.seed), *thread_flags, "--out", str(eval_dir)],
                       eval_dir / "summary.json", eval_dir)
        return (count, arm, shards, run_dir, evals)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(train_and_eval, *t) for t in trainsets]
        rows = [f.result() for f in futures]

    if dry_run:
        return out / "table.md"
    table = render_table(cfg, rows, runner, fit, time.perf_counter() - grid_start, jobs)
    (out / "table.md").write_text(table)
    print(table)
    return out / "table.md"


def _train_samples(shards: Path) -> int:
    return int(json.loads((shards / "dataset.json").read_text()).get("num_samples", 0))


def _fit_seconds(run_dir: Path) -> float | None:
    """Training wall time from the run's summary.json (written by `train fit` at the end)."""
    summary = run_dir / "summary.json"
    if not summary.exists():
        return None
    return json.loads(summary.read_text()).get("seconds")


def render_table(cfg: ExperimentConfig, rows, runner: Runner, fit: dict, wall_s: float, jobs: int) -> str:
    first_summary = json.loads((next(iter(rows[0][4].values())) / "summary.json").read_text())
    classes = [c for c in first_summary.get("per_class", {})]
    multi = len(classes) > 1
    head = ["Exemplars", "Training data", "Train samples"]
    for prompt in cfg.prompts:
        head += [f"DSC (%) {prompt}", f"HD95 (mm) {prompt}"]
    if multi:
        head += [f"{c} ({cfg.prompts[0]})" for c in classes]
    head += ["Fit (s)"]
    lines = [f"### {cfg.name}", "",
             f"Test cases: split `{cfg.test_split}` of `{cfg.dataset}`; training cases: split `{cfg.train_split}`. "
             f"Recipe: `train fit {' '.join(fit_flags(fit))} --seed {cfg.seed}`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for count, arm, shards, run_dir, evals in rows:
        cells = [count, arm, str(_train_samples(shards))]
        summaries = {p: json.loads((d / "summary.json").read_text()) for p, d in evals.items()}
        for prompt in cfg.prompts:
            s = summaries[prompt]
            cells += [f"{100 * s['mean_dsc']:.2f}", _fmt_mm(s.get("mean_hd95"))]
        if multi:
            per_class = summaries[cfg.prompts[0]]["per_class"]
            cells += [f"{100 * per_class[c]['dsc']:.2f}" if per_class[c].get("dsc") is not None else "n/a" for c in classes]
        seconds = _fit_seconds(run_dir) or runner.timings.get(f"fit-{shards.name}")
        cells.append(f"{seconds:.0f}" if seconds else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    skipped = not runner.timings
    lines += ["", f"Fit (s): `train fit` wall time. Machine: {platform.node() or 'unknown'}, "
                  f"{len(os.sched_getaffinity(0))} CPUs, {platform.processor() or platform.machine()}; "
                  f"`--jobs {jobs}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
                  + ("all steps reused from earlier invocations." if skipped else
                     f"this invocation {wall_s / 60:.1f} min wall ({len(runner.timings)} steps run).")]
    if cfg.notes:
        lines += ["", cfg.notes]
    return "\n".join(lines) + "\n"


def _fmt_mm(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="experiment config JSON (bench/experiments/*.json)")
    parser.add_argument("--data-root", type=Path,
                        default=Path(os.environ.get("EXEMPLAR_SAM_DATA", PROJECT_ROOT.parent / "shared" / "data")),
                        help="folder holding the datasets; replaces {data} in the config's root "
                             "(default: $EXEMPLAR_SAM_DATA or ../shared/data)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/experiment-<name>)")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's training steps (quick checks)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="train/evaluate this many training sets at once, each with CPUs/jobs torch threads "
                             "(step output then goes to OUT/logs/); the data steps always run one at a time")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = parser.parse_args(argv)
    cfg = ExperimentConfig.load(args.config)
    out = args.out or PROJECT_ROOT / "runs" / f"experiment-{cfg.name}"
    start = time.perf_counter()
    table = run_grid(cfg, args.data_root.resolve(), out.resolve(), args.dry_run, args.steps, args.jobs)
    print(f"experiment {cfg.name}: {time.perf_counter() - start:.0f} s, table at {table}")


if __name__ == "__main__":
    main()
