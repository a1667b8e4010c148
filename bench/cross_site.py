"""Leave-site-out cross-validation over an experiment grid (issue 30): `bench/experiment.py --folds FILE`.

    python bench/experiment.py bench/experiments/brats_cohort_sites.json --out runs/cv-sites --num-threads 1

A fold file (data_manifests/splits/*_sites.json, schema data_manifests/schemas/cv_folds.schema.json)
groups a cohort's cases by site; each fold trains on the other sites' cases and tests on its
held-out sites' cases. The grid of bench/experiment.py (the same cells; bench/experiment_tables.py's
aggregate() and tables) runs once per fold in OUT/fold-<name>/ with that fold's split file
OUT/fold-<name>/split.json for `synth select/build/pack --split-file` and its own table.md / cells/. On top, OUT/cv_table.md and OUT/cv_results.json: per row (arm, exemplar count) the mean
and sd across folds, the sd across seeds, the per-case mean, the median predicted/true volume
ratio, fit times per device; per-fold rows, per-site rows, and the paired synthesis difference.
The protocol and the fold table: docs/cross_site.md.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench.experiment import plan_and_run
from bench.experiment_config import ARM_LABELS, PROJECT_ROOT, Cell, ExperimentConfig, cli_flags
from bench.experiment_tables import (FitColumns, Stat, json_number, mean_or_nan, median_or_nan, paired_difference,
                                     plot_dsc, ratio_text, read_cases, row_order, write_grid_outputs)


class FoldFileError(ValueError):
    """A fold file that does not load or whose folds are not a leave-site-out partition."""


@dataclass
class Fold:
    name: str
    held_out_sites: list[str]
    train: list[str]
    test: list[str]


@dataclass
class FoldFile:
    path: Path
    dataset: str
    sites: dict[str, list[str]]        # site -> its cases (sorted)
    excluded: list[str]                # cases in no site and no fold (the reported test split)
    folds: list[Fold]
    min_test_cases: int = 1

    @property
    def cases(self) -> list[str]:
        """Every case of every site: the cases the folds partition."""
        return sorted(c for cases in self.sites.values() for c in cases)

    def site_of(self, case: str) -> str | None:
        return next((site for site, cases in self.sites.items() if case in cases), None)

    def fold(self, name: str) -> Fold:
        for fold in self.folds:
            if fold.name == name:
                return fold
        raise FoldFileError(f"{self.path}: no fold {name!r} (folds: {', '.join(f.name for f in self.folds)})")


def load_folds(path: str | Path) -> FoldFile:
    """Read and check a fold file: its schema, then that the sites are disjoint (and match their
    patterns), that no excluded case is in a site, that every site is held out by exactly one fold,
    and that each fold's test cases are its held-out sites' cases (at least min_test_cases) and its
    training cases every other site's case. FoldFileError (one line) otherwise."""
    import re

    from shared.errors import DataError
    from shared.manifest import read_json, validate

    path = Path(path)
    try:
        raw = read_json(path)
        validate(raw, "cv_folds", where=str(path))
    except DataError as exc:
        raise FoldFileError(str(exc)) from None
    sites = {name: sorted(site["cases"]) for name, site in raw["sites"].items()}
    excluded = sorted(raw.get("excluded", {}).get("cases", []))
    min_test = int(raw.get("min_test_cases", 1))
    seen: dict[str, str] = {}
    for name, site in raw["sites"].items():
        for case in site["cases"]:
            if case in seen:
                raise FoldFileError(f"{path}: case {case} is in sites {seen[case]!r} and {name!r}")
            seen[case] = name
            if "pattern" in site and not re.search(site["pattern"], case):
                raise FoldFileError(f"{path}: case {case} of site {name!r} does not match its pattern {site['pattern']!r}")
            if case in excluded:
                raise FoldFileError(f"{path}: case {case} is excluded and in site {name!r}")
    everyone = sorted(seen)
    folds = [Fold(f["name"], list(f["held_out_sites"]), sorted(f["train"]), sorted(f["test"])) for f in raw["folds"]]
    names = [f.name for f in folds]
    if len(set(names)) != len(names):
        raise FoldFileError(f"{path}: fold names repeat: {names}")
    held = [s for f in folds for s in f.held_out_sites]
    unknown = sorted(set(held) - set(sites))
    if unknown:
        raise FoldFileError(f"{path}: folds hold out unknown site(s) {unknown} (sites: {', '.join(sites)})")
    twice = sorted({s for s in held if held.count(s) > 1})
    never = [s for s in sites if s not in held]
    if twice or never:
        raise FoldFileError(f"{path}: every site must be held out by exactly one fold "
                            f"(twice: {twice or 'none'}; never: {never or 'none'})")
    for fold in folds:
        want_test = sorted(c for s in fold.held_out_sites for c in sites[s])
        want_train = [c for c in everyone if c not in want_test]
        if fold.test != want_test:
            raise FoldFileError(f"{path}: fold {fold.name!r}: test must be the cases of {fold.held_out_sites} "
                                f"(differs at {sorted(set(fold.test) ^ set(want_test))[:3]})")
        if fold.train != want_train:
            raise FoldFileError(f"{path}: fold {fold.name!r}: train must be every other site's case "
                                f"(differs at {sorted(set(fold.train) ^ set(want_train))[:3]})")
        if len(fold.test) < min_test:
            raise FoldFileError(f"{path}: fold {fold.name!r} tests on {len(fold.test)} case(s), fewer than "
                                f"min_test_cases {min_test}: merge its sites with another")
    return FoldFile(path, raw["dataset"], sites, excluded, folds, min_test)


def check_folds_cover(folds: FoldFile, case_ids: list[str], test_ids: list[str] | None = None) -> None:
    """The fold file against a source's cases: each case is in a site or excluded, no other
    case is named, and (given the source's test split) the excluded cases are that test split."""
    named = set(folds.cases) | set(folds.excluded)
    missing = sorted(set(case_ids) - named)
    extra = sorted(named - set(case_ids))
    if missing or extra:
        raise FoldFileError(f"{folds.path}: does not cover the source's {len(case_ids)} cases "
                            f"(in no site: {missing[:3] or 'none'}; not in the source: {extra[:3] or 'none'})")
    if test_ids is not None and sorted(test_ids) != folds.excluded:
        raise FoldFileError(f"{folds.path}: excluded cases {folds.excluded} are not the source's test split "
                            f"{sorted(test_ids)}")


def fold_split(folds: FoldFile, fold: Fold) -> dict:
    """The `--split-file` of one fold."""
    return {"description": f"fold {fold.name} of {folds.path.name}: train on the other sites, test on "
                           f"{', '.join(fold.held_out_sites)}",
            "fold": fold.name, "held_out_sites": fold.held_out_sites, "train": fold.train, "test": fold.test}


def plan_cv(cfg: ExperimentConfig, folds: FoldFile, data_root: Path, out: Path, dry_run: bool, steps: int | None,
            jobs: int = 1, only_seeds: list[int] | None = None, only_folds: list[str] | None = None,
            table_only: bool = False, num_threads: int | None = None) -> tuple[dict[str, list[Cell]], int]:
    """plan_and_run once per fold, in OUT/fold-<name>/ with that fold's split file.

    Returns the cells per fold name (every fold when table_only) and the number of steps run."""
    chosen = [folds.fold(name) for name in only_folds] if only_folds else list(folds.folds)
    fold_cells: dict[str, list[Cell]] = {}
    ran = 0
    for fold in chosen:
        fold_out = out / f"fold-{fold.name}"
        split_path = fold_out / "split.json"
        split = fold_split(folds, fold)
        if split_path.exists():
            old = json.loads(split_path.read_text())
            if (old.get("train"), old.get("test")) != (split["train"], split["test"]):
                raise SystemExit(f"{split_path}: this fold's cases changed in {folds.path}; its outputs belong to "
                                 f"the old folds: use another --out")
        elif not (dry_run or table_only):
            fold_out.mkdir(parents=True, exist_ok=True)
            split_path.write_text(json.dumps(split, indent=1) + "\n")
        fold_cfg = dataclasses.replace(cfg, name=f"{cfg.name} fold {fold.name}", split_file=str(split_path),
                                       train_split="train", test_split="test", folds=None,
                                       notes=f"Fold {fold.name} of `{folds.path.name}`: held out "
                                             f"{', '.join(fold.held_out_sites)} ({len(fold.test)} test cases), "
                                             f"trained on {len(fold.train)} cases of the other sites.")
        if not table_only:
            print(f"[fold] {fold.name}: train {len(fold.train)} cases, test {len(fold.test)} "
                  f"({', '.join(fold.held_out_sites)}) -> {fold_out}", flush=True)
        cells, n = plan_and_run(fold_cfg, data_root, fold_out, dry_run, steps, jobs, only_seeds, table_only,
                                num_threads)
        fold_cells[fold.name] = cells
        ran += n
    return fold_cells, ran


def cv_rows(cfg: ExperimentConfig, folds: FoldFile, fold_rows: dict[str, dict],
            fold_cells: dict[str, list[Cell]]) -> dict:
    """Across folds, from each fold's aggregate() rows and its evaluations' cases.csv.

    For each (arm, count) and prompt:
      folds:  Stat over the folds of the fold's mean over seeds (spread = sd across folds);
      seeds:  Stat over the seeds of the mean over folds (only seeds finished in every fold);
      cases:  mean over every held-out case and seed (the case-weighted mean);
      hd95:   Stat over the folds, like folds; volume_ratios: every case of every fold and seed.
    Per fold: the fold's row (Stat over seeds). Per site: the cases of that site in the fold that
    holds it out, per seed their mean DSC / HD95 -> Stat over seeds, and their volume ratios."""
    keys: list[tuple[str, str]] = []
    for rows in fold_rows.values():
        keys += [k for k in rows if k not in keys]
    summary: dict[tuple[str, str], dict] = {}
    for key in keys:
        entry = {"arm": key[0], "count": key[1], "prompts": {}, "fit_by_device": {}, "fit_seconds": [],
                 "train_samples": {}, "folds": {}}
        for fold_name, rows in fold_rows.items():
            row = rows.get(key)
            if row is None:
                continue
            entry["folds"][fold_name] = row
            entry["train_samples"][fold_name] = row["train_samples"]
            entry["fit_seconds"] += row["fit_seconds"]
            for device, values in row["fit_by_device"].items():
                entry["fit_by_device"].setdefault(device, []).extend(values)
            for prompt, e in row["prompts"].items():
                p = entry["prompts"].setdefault(prompt, {"folds": Stat([]), "fold_names": [], "hd95": Stat([]),
                                                         "seeds": Stat([]), "seed_ids": [], "cases": [],
                                                         "volume_ratios": [], "by_seed": {}})
                if e["dsc"].values:
                    p["folds"].values.append(e["dsc"].mean)
                    p["fold_names"].append(fold_name)
                if e["hd95"].values:
                    p["hd95"].values.append(e["hd95"].mean)
                p["volume_ratios"] += e["volume_ratios"]
                for seed, value in zip(e["seeds"], e["dsc"].values):
                    p["by_seed"].setdefault(seed, {})[fold_name] = value
        for p in entry["prompts"].values():
            n_folds = len(folds.folds)
            for seed in sorted(p["by_seed"]):
                if len(p["by_seed"][seed]) == n_folds:
                    p["seeds"].values.append(statistics.fmean(p["by_seed"][seed].values()))
                    p["seed_ids"].append(seed)
        summary[key] = entry
    # per-case values: pooled means and the per-site rows
    sites: dict[tuple[str, str, str], dict] = {}
    for fold_name, cells in fold_cells.items():
        for cell in cells:
            key = (cell.arm, cell.count)
            for prompt, eval_dir in cell.evals.items():
                cases = read_cases(eval_dir)
                if not cases or key not in summary:
                    continue
                summary[key]["prompts"][prompt]["cases"] += [c["dsc"] for c in cases]
                by_site: dict[str, list[dict]] = {}
                for case in cases:
                    by_site.setdefault(folds.site_of(case["volume"]) or "unknown", []).append(case)
                for site, rows in by_site.items():
                    s = sites.setdefault((site, *key), {"site": site, "fold": fold_name, "arm": key[0],
                                                        "count": key[1], "cases": len({c["volume"] for c in rows}),
                                                        "prompts": {}})
                    e = s["prompts"].setdefault(prompt, {"dsc": Stat([]), "hd95": Stat([]), "seeds": [],
                                                         "volume_ratios": []})
                    dsc = mean_or_nan([c["dsc"] for c in rows])
                    if math.isnan(dsc):
                        continue  # no case of this site scored (every one empty in both masks)
                    e["seeds"].append(cell.seed)
                    e["dsc"].values.append(dsc)
                    hd = mean_or_nan([c["hd95"] for c in rows])
                    if not math.isnan(hd):
                        e["hd95"].values.append(hd)
                    e["volume_ratios"] += [c["volume_ratio"] for c in rows]
    return {"summary": summary, "sites": sites}


def _cv_order(cfg: ExperimentConfig, keys) -> list[tuple[str, str]]:
    return row_order(cfg, {k: None for k in keys})


def render_cv_tables(cfg: ExperimentConfig, folds: FoldFile, cv: dict, fit: dict, wall_s: float, jobs: int,
                     ran_steps: int) -> str:
    summary, sites = cv["summary"], cv["sites"]
    n_seeds, n_folds = len(cfg.seed_list), len(folds.folds)
    first = cfg.prompts[0]
    recipe = f"`train fit {' '.join(cli_flags(fit))} --seed S`"
    fold_text = "; ".join(f"{f.name}: test {len(f.test)} ({', '.join(f.held_out_sites)}), train {len(f.train)}"
                          for f in folds.folds)
    lines = [f"### {cfg.name}: leave-site-out cross-validation", "",
             f"Folds: `{folds.path.name}` ({fold_text}); the {len(folds.excluded)} excluded cases (the reported "
             f"test split) are in no fold. Recipe: {recipe}, seeds S = {', '.join(map(str, cfg.seed_list))}. "
             f"Across folds: mean ± sd over the folds of each fold's mean over seeds (each fold's score = mean "
             f"over its held-out cases); seed sd: sd over the seeds of the mean over folds; per case: the mean "
             f"over every held-out case and seed. 3D DSC in %, HD95 in mm.", ""]
    order = _cv_order(cfg, summary)
    devices = FitColumns([summary[k] for k in order])
    head = ["Method", "Exemplars", "Folds"]
    for prompt in cfg.prompts:
        head += [f"DSC (%) {prompt}, across folds", f"seed sd {prompt}", f"per case {prompt}",
                 f"HD95 {prompt}, across folds"]
    head += [*(f"Vol. ratio ({prompt})" for prompt in cfg.prompts), *devices.headers()]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for key in order:
        r = summary[key]
        p0 = r["prompts"].get(first) or r["prompts"].get("none")
        cells = [ARM_LABELS[r["arm"]], r["count"], str(len(p0["fold_names"]) if p0 else 0)]
        ratios = []
        for prompt in cfg.prompts:
            p = r["prompts"].get(prompt) or (r["prompts"].get("none") if prompt == first else None)
            ratios.append(ratio_text(p["volume_ratios"] if p else []))
            if not p:
                cells += ["–"] * 4
                continue
            cells += [p["folds"].text(100.0, n_folds),
                      f"{100 * p['seeds'].sd:.2f}" if p["seeds"].n > 1 else "–",
                      f"{100 * mean_or_nan(p['cases']):.2f}" if p["cases"] else "–",
                      p["hd95"].text(1.0, n_folds)]
        cells += ratios
        cells += devices.cells(r, n_seeds * n_folds)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Vol. ratio: median over every held-out case (and seed) of predicted / true voxels, per "
                  f"evaluation; issue 30's target is 0.9-1.1. {devices.legend()}"]

    # per fold and per site: DSC, HD95 and volume ratio of every evaluation (the first one decides the rows)
    def prompt_head(*names: str) -> list[str]:
        if len(cfg.prompts) == 1:
            return list(names)
        return [f"{n} {prompt}" for prompt in cfg.prompts for n in names]

    def prompt_cells(by_prompt: dict) -> list[str] | None:
        cells: list[str] = []
        for prompt in cfg.prompts:
            e = by_prompt.get(prompt) or (by_prompt.get("none") if prompt == first else None)
            if prompt == first and (not e or not e["seeds"]):
                return None  # not evaluated yet
            cells += ([e["dsc"].text(100.0, n_seeds), e["hd95"].text(1.0, n_seeds), ratio_text(e["volume_ratios"])]
                      if e and e["seeds"] else ["–"] * 3)
        return cells

    detail = prompt_head("DSC (%)", "HD95 (mm)", "Vol. ratio")
    lines += ["", "**Per fold** (mean ± sd over the seeds):", "",
              "| " + " | ".join(["Fold", "Held out", "Test cases", "Train cases", "Method", "Exemplars", *detail])
              + " |",
              "|:---|:---|---:|---:|:---|:---|" + "---:|" * len(detail)]
    for fold in folds.folds:
        for key in order:
            row = summary[key]["folds"].get(fold.name)
            cells = prompt_cells(row["prompts"]) if row else None
            if cells is None:
                continue
            lines.append(f"| {fold.name} | {', '.join(fold.held_out_sites)} | {len(fold.test)} | {len(fold.train)} "
                         f"| {ARM_LABELS[key[0]]} | {key[1]} | " + " | ".join(cells) + " |")

    lines += ["", "**Per site** (the site's cases in the fold that holds it out; mean over its cases, then "
                  "mean ± sd over the seeds):", "",
              "| " + " | ".join(["Site", "Cases", "Fold", "Method", "Exemplars", *detail]) + " |",
              "|:---|---:|:---|:---|:---|" + "---:|" * len(detail)]
    site_names = list(folds.sites) + sorted({k[0] for k in sites} - set(folds.sites))
    for site in site_names:
        for key in order:
            s = sites.get((site, *key))
            cells = prompt_cells(s["prompts"]) if s else None
            if cells is None:
                continue
            lines.append(f"| {site} | {s['cases']} | {s['fold']} | {ARM_LABELS[key[0]]} | {key[1]} | "
                         + " | ".join(cells) + " |")

    # with and without synthesis, paired per fold and seed
    both = [c for c in cfg.exemplar_counts if ("synthesized", c) in summary and ("exemplars", c) in summary]
    if both:
        lines += ["", f"**With and without synthesis** (DSC %, {first} prompts; per fold the mean of the per-seed "
                      f"differences, then mean ± sd across folds):", "",
                  "| Exemplars | synthesized | exemplars only | difference across folds | "
                  + " | ".join(f"difference, {f.name}" for f in folds.folds) + " |",
                  "|---:|---:|---:|---:|" + "---:|" * n_folds]
        for count in both:
            a, b = summary[("synthesized", count)], summary[("exemplars", count)]
            per_fold = []
            for fold in folds.folds:
                fa, fb = a["folds"].get(fold.name), b["folds"].get(fold.name)
                diff = paired_difference(fa["prompts"].get(first) if fa else None,
                                          fb["prompts"].get(first) if fb else None)
                per_fold.append(diff)
            across = Stat([d.mean for d in per_fold if d.values])
            pa, pb = a["prompts"].get(first), b["prompts"].get(first)
            lines.append(f"| {count} | {pa['folds'].text(100.0, n_folds) if pa else '–'} "
                         f"| {pb['folds'].text(100.0, n_folds) if pb else '–'} | {across.text(100.0, n_folds)} | "
                         + " | ".join(d.text(100.0, n_seeds) for d in per_fold) + " |")
    lines += ["", f"Machine: {platform.node() or 'unknown'}, {len(os.sched_getaffinity(0))} CPUs, "
                  f"{platform.processor() or platform.machine()}; `--jobs {jobs}`; "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
                  + (f"this invocation {wall_s / 60:.1f} min wall ({ran_steps} steps run)." if ran_steps
                     else "all steps reused from earlier invocations.")
                  + " Per-fold tables: fold-*/table.md."]
    if cfg.notes:
        lines += ["", cfg.notes]
    return "\n".join(lines) + "\n"


def cv_results_json(cfg: ExperimentConfig, folds: FoldFile, cv: dict) -> dict:
    def stat(s: Stat) -> dict:
        return s.as_dict()

    rows = []
    for key in _cv_order(cfg, cv["summary"]):
        r = cv["summary"][key]
        rows.append({"arm": r["arm"], "count": r["count"], "train_samples": r["train_samples"],
                     "fit_seconds_by_device": r["fit_by_device"],
                     "prompts": {p: {"across_folds": stat(e["folds"]), "folds": e["fold_names"],
                                     "across_seeds": stat(e["seeds"]), "seeds": e["seed_ids"],
                                     "per_case_mean": json_number(mean_or_nan(e["cases"])), "n_case_scores": len(e["cases"]),
                                     "hd95_across_folds": stat(e["hd95"]),
                                     "median_volume_ratio": json_number(median_or_nan(e["volume_ratios"])),
                                     "per_fold_seed": {str(s): v for s, v in e["by_seed"].items()}}
                                 for p, e in r["prompts"].items()}})
    sites = [{"site": s["site"], "fold": s["fold"], "arm": s["arm"], "count": s["count"], "cases": s["cases"],
              "prompts": {p: {"seeds": e["seeds"], "dsc": stat(e["dsc"]), "hd95": stat(e["hd95"]),
                              "median_volume_ratio": json_number(median_or_nan(e["volume_ratios"]))}
                          for p, e in s["prompts"].items()}} for s in cv["sites"].values()]
    return {"name": cfg.name, "folds_file": str(folds.path), "seeds": cfg.seed_list,
            "folds": [{"name": f.name, "held_out_sites": f.held_out_sites, "train_cases": len(f.train),
                       "test_cases": len(f.test)} for f in folds.folds],
            "excluded": folds.excluded, "rows": rows, "sites": sites}


def write_cv_outputs(cfg: ExperimentConfig, folds: FoldFile, fold_cells: dict[str, list[Cell]], out: Path,
                     fit: dict, wall_s: float, jobs: int, ran_steps: int) -> str:
    """Each fold's own outputs (fold-<name>/table.md, ...) and the tables across folds:
    OUT/cv_table.md, OUT/cv_results.json, OUT/dsc_vs_exemplars.png (DSC across folds)."""
    fold_rows = {}
    for fold in folds.folds:
        fold_out = out / f"fold-{fold.name}"
        if not fold_out.is_dir():
            continue  # a fold not started yet: no outputs of its own
        fold_cfg = dataclasses.replace(cfg, name=f"{cfg.name} fold {fold.name}", folds=None)
        _, fold_rows[fold.name] = write_grid_outputs(fold_cfg, fold_cells.get(fold.name, []), fold_out, fit,
                                                     wall_s, jobs, 0)
    cv = cv_rows(cfg, folds, fold_rows, fold_cells)
    table = render_cv_tables(cfg, folds, cv, fit, wall_s, jobs, ran_steps)
    (out / "cv_table.md").write_text(table)
    (out / "cv_results.json").write_text(json.dumps(cv_results_json(cfg, folds, cv), indent=1) + "\n")
    plot_rows = {k: {"prompts": {p: {"dsc": e["folds"]} for p, e in r["prompts"].items()}}
                 for k, r in cv["summary"].items()}
    plot_dsc(cfg, plot_rows, out / "dsc_vs_exemplars.png", over="folds (each the mean over seeds)")
    return table


def check_folds_against_source(cfg: ExperimentConfig, folds: FoldFile, data_root: Path) -> None:
    """The fold file covers the source's cases and excludes its test split (when the data is here)."""
    if folds.dataset != cfg.dataset:
        raise FoldFileError(f"{folds.path}: folds of dataset {folds.dataset!r}, the config's is {cfg.dataset!r}")
    root = Path(cfg.root.replace("{data}", str(data_root))) if cfg.root else None  # demo sources take none
    if root is not None and not root.is_dir():
        print(f"[note] {root} is not here: the folds are not checked against its cases", flush=True)
        return
    from shared.sources import open_source
    from shared.splits import split_parts

    source = open_source(cfg.dataset, root)
    split_file = None
    if cfg.split_file:
        split_file = Path(cfg.split_file) if Path(cfg.split_file).is_absolute() else PROJECT_ROOT / cfg.split_file
    check_folds_cover(folds, source.case_ids(), split_parts(source, split_file)[0]["test"])
