"""Evaluation reports: summary.json, cases.csv, table.md, and side-by-side tables (`train report`).

Units follow the paper's tables: DSC in percent with two decimals, HD95 with two decimals in the
evaluation's unit (mm by default, voxels with ``--hd95-unit voxel`` or for sources without geometry).
``summary.json`` keeps DSC as a fraction 0-1 (``mean_dsc``) so programs need not divide by 100.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable, Sequence

from shared.errors import DataError
from shared.fileio import read_json

from .metrics import CaseScore, Summary

CASES_COLUMNS = ("volume", "class", "dsc", "hd95", "gt_voxels", "pred_voxels", "volume_ratio", "mssd",
                 "note")


SHAPE_KEYS = ("volume_ratio_median", "volume_ratio_mean", "mssd")  # per-class keys next to dsc/hd95


def _num(x: float) -> float | None:
    """JSON has no NaN: unscored numbers are written as null."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def summary_dict(summary: Summary, *, task: str, class_names: Sequence[str], **extra) -> dict:
    """The content of summary.json (fractions for DSC, mm for HD95, null where not scored)."""
    return {
        "mean_dsc": _num(summary.mean_dsc),
        "mean_hd95": _num(summary.mean_hd95),
        "per_class": {name: {"dsc": _num(v["dsc"]), "hd95": _num(v["hd95"]), "n_volumes": v["n_volumes"],
                             **{key: _num(v.get(key, float("nan"))) for key in SHAPE_KEYS}}
                      for name, v in summary.per_class.items()},
        # over-/under-segmentation (train.metrics): pred/true volume, signed surface distance in mm
        "median_volume_ratio": _num(summary.median_volume_ratio),
        "mean_mssd": _num(summary.mean_mssd),
        "mssd_sign": "positive = prediction outside the ground truth (spill), negative = inside",
        "n_volumes": summary.n_volumes,
        "task": task,
        "class_names": list(class_names),
        **extra,
    }


def cases_csv(rows: Iterable[CaseScore]) -> str:
    """cases.csv: one row per volume and class; unscored numbers are written as NaN."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CASES_COLUMNS)
    for r in rows:
        writer.writerow([r.volume, r.class_name, f"{r.dsc:.6f}" if r.scored else "NaN",
                         "NaN" if math.isnan(r.hd95) else f"{r.hd95:.4f}", r.gt_voxels, r.pred_voxels,
                         "NaN" if math.isnan(r.volume_ratio) else f"{r.volume_ratio:.4f}",
                         "NaN" if math.isnan(r.mssd) else f"{r.mssd:.4f}", r.note])
    return buf.getvalue()


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100.0 * x:.2f}"


def _mm(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def prompt_text(summary: dict) -> str:
    """The Prompt column: the prompt mode, and the --keep rule unless it is ``all`` (or unrecorded)."""
    keep = summary.get("keep")
    return str(summary.get("prompt") or "–") + (f", keep {keep}" if keep not in (None, "all") else "")


def markdown_table(entries: Sequence[tuple[str, dict]], *, prompt_column: bool = False) -> str:
    """A paper-style Markdown table from (method name, summary.json dict) pairs.

    Columns: Method, DSC (%), HD95 (its unit), then per-class DSC (%) when any entry is multi-class
    (classes in order of first appearance, underscores shown as spaces; "–" where an entry lacks a
    class or it was not scored). A line under the table states the HD95 unit and the empty-case
    convention; entries of different units or conventions are marked per row.
    """
    classes: list[str] = []
    multi = any(len(s.get("per_class", {})) > 1 for _, s in entries)
    if multi:
        for _, s in entries:
            for name in s.get("per_class", {}):
                if name not in classes:
                    classes.append(name)
    units = {hd95_unit(s) for _, s in entries}
    conventions = {empty_case(s) for _, s in entries}
    one_unit = len(units) == 1
    hd_head = f"HD95 ({_UNIT_WORD[next(iter(units))]})" if one_unit else "HD95"
    lead = ["Method", "Prompt"] if prompt_column else ["Method"]
    header = lead + ["DSC (%)", hd_head] + [c.replace("_", " ") for c in classes]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] * len(lead) + ["---:"] * (len(header) - len(lead))) + "|"]
    for name, s in entries:
        per = s.get("per_class", {})
        hd = _mm(s.get("mean_hd95"))
        if not one_unit and hd != "–":
            hd += f" {_UNIT_WORD[hd95_unit(s)]}"
        if len(conventions) > 1:
            name = f"{name} ({empty_case(s)})"
        cells = [name] + ([prompt_text(s)] if prompt_column else [])
        cells += [_pct(s.get("mean_dsc")), hd]
        cells += [_pct(per[c]["dsc"]) if c in per else "–" for c in classes]
        lines.append("| " + " | ".join(cells) + " |")
    unit_text = ", ".join(_UNIT_WORD[u] for u in sorted(units))
    lines += ["", f"HD95 in {unit_text}; empty cases: "
              + "; ".join(f"{c} ({_EMPTY_SHORT[c]})" for c in sorted(conventions)) + "."]
    return "\n".join(lines) + "\n"


_UNIT_WORD = {"mm": "mm", "voxel": "voxels"}
_EMPTY_SHORT = {"strict": "both empty not scored, one empty = DSC 0 and HD95 the volume diagonal",
                "samed": "SAMed's calculate_metric_percase: missed = DSC 0 / HD95 0, false positive = "
                         "DSC 1 / HD95 0, all cases averaged"}


def hd95_unit(summary: dict) -> str:
    """The HD95 unit of a summary.json ("mm" for evaluations written before the unit was recorded)."""
    return summary.get("hd95_unit") or "mm"


def empty_case(summary: dict) -> str:
    """The empty-case convention of a summary.json ("strict" before it was recorded)."""
    return summary.get("empty_case") or "strict"


def read_summary(evaldir: str | Path) -> dict:
    """summary.json of an evaluation directory, or a one-line DataError."""
    path = Path(evaldir) / "summary.json"
    if not path.is_file():
        raise DataError(f"{evaldir}: not an evaluation directory (no summary.json; run `train eval --out {evaldir}`)")
    data = read_json(path, what="summary")
    if not isinstance(data, dict) or "mean_dsc" not in data or "per_class" not in data:
        raise DataError(f"{path}: not a `train eval` summary (mean_dsc / per_class missing)")
    return data


def compare(evaldirs: Sequence[str | Path], names: Sequence[str] | None = None) -> str:
    """Markdown table putting several evaluations side by side (`train report`)."""
    if not evaldirs:
        raise DataError("give at least one evaluation directory")
    if names and len(names) != len(evaldirs):
        raise DataError(f"--names gives {len(names)} names for {len(evaldirs)} evaluation directories")
    names = list(names) if names else [Path(d).resolve().name for d in evaldirs]
    return markdown_table([(n, read_summary(d)) for n, d in zip(names, evaldirs)], prompt_column=True)


def test_data_identity(evaldir: str | Path) -> tuple:
    """What an evaluation was scored on: (source name, class names, volume ids from cases.csv)."""
    s = read_summary(evaldir)
    desc = s.get("dataset") or {}
    source = desc.get("source") or {}
    volumes: tuple[str, ...] = ()
    cases = Path(evaldir) / "cases.csv"
    if cases.is_file():
        with cases.open(newline="") as f:
            volumes = tuple(sorted({row["volume"] for row in csv.DictReader(f) if row.get("volume")}))
    return (source.get("name"), tuple(s.get("class_names") or ()), volumes)


def comparability_warnings(evaldirs: Sequence[str | Path], names: Sequence[str] | None = None) -> list[str]:
    """Warnings when evaluations put side by side were scored on different test data."""
    names = list(names) if names else [Path(d).resolve().name for d in evaldirs]
    ids = [test_data_identity(d) for d in evaldirs]
    if len(set(ids)) <= 1:
        return []
    groups: dict[tuple, list[str]] = {}
    for n, i in zip(names, ids):
        groups.setdefault(i, []).append(n)
    parts = []
    for (source, classes, volumes), members in groups.items():
        vols = f"{len(volumes)} volume{'s' if len(volumes) != 1 else ''}"
        n_cls = len(classes) - 1 if classes else 0
        parts.append(f"{', '.join(members)}: {source or '?'} ({n_cls} class{'es' if n_cls != 1 else ''}, {vols})")
    return ["the evaluations were scored on different test data, so their rows do not compare: "
            + "; ".join(parts)]
