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
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the project's bench package

from bench.experiment_config import PROJECT_ROOT, Cell, ExperimentConfig, cli_flags, count_tag, eval_flags  # noqa: E402
from bench.experiment_runner import Runner, run_in_pool, tool  # noqa: E402
from bench.experiment_tables import write_outputs  # noqa: E402


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
            tag = count_tag(count)
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
    main()
