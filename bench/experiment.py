"""Run one of the paper's experiment grids at CPU scale, over several seeds, and write its tables.

    python bench/experiment.py bench/experiments/brats_cohort.json --out runs/exp-cohort --jobs 2

For every seed and every exemplar count in the config, training sets are built from the SAME
exemplar list (chosen on the training cases only, `synth select --seed S`):
  synthesized   - `synth build` (exemplar-guided cut-paste synthesis, `--seed S`),
  exemplars     - `synth build --no-synthesis` (the real exemplar slices only; paper's Table 3),
  samed         - the synthesized set of the `samed_counts`, trained promptless (`--prompt none`),
and once per grid
  full          - `synth build --all-slices` (every slice of the training cases),
  zero-shot     - no training: `train eval --model ... --checkpoint PRE/model.pt` on the model
                  from `train pretrain` (the paper's "SAM (zero-shot)" row at CPU scale).
Each set is trained with the same recipe (`train fit ... --seed S`) and evaluated on the held-out
test cases (`synth pack` + `train eval`) with centre and random point prompts (an entry of
"prompts" such as "center+clicked-volume" adds `--keep clicked-volume`, train/postprocess.py: the
same fits scored with a post-processing; it is a column of its own). Each table cell is
the mean over the seeds with its standard deviation and range; the per-patient rows behind every
cell go to OUT/cells/*.csv, all numbers to OUT/results.json, the tables to OUT/table.md, and a
plot of DSC against the number of exemplars to OUT/dsc_vs_exemplars.png.

Cross-validation (issue 30): with `--folds FILE` (or the config's "folds", e.g.
bench/experiments/brats_cohort_sites.json) the grid runs once per fold of a leave-site-out fold
file, each fold in OUT/fold-<name>/ with its own split file, and OUT/cv_table.md adds the tables
across folds (bench/cross_site.py; docs/cross_site.md). Every table states the device of each
fit time ("Fit (s), CPU" / "Fit (s), GPU": one column per device, named below the table) and the
median predicted/true volume ratio.

This is a script (not a `train` subcommand) because it drives both CLIs and `train` never imports
`synth`; it only calls the two public command-line tools, exactly as a user would. Finished steps
(their output has its completion marker) are skipped on a rerun, so a grid can span several
sessions; `--only-seeds`, `--only-counts`, `--only-arms` and `--table-only` help with that.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, CancelledError, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ARMS = ("zero-shot", "samed", "synthesized", "exemplars", "full")
ARM_LABELS = {"zero-shot": "zero-shot (pretrained, no fine-tuning)", "samed": "SAMed-style (promptless)",
              "synthesized": "ours (synthesized)", "exemplars": "exemplars only", "full": "full set"}


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
    seed: int = 0                      # the one seed of a single-seed grid (kept for old configs)
    seeds: list[int] | None = None     # selection, synthesis, training and random prompts seeded together
    num_samples: int | None = None     # synthesized set size (None: the dataset preset)
    fit: dict = field(default_factory=dict)        # flags for `train fit`; "{pretrained}" -> PRE/model.pt, "{out}" -> OUT
    build: dict = field(default_factory=dict)      # extra flags for every `synth build` / `synth pack`
    pretrain: dict | None = None       # flags for `train pretrain` (dataset, root and split come from above)
    zero_shot: dict = field(default_factory=dict)  # flags for the zero-shot `train eval` (model, img_size)
    eval: dict = field(default_factory=dict)       # extra flags for every `train eval`; "{out}" -> OUT (a fold's)
    samed_counts: list[str] = field(default_factory=list)   # counts whose synthesized set trains promptless
    samed_fit: dict = field(default_factory=lambda: {"prompt": "none"})
    arm_counts: dict = field(default_factory=dict)  # arm -> the exemplar counts it runs at (absent: all)
    folds: str | None = None           # a cross-validation fold file (data_manifests/splits/*_sites.json)
    notes: str = ""

    @classmethod
    def load(cls, path: Path) -> "ExperimentConfig":
        raw = json.loads(path.read_text())
        raw = {k: v for k, v in raw.items() if not k.startswith("_")}
        cfg = cls(**raw)
        unknown = [a for a in cfg.arms if a not in ARMS]
        if unknown:
            raise SystemExit(f"{path}: unknown arm(s) {unknown}; known: {list(ARMS)}")
        if "zero-shot" in cfg.arms and cfg.pretrain is None and "checkpoint" not in cfg.zero_shot:
            raise SystemExit(f"{path}: the zero-shot arm needs a `pretrain` section or zero_shot.checkpoint")
        for arm, counts in cfg.arm_counts.items():
            if arm not in ("synthesized", "exemplars"):
                raise SystemExit(f"{path}: arm_counts names {arm!r}; only synthesized and exemplars take counts "
                                 f"(the SAMed-style arm has samed_counts)")
            stray = [c for c in counts if c not in cfg.exemplar_counts]
            if stray:
                raise SystemExit(f"{path}: arm_counts[{arm!r}] has {stray}, not in exemplar_counts {cfg.exemplar_counts}")
        return cfg

    def runs_at(self, arm: str, count: str) -> bool:
        """Whether `arm` is in the grid at this exemplar count (arms, arm_counts, samed_counts)."""
        if arm not in self.arms:
            return False
        if arm == "samed":
            return count in self.samed_counts
        return count in self.arm_counts.get(arm, self.exemplar_counts)

    @property
    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]


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
        # Two grid processes with overlapping --only-* selections must not run one step at once:
        # the second would remove the first's unfinished output as an interrupted one. The step's
        # lock is shared/locks.py's flock, which the kernel drops when its holder dies.
        from shared.locks import FolderLock, LockBusy

        lock_dir = self.out / "locks" / key
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(lock_dir, shared=False)
        try:
            lock.acquire()
        except LockBusy:
            owner = lock.owner()
            who = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "another process"
            raise SystemExit(f"experiment step {key!r} is running in another process ({who}; lock "
                             f"{lock.path}): give this one other --only-folds / --only-seeds / --only-counts") from None
        try:
            lock.write_owner()
            if done_marker.exists():  # another process finished it since the check above
                self.say(f"[skip] {key}: {done_marker} exists")
                return
            self._run_unlocked(key, argv, output_dir)
        finally:
            lock.release()

    def _run_unlocked(self, key: str, argv: list[str], output_dir: Path | None) -> None:
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


def eval_flags(prompt: str) -> list[str]:
    """A grid's evaluation name -> its `train eval` flags: "center" -> --prompt center;
    "center+clicked-volume" -> --prompt center --keep clicked-volume."""
    mode, _, keep = prompt.partition("+")
    return ["--prompt", mode, *(["--keep", keep] if keep else [])]


def cli_flags(flags: dict, substitutions: dict[str, str] | None = None) -> list[str]:
    """{"img_size": 128, "no_progress": True} -> ["--img-size", "128", "--no-progress"]."""
    out: list[str] = []
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                out.append(flag)
        elif value is not None:
            text = str(value)
            for placeholder, replacement in (substitutions or {}).items():
                text = text.replace(placeholder, replacement)
            out += [flag, text]
    return out


fit_flags = cli_flags  # the name older callers use


@dataclass
class Cell:
    """One row of the tables for one seed: where its training set, run and evaluations live."""
    arm: str
    count: str                       # "150", "1%", "all" (full set), "-" (zero-shot)
    seed: int
    shards: Path | None              # None for zero-shot
    run_dir: Path | None             # None for zero-shot
    evals: dict[str, Path]           # prompt -> evaluation folder


def _tag(count: str) -> str:
    return count.replace("%", "pct")


def plan_and_run(cfg: ExperimentConfig, data_root: Path, out: Path, dry_run: bool, steps: int | None,
                 jobs: int = 1, only_seeds: list[int] | None = None,
                 table_only: bool = False, num_threads: int | None = None) -> tuple[list[Cell], int]:
    """Run (or, with table_only, just locate) every step of the grid.

    num_threads: torch threads of every fit / eval / pretrain and `--workers` of every synth step
    (default: CPUs / jobs torch threads when jobs > 1, the tools' own defaults otherwise).
    Returns the table cells and the number of steps this call ran."""
    if not table_only:
        out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, dry_run or table_only, jobs)
    if table_only:
        runner.run = lambda *a, **k: None  # type: ignore[method-assign]
    root = cfg.root.replace("{data}", str(data_root))
    source = ["--dataset", cfg.dataset, "--root", root]
    split_file: list[str] = []
    if cfg.split_file:
        split_path = Path(cfg.split_file)
        split_file = ["--split-file", str(split_path if split_path.is_absolute() else PROJECT_ROOT / split_path)]
    workers = ["--workers", str(num_threads)] if num_threads else []
    build_extra = cli_flags(cfg.build) + workers
    # The source options that decide which slices are eligible also go to `synth select`; the list
    # records them and `synth build --exemplar-list` refuses a list made with others.
    select_extra = cli_flags({k: v for k, v in cfg.build.items() if k in ("intensity", "spacing", "modality")})
    fit = dict(cfg.fit)
    if steps is not None:
        fit["steps"] = steps
    synth, train = tool("synth"), tool("train")

    test_dir = out / "data" / "test"
    runner.run("pack-test", [synth, "pack", *source, "--split", cfg.test_split, *split_file, *build_extra,
                             "--out", str(test_dir)], test_dir / "dataset.json", test_dir)

    pretrained = out / "pretrain" / "model.pt"
    uses_pretrained = ("zero-shot" in cfg.arms
                       or any("{pretrained}" in str(v) for v in [*fit.values(), *cfg.samed_fit.values()]))
    if cfg.pretrain is not None and uses_pretrained:
        pre_dir = pretrained.parent
        runner.run("pretrain", [train, "pretrain", *source, "--split", cfg.train_split, *split_file,
                                *cli_flags(cfg.pretrain),
                                *(["--num-threads", str(num_threads)] if num_threads else []),
                                "--no-progress", "--out", str(pre_dir)],
                   pretrained, pre_dir)
    subs = {"{pretrained}": str(pretrained), "{out}": str(out)}
    eval_extra = cli_flags(cfg.eval, subs)

    cells: list[Cell] = []
    train_tasks: list[Cell] = []
    seeds = [s for s in cfg.seed_list if only_seeds is None or s in only_seeds]
    if "full" in cfg.arms:
        full = out / "data" / "full"
        runner.run("build-full", [synth, "build", *source, "--split", cfg.train_split, *split_file, *build_extra,
                                  "--all-slices", "--out", str(full)], full / "dataset.json", full)
    for seed in seeds:
        base = out / f"seed-{seed}"
        for count in cfg.exemplar_counts:
            tag = _tag(count)
            if not any(cfg.runs_at(arm, count) for arm in ("synthesized", "exemplars", "samed")):
                continue
            exemplar_list = base / "exemplars" / f"exemplars_{tag}.json"
            if not (dry_run or table_only):
                exemplar_list.parent.mkdir(parents=True, exist_ok=True)
            runner.run(f"s{seed}-select-{tag}", [synth, "select", *source, "--split", cfg.train_split, *split_file,
                                                 "--exemplars", count, "--seed", str(seed), *select_extra,
                                                 *workers,
                                                 "--out", str(exemplar_list)], exemplar_list)
            if cfg.runs_at("synthesized", count) or cfg.runs_at("samed", count):
                shards = base / "data" / f"synth_{tag}"
                extra = ["--num-samples", str(cfg.num_samples)] if cfg.num_samples else []
                runner.run(f"s{seed}-build-synth-{tag}",
                           [synth, "build", *source, "--split", cfg.train_split, *split_file, *build_extra,
                            "--exemplar-list", str(exemplar_list), "--seed", str(seed), *extra,
                            "--out", str(shards)], shards / "dataset.json", shards)
                if cfg.runs_at("synthesized", count):
                    train_tasks.append(Cell("synthesized", count, seed, shards, base / "runs" / f"synth_{tag}", {}))
                if cfg.runs_at("samed", count):
                    train_tasks.append(Cell("samed", count, seed, shards, base / "runs" / f"samed_{tag}", {}))
            if cfg.runs_at("exemplars", count):
                shards = base / "data" / f"exemplars_{tag}"
                runner.run(f"s{seed}-build-exemplars-{tag}",
                           [synth, "build", *source, "--split", cfg.train_split, *split_file, *build_extra,
                            "--exemplar-list", str(exemplar_list), "--no-synthesis",
                            "--out", str(shards)], shards / "dataset.json", shards)
                train_tasks.append(Cell("exemplars", count, seed, shards, base / "runs" / f"exemplars_{tag}", {}))
        if "full" in cfg.arms:
            train_tasks.append(Cell("full", "all", seed, out / "data" / "full", base / "runs" / "full", {}))

    thread_flags: list[str] = []
    if num_threads:
        thread_flags = ["--num-threads", str(num_threads)]
    elif jobs > 1:
        thread_flags = ["--num-threads", str(max(1, len(os.sched_getaffinity(0)) // jobs))]

    def evaluate(cell: Cell, prompts: list[str], model_flags: list[str]) -> None:
        for prompt in prompts:
            eval_dir = cell.evals[prompt]
            runner.run(f"s{cell.seed}-eval-{eval_dir.name}",
                       [train, "eval", *model_flags, "--shards", str(test_dir), *eval_flags(prompt), *eval_extra,
                        "--seed", str(cell.seed), *thread_flags, "--out", str(eval_dir)],
                       eval_dir / "summary.json", eval_dir)

    def train_and_eval(cell: Cell) -> Cell:
        run_dir = cell.run_dir
        assert run_dir is not None and cell.shards is not None
        flags = dict(fit)
        prompts = list(cfg.prompts)
        if cell.arm == "samed":
            flags.update(cfg.samed_fit)
            prompts = ["none"]
        argv_flags = cli_flags(flags, subs)
        fit_argv = [train, "fit", "--shards", str(cell.shards), *argv_flags, "--seed", str(cell.seed),
                    *thread_flags, "--no-progress", "--out", str(run_dir)]
        recipe = " ".join(argv_flags) + f" --seed {cell.seed}"
        done = run_dir / "DONE"
        evals_dir = run_dir.parent.parent / "evals"
        cell.evals = {p: evals_dir / f"{run_dir.name}_{p}" for p in prompts}
        if done.exists() and done.read_text().strip() != recipe:
            # a finished run of another recipe (e.g. a --steps check): redo it and its evaluations
            runner.say(f"[redo] fit-{run_dir.name}: recipe changed ({done.read_text().strip()!r} -> {recipe!r})")
            if not (dry_run or table_only):
                shutil.rmtree(run_dir)
                for eval_dir in cell.evals.values():
                    shutil.rmtree(eval_dir, ignore_errors=True)
        runner.run(f"s{cell.seed}-fit-{run_dir.name}", fit_argv, done, run_dir)
        if not (dry_run or table_only) and not done.exists():
            done.write_text(recipe + "\n")
        evaluate(cell, prompts, ["--run", str(run_dir)])
        return cell

    if "zero-shot" in cfg.arms:
        zs_flags = dict(cfg.zero_shot)
        zs_flags.setdefault("checkpoint", str(pretrained))
        for seed in seeds:  # centre prompts repeat exactly; random prompts differ by seed
            cell = Cell("zero-shot", "-", seed, None, None,
                        {p: out / f"seed-{seed}" / "evals" / f"zero_shot_{p}" for p in cfg.prompts})
            evaluate(cell, list(cfg.prompts), cli_flags(zs_flags, subs))
            cells.append(cell)

    cells += run_in_pool(train_and_eval, train_tasks, jobs)
    return cells, len(runner.timings)


def run_in_pool(fn, items: list, jobs: int) -> list:
    """``[fn(x) for x in items]`` on ``jobs`` threads, in order. The first failure stops the
    grid: no further item starts (only those already running finish), then its error is raised,
    so a failed fit surfaces at once instead of after every other queued fit has run."""
    stop = threading.Event()

    def guarded(x):
        if stop.is_set():  # checked by the worker itself: a freed thread may take the next item first
            raise CancelledError()
        try:
            return fn(x)
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(guarded, x) for x in items]
        wait(futures, return_when=FIRST_EXCEPTION)
        if stop.is_set():
            for f in futures:
                f.cancel()
            wait(futures)
            errors = [f.exception() for f in futures if not f.cancelled()]
            raise next(e for e in errors if e is not None and not isinstance(e, CancelledError))
        return [f.result() for f in futures]


# --------------------------------------------------------------------------- aggregation


@dataclass
class Stat:
    """Mean, standard deviation (n-1; 0 for one value) and range over the seeds that finished."""
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    def as_dict(self) -> dict:
        if not self.values:
            return {"n": 0}
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "min": min(self.values),
                "max": max(self.values), "values": self.values}

    def text(self, scale: float = 1.0, expected_n: int | None = None) -> str:
        """"mean ± sd"; "(n=k)" added when fewer seeds than expected have finished."""
        if not self.values:
            return "–"
        body = f"{scale * self.mean:.2f} ± {scale * self.sd:.2f}"
        return body if expected_n is None or self.n == expected_n else f"{body} (n={self.n})"


def _summary(path: Path) -> dict | None:
    summary = path / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else None


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def fit_device(run_summary: dict) -> str:
    """What a fit's time was measured on, from its summary.json: "CPU: <model>, N thread(s)",
    "GPU: <name>", or "unrecorded" (runs from before `train fit` recorded its device)."""
    device = run_summary.get("device")
    if not device:
        return "unrecorded"
    if str(device).startswith("cuda"):
        return f"GPU: {run_summary.get('device_name') or device}"
    threads = run_summary.get("threads")
    label = f"CPU: {run_summary.get('device_name') or device}"
    return f"{label}, {threads} thread{'' if threads == 1 else 's'}" if threads else label


def read_cases(eval_dir: Path) -> list[dict]:
    """An evaluation's cases.csv as dicts: volume, class, dsc, hd95, gt_voxels, pred_voxels, mssd
    (NaN when not defined) and volume_ratio (predicted / true voxels; NaN when the class is absent
    from the ground truth)."""
    path = eval_dir / "cases.csv"
    return read_case_csv(path) if path.exists() else []


def read_case_csv(path: Path) -> list[dict]:
    """:func:`read_cases` of one CSV file: an evaluation's cases.csv, or a grid's cells/*.csv (whose
    rows also carry the seed: then ``"seed"`` (int) is in each dict)."""

    def num(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    rows = []
    for line in csv.DictReader(io.StringIO(path.read_text())):
        gt, pred = num(line.get("gt_voxels")), num(line.get("pred_voxels"))
        ratio = num(line.get("volume_ratio"))
        if math.isnan(ratio):
            ratio = pred / gt if gt > 0 else math.nan
        row = {"volume": line["volume"], "class": line.get("class", ""), "dsc": num(line.get("dsc")),
               "hd95": num(line.get("hd95")), "volume_ratio": ratio, "gt_voxels": gt,
               "pred_voxels": pred, "mssd": num(line.get("mssd"))}
        if line.get("seed") not in (None, ""):
            row["seed"] = int(line["seed"])
        rows.append(row)
    return rows


def median_or_nan(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def fit_seconds(run_dir: Path, run_summary: dict) -> float | None:
    """A fit's time: its training steps (summary.json `seconds`) plus, with a frozen encoder, the
    embedding pass before them (config.json `embeddings.seconds`): about half of a CPU LiteMedSAM fit."""
    steps = run_summary.get("seconds")
    if not steps:
        return None
    config = run_dir / "config.json"
    embeddings = (json.loads(config.read_text()).get("embeddings") or {}) if config.exists() else {}
    return round(float(steps) + float(embeddings.get("seconds") or 0.0), 3)


def aggregate(cfg: ExperimentConfig, cells: list[Cell], out: Path) -> dict:
    """Group cells by (arm, count): per prompt, Stat of mean DSC and mean HD95 over seeds, the
    per-case volume ratios of every seed; fit times per device; per-patient CSVs."""
    rows: dict[tuple[str, str], dict] = {}
    cells_dir = out / "cells"
    for cell in cells:
        key = (cell.arm, cell.count)
        row = rows.setdefault(key, {"arm": cell.arm, "count": cell.count, "prompts": {}, "train_samples": None,
                                    "fit_seconds": [], "fit_by_device": {}, "per_class": {}})
        if cell.shards is not None and (cell.shards / "dataset.json").exists():
            row["train_samples"] = int(json.loads((cell.shards / "dataset.json").read_text()).get("num_samples", 0))
        if cell.run_dir is not None and (cell.run_dir / "summary.json").exists():
            run_summary = json.loads((cell.run_dir / "summary.json").read_text())
            seconds = fit_seconds(cell.run_dir, run_summary)
            if seconds:
                row["fit_seconds"].append(seconds)
                row["fit_by_device"].setdefault(fit_device(run_summary), []).append(seconds)
        for prompt, eval_dir in cell.evals.items():
            summary = _summary(eval_dir)
            entry = row["prompts"].setdefault(prompt, {"dsc": Stat([]), "hd95": Stat([]), "seeds": [],
                                                       "hd95_unit": None, "per_class": {}, "volume_ratios": []})
            if summary is None:
                continue
            entry["seeds"].append(cell.seed)
            entry["volume_ratios"] += [c["volume_ratio"] for c in read_cases(eval_dir)]
            if _finite(summary.get("mean_dsc")):
                entry["dsc"].values.append(float(summary["mean_dsc"]))
            if _finite(summary.get("mean_hd95")):
                entry["hd95"].values.append(float(summary["mean_hd95"]))
            entry["hd95_unit"] = summary.get("hd95_unit", entry["hd95_unit"])
            for name, per in summary.get("per_class", {}).items():
                if _finite(per.get("dsc")):
                    entry["per_class"].setdefault(name, Stat([])).values.append(float(per["dsc"]))
            _append_cases(cells_dir / f"{cell.arm}_{_tag(cell.count)}_{prompt}.csv", cell.seed, eval_dir)
    return rows


def _append_cases(target: Path, seed: int, eval_dir: Path) -> None:
    """The per-patient rows behind a table cell: every seed's cases.csv with a seed column."""
    cases = eval_dir / "cases.csv"
    if not cases.exists():
        return
    reader = csv.reader(io.StringIO(cases.read_text()))
    header = next(reader)
    target.parent.mkdir(parents=True, exist_ok=True)
    new = not target.exists()
    with target.open("a", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        if new:
            writer.writerow(["seed", *header])
        for line in reader:
            writer.writerow([seed, *line])


def _row_order(cfg: ExperimentConfig, rows: dict) -> list[tuple[str, str]]:
    order: list[tuple[str, str]] = []
    counts = list(cfg.exemplar_counts)
    for arm in ("zero-shot", "samed", "synthesized", "full", "exemplars"):
        for count in (["-"] if arm == "zero-shot" else ["all"] if arm == "full" else counts):
            if (arm, count) in rows:
                order.append((arm, count))
    return order


def render_tables(cfg: ExperimentConfig, rows: dict, fit: dict, wall_s: float, jobs: int, ran_steps: int) -> str:
    seeds = cfg.seed_list
    n = len(seeds)
    unit = next((e["hd95_unit"] for r in rows.values() for e in r["prompts"].values() if e["hd95_unit"]), "mm")
    unit = "voxels" if unit == "voxel" else unit
    classes: list[str] = []
    for r in rows.values():
        for e in r["prompts"].values():
            for name in e["per_class"]:
                if name not in classes:
                    classes.append(name)
    multi = len(classes) > 1
    recipe = f"`train fit {' '.join(cli_flags(fit))} --seed S`"
    lines = [f"### {cfg.name}", "",
             f"Test cases: split `{cfg.test_split}` of `{cfg.dataset}`; training cases: split `{cfg.train_split}`. "
             f"Recipe: {recipe}, seeds S = {', '.join(map(str, seeds))} (selection, synthesis, training and "
             f"random prompts seeded together). Cells: mean ± standard deviation over the seeds "
             f"(range in results.json; per-patient rows in cells/*.csv); 3D DSC in %, HD95 in {unit}.", ""]
    head = ["Method", "Exemplars", "Train samples"]
    for prompt in cfg.prompts:
        head += [f"DSC (%) {prompt}", f"HD95 ({unit}) {prompt}"]
    if multi:
        head += [f"{c.replace('_', ' ')} ({cfg.prompts[0]})" for c in classes]
    devices = FitColumns([rows[key] for key in _row_order(cfg, rows)])
    head += [f"Vol. ratio ({cfg.prompts[0]})", *devices.headers()]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for key in _row_order(cfg, rows):
        r = rows[key]
        cells = [ARM_LABELS[r["arm"]], r["count"], str(r["train_samples"]) if r["train_samples"] else "–"]
        for prompt in cfg.prompts:
            # a promptless arm has one evaluation: shown in the first prompt column
            e = r["prompts"].get(prompt) or (r["prompts"].get("none") if prompt == cfg.prompts[0] else None)
            cells += [e["dsc"].text(100.0, n), e["hd95"].text(1.0, n)] if e else ["–", "–"]
        first = r["prompts"].get(cfg.prompts[0]) or r["prompts"].get("none")
        if multi:
            cells += [first["per_class"][c].text(100.0, n) if first and c in first["per_class"] else "–"
                      for c in classes]
        cells.append(ratio_text(first["volume_ratios"] if first else []))
        cells += devices.cells(r, n)
        lines.append("| " + " | ".join(cells) + " |")
    synth_counts = [c for c in cfg.exemplar_counts if ("synthesized", c) in rows and ("exemplars", c) in rows]
    if synth_counts:
        lines += ["", f"With and without synthesis (paper's Table 3), DSC (%) with {cfg.prompts[0]} prompts:", "",
                  "| Exemplars | synthesized | exemplars only | difference (mean of per-seed differences) |",
                  "|---:|---:|---:|---:|"]
        for count in synth_counts:
            a = rows[("synthesized", count)]["prompts"].get(cfg.prompts[0])
            b = rows[("exemplars", count)]["prompts"].get(cfg.prompts[0])
            diff = _paired_difference(a, b)
            lines.append(f"| {count} | {a['dsc'].text(100.0, n) if a else '–'} | {b['dsc'].text(100.0, n) if b else '–'} "
                         f"| {diff.text(100.0, n)} |")
    lines += ["", f"Vol. ratio: median over the cases (and seeds) of predicted / true voxels, "
                  f"{cfg.prompts[0]} prompts (1 = no spill; issue 30's target 0.9-1.1). {devices.legend()}"]
    lines += ["", f"Machine: {platform.node() or 'unknown'}, {len(os.sched_getaffinity(0))} CPUs, "
                  f"{platform.processor() or platform.machine()}; `--jobs {jobs}`; "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
                  + (f"this invocation {wall_s / 60:.1f} min wall ({ran_steps} steps run)." if ran_steps
                     else "all steps reused from earlier invocations.")]
    if any(r["arm"] == "samed" for r in rows.values()):
        lines += ["", "SAMed-style rows are promptless (`--prompt none`); their evaluation sits in the first "
                      "prompt column."]
    if cfg.notes:
        lines += ["", cfg.notes]
    return "\n".join(lines) + "\n"


def ratio_text(ratios: list[float]) -> str:
    value = median_or_nan(ratios)
    return "–" if math.isnan(value) else f"{value:.3f}"


class FitColumns:
    """One "Fit (s)" column per device the rows' fits ran on, so no column mixes devices.

    Short headers (CPU, GPU, CPU 2, ...) with the full device names in legend(); a cell is the
    mean fit time on that device, "(n=k)" added when k differs from the fits expected."""

    def __init__(self, rows: list[dict]):
        self.devices: list[str] = sorted({d for r in rows for d in r.get("fit_by_device", {})})
        kinds = [d.split(":", 1)[0] for d in self.devices]
        self.short: dict[str, str] = {}
        for device, kind in zip(self.devices, kinds):
            same = [d for d, k in zip(self.devices, kinds) if k == kind]
            self.short[device] = kind if len(same) == 1 else f"{kind} {same.index(device) + 1}"

    def headers(self) -> list[str]:
        return [f"Fit (s), {self.short[d]}" for d in self.devices] or ["Fit (s)"]

    def cells(self, row: dict, expected_n: int | None = None) -> list[str]:
        if not self.devices:
            return ["–"]
        out = []
        for device in self.devices:
            values = row.get("fit_by_device", {}).get(device, [])
            if not values:
                out.append("–")
                continue
            text = f"{statistics.fmean(values):.0f}"
            out.append(text if expected_n is None or len(values) == expected_n else f"{text} (n={len(values)})")
        return out

    def legend(self) -> str:
        if not self.devices:
            return "Fit (s): `train fit` wall time (none finished)."

        def name(device: str) -> str:
            if device == "unrecorded":
                return "not recorded in the run's summary.json (a run from before train fit recorded it)"
            return device.split(": ", 1)[1]

        named = "; ".join(f"{self.short[d]} = {name(d)}" for d in self.devices)
        return (f"Fit (s): mean `train fit` time (training steps, summary.json `seconds`, plus a frozen encoder's "
                f"embedding pass, config.json `embeddings.seconds`), one column per device ({named}); "
                f"timings of different columns are not comparable.")


def _paired_difference(a: dict | None, b: dict | None) -> Stat:
    if not a or not b:
        return Stat([])
    by_seed_a = dict(zip(a["seeds"], a["dsc"].values))
    by_seed_b = dict(zip(b["seeds"], b["dsc"].values))
    return Stat([by_seed_a[s] - by_seed_b[s] for s in by_seed_a if s in by_seed_b])


def results_json(cfg: ExperimentConfig, rows: dict) -> dict:
    return {"name": cfg.name, "seeds": cfg.seed_list, "rows": [
        {"arm": r["arm"], "count": r["count"], "train_samples": r["train_samples"],
         "fit_seconds": r["fit_seconds"], "fit_seconds_by_device": r["fit_by_device"],
         "prompts": {p: {"seeds": e["seeds"], "dsc": e["dsc"].as_dict(), "hd95": e["hd95"].as_dict(),
                         "hd95_unit": e["hd95_unit"], "median_volume_ratio": _json_num(median_or_nan(e["volume_ratios"])),
                         "per_class_dsc": {c: s.as_dict() for c, s in e["per_class"].items()}}
                     for p, e in r["prompts"].items()}}
        for r in rows.values()]}


def _json_num(x: float) -> float | None:
    return None if math.isnan(x) else x


def _count_value(count: str) -> float | None:
    try:
        return float(count)
    except ValueError:
        return None


def plot_dsc(cfg: ExperimentConfig, rows: dict, target: Path, over: str = "seeds") -> Path | None:
    """DSC against the number of exemplars, with and without synthesis, mean with min-max bars.

    Needs matplotlib (`pip install exemplar-sam[bench]`); without it the plot is skipped with a note."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed (pip install -e '.[bench]'): no plot written")
        return None
    prompt = cfg.prompts[0]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    plotted = False
    for arm, style in (("synthesized", "o-"), ("exemplars", "s--")):
        xs, ys, lo, hi = [], [], [], []
        for count in cfg.exemplar_counts:
            e = rows.get((arm, count), {}).get("prompts", {}).get(prompt)
            x = _count_value(count)
            if e is None or not e["dsc"].values or x is None:
                continue
            xs.append(x)
            ys.append(100 * e["dsc"].mean)
            lo.append(100 * (e["dsc"].mean - min(e["dsc"].values)))
            hi.append(100 * (max(e["dsc"].values) - e["dsc"].mean))
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt=style, capsize=4, label=ARM_LABELS[arm])
            plotted = True
    for arm, colour in (("full", "tab:green"), ("zero-shot", "tab:grey")):
        key = ("full", "all") if arm == "full" else ("zero-shot", "-")
        e = rows.get(key, {}).get("prompts", {}).get(prompt)
        if e and e["dsc"].values:
            ax.axhline(100 * e["dsc"].mean, color=colour, linestyle=":", label=ARM_LABELS[arm])
            plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ticks = sorted({v for v in (_count_value(c) for c in cfg.exemplar_counts) if v is not None})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("number of exemplar slices (log scale)")
    ax.set_ylabel(f"3D DSC (%), {prompt} prompts")
    ax.set_title(f"{cfg.name}\nmean over {over}; bars = min-max", fontsize=10)   # two lines: the CV wording is long
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target)
    plt.close(fig)
    return target


def write_grid_outputs(cfg: ExperimentConfig, cells: list[Cell], out: Path, fit: dict, wall_s: float, jobs: int,
                       ran_steps: int) -> tuple[str, dict]:
    """table.md, results.json, cells/ and the plot of one grid (or one fold); returns the table and its rows."""
    if (out / "cells").exists():
        shutil.rmtree(out / "cells")  # rebuilt from the evaluations every time
    rows = aggregate(cfg, cells, out)
    table = render_tables(cfg, rows, fit, wall_s, jobs, ran_steps)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps(results_json(cfg, rows), indent=1) + "\n")
    plot_dsc(cfg, rows, out / "dsc_vs_exemplars.png")
    return table, rows


def write_outputs(cfg: ExperimentConfig, cells: list[Cell], out: Path, fit: dict, wall_s: float, jobs: int,
                  ran_steps: int) -> str:
    return write_grid_outputs(cfg, cells, out, fit, wall_s, jobs, ran_steps)[0]


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
    parser.add_argument("--num-threads", type=int, default=None,
                        help="torch threads of every fit/eval/pretrain and --workers of every synth step "
                             "(default: CPUs/jobs threads with --jobs > 1, else the tools' defaults)")
    parser.add_argument("--folds", type=Path, default=None,
                        help="cross-validation: a fold file (data_manifests/splits/*_sites.json); the grid runs "
                             "once per fold and OUT/cv_table.md has the tables across folds (default: the "
                             "config's \"folds\", if any)")
    parser.add_argument("--only-folds", nargs="+", default=None, metavar="FOLD",
                        help="with folds: run only these folds now (the tables still use every finished fold)")
    parser.add_argument("--only-seeds", type=int, nargs="+", default=None,
                        help="run only these seeds now (the tables still use every finished seed)")
    parser.add_argument("--only-counts", nargs="+", default=None, metavar="N",
                        help="run only these exemplar counts now, e.g. the largest first (the tables still use "
                             "every finished count)")
    parser.add_argument("--only-arms", nargs="+", default=None, metavar="ARM",
                        help="run only these of the config's arms now, e.g. an arm added to a finished grid "
                             "(the tables still use every finished arm)")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: rebuild table.md, results.json, cells/ and the plot from finished steps")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = parser.parse_args(argv)
    cfg = ExperimentConfig.load(args.config)
    run_cfg = cfg
    if args.only_counts:
        stray = [c for c in args.only_counts if c not in cfg.exemplar_counts]
        if stray:
            raise SystemExit(f"--only-counts {stray}: not in the config's exemplar_counts {cfg.exemplar_counts}")
        run_cfg = dataclasses.replace(cfg, exemplar_counts=[c for c in cfg.exemplar_counts if c in args.only_counts])
    if args.only_arms:
        stray = [a for a in args.only_arms if a not in cfg.arms]
        if stray:
            raise SystemExit(f"--only-arms {stray}: not in the config's arms {cfg.arms}")
        run_cfg = dataclasses.replace(run_cfg, arms=[a for a in cfg.arms if a in args.only_arms])
    partial = args.only_seeds is not None or bool(args.only_counts) or bool(args.only_arms)
    out = (args.out or PROJECT_ROOT / "runs" / f"experiment-{cfg.name}").resolve()
    data_root = args.data_root.resolve()
    fit = dict(cfg.fit)
    if args.steps is not None:
        fit["steps"] = args.steps
    start = time.perf_counter()
    folds_path = args.folds or (Path(cfg.folds) if cfg.folds else None)
    if folds_path is None:
        if args.only_folds:
            raise SystemExit("--only-folds needs a fold file (--folds FILE or the config's \"folds\")")
        cells, ran = plan_and_run(run_cfg, data_root, out, args.dry_run, args.steps, args.jobs,
                                  args.only_seeds, args.table_only, args.num_threads)
        if args.dry_run:
            return
        if partial:  # the tables cover every finished cell, not only those of this selection
            cells, _ = plan_and_run(cfg, data_root, out, False, args.steps, args.jobs, None, True)
        table = write_outputs(cfg, cells, out, fit, time.perf_counter() - start, args.jobs, ran)
    else:
        from bench.cross_site import FoldFileError, check_folds_against_source, load_folds, plan_cv, write_cv_outputs

        folds_path = folds_path if folds_path.is_absolute() else PROJECT_ROOT / folds_path
        try:
            folds = load_folds(folds_path)
            check_folds_against_source(cfg, folds, data_root)
            fold_cells, ran = plan_cv(run_cfg, folds, data_root, out, args.dry_run, args.steps, args.jobs,
                                      args.only_seeds, args.only_folds, args.table_only, args.num_threads)
        except FoldFileError as exc:
            raise SystemExit(f"error: {exc}") from None
        if args.dry_run:
            return
        if partial or args.only_folds is not None:
            fold_cells, _ = plan_cv(cfg, folds, data_root, out, False, args.steps, args.jobs, table_only=True)
        table = write_cv_outputs(cfg, folds, fold_cells, out, fit, time.perf_counter() - start, args.jobs, ran)
    print(table)
    print(f"experiment {cfg.name}: {time.perf_counter() - start:.0f} s, table at "
          f"{out / ('cv_table.md' if folds_path else 'table.md')}")


if __name__ == "__main__":
    # Run the importable copy (bench.experiment), the one bench/cross_site.py imports, so the two
    # share one ExperimentConfig / Cell / Stat instead of a __main__ copy of each.
    sys.path.insert(0, str(PROJECT_ROOT))
    from bench.experiment import main as _main

    _main()
