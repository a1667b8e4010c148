"""The numbers of a finished experiment grid: each cell's evaluations read back (summary.json,
cases.csv), aggregated over seeds, written as table.md, results.json, cells/*.csv and the plot of
DSC against the number of exemplars."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench.experiment_config import ARM_LABELS, Cell, ExperimentConfig, cli_flags, count_tag


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


def mean_or_nan(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


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
            _append_cases(cells_dir / f"{cell.arm}_{count_tag(cell.count)}_{prompt}.csv", cell.seed, eval_dir)
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


def row_order(cfg: ExperimentConfig, rows: dict) -> list[tuple[str, str]]:
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
    devices = FitColumns([rows[key] for key in row_order(cfg, rows)])
    head += [f"Vol. ratio ({cfg.prompts[0]})", *devices.headers()]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for key in row_order(cfg, rows):
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
            diff = paired_difference(a, b)
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


def paired_difference(a: dict | None, b: dict | None) -> Stat:
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
                         "hd95_unit": e["hd95_unit"], "median_volume_ratio": json_number(median_or_nan(e["volume_ratios"])),
                         "per_class_dsc": {c: s.as_dict() for c, s in e["per_class"].items()}}
                     for p, e in r["prompts"].items()}}
        for r in rows.values()]}


def json_number(x: float) -> float | None:
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
