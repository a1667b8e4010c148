"""Paired comparison of two cross-validation outputs: is a candidate default better on held-out sites?

    python bench/cv_compare.py runs/cv-sites runs/cand-p995 --arm synthesized --count 150 [--prompt center]
    python bench/cv_compare.py runs/cv-sites,runs/cand-base runs/cand-mrmedsam   # seeds from two outputs
    python bench/cv_compare.py runs/cv-sites-lm runs/cv-sites-lm --arm exemplars --candidate-arm synthesized --count 8

Both folders are outputs of ``bench/experiment.py --folds`` (``OUT/fold-<name>/cells/<arm>_<count>_<prompt>.csv``,
one row per held-out case and seed). Rows are paired by (fold, seed, case), so the comparison is on the
same patients, folds and seeds; a (fold, seed) that only one side has is left out and named. Prints
one markdown table: per fold the two DSC means, their difference and the median predicted / true
volume ratio of each side; then across folds (each fold weighs the same: mean ± sd of the fold
differences) and per case (each patient weighs the same: mean difference, how many cases improve, and
the exact two-sided sign-test p-value). The sign test is there because one seed on 24 cases is a small
sample: a mean gain driven by two patients is not a better default.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `bench` is a folder of the project root
    sys.path.insert(0, str(ROOT))

from bench.experiment_tables import median_or_nan, read_case_csv  # noqa: E402


@dataclass(frozen=True)
class CaseRow:
    fold: str
    seed: int
    case: str
    dsc: float
    volume_ratio: float


def read_rows(out: Path, arm: str, count: str, prompt: str) -> dict[tuple[str, int, str], CaseRow]:
    """(fold, seed, case) -> row, over every fold folder of ``out`` that has the cell."""
    rows: dict[tuple[str, int, str], CaseRow] = {}
    for path in sorted(out.glob(f"fold-*/cells/{arm}_{count}_{prompt}.csv")):
        fold = path.parent.parent.name.removeprefix("fold-")
        for rec in read_case_csv(path):
            row = CaseRow(fold, rec["seed"], rec["volume"], rec["dsc"], rec["volume_ratio"])
            rows[(row.fold, row.seed, row.case)] = row
    return rows


def read_all(folders: str, arm: str, count: str, prompt: str) -> dict[tuple[str, int, str], CaseRow]:
    """:func:`read_rows` over comma-separated folders (e.g. seed 0 in one output, seed 1 in another);
    a later folder's row replaces an earlier one's for the same (fold, seed, case)."""
    rows: dict[tuple[str, int, str], CaseRow] = {}
    for folder in folders.split(","):
        rows.update(read_rows(Path(folder), arm, count, prompt))
    return rows


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided binomial sign-test p-value (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass
class Comparison:
    per_fold: list[tuple[str, int, float, float, float, float]]  # fold, cases, base, cand, base ratio, cand ratio
    diffs: list[float]                                            # per paired case (cand - base), DSC points
    missing: list[str]
    per_seed: dict[int, float]                                    # seed -> mean over folds of the fold differences

    @property
    def fold_diffs(self) -> list[float]:
        return [cand - base for _, _, base, cand, _, _ in self.per_fold]


def compare(base: dict, cand: dict) -> Comparison:
    keys = sorted(set(base) & set(cand))
    missing = sorted({f"{k[0]} seed {k[1]}" for k in set(base) ^ set(cand)})
    per_fold = []
    for fold in sorted({k[0] for k in keys}):
        fk = [k for k in keys if k[0] == fold]
        per_fold.append((fold, len(fk), 100 * statistics.fmean(base[k].dsc for k in fk),
                         100 * statistics.fmean(cand[k].dsc for k in fk),
                         median_or_nan([base[k].volume_ratio for k in fk]),
                         median_or_nan([cand[k].volume_ratio for k in fk])))
    per_seed = {}
    for seed in sorted({k[1] for k in keys}):
        folds = sorted({k[0] for k in keys if k[1] == seed})
        per_seed[seed] = statistics.fmean(
            100 * statistics.fmean(cand[k].dsc - base[k].dsc for k in keys if k[:2] == (fold, seed)) for fold in folds)
    return Comparison(per_fold, [100 * (cand[k].dsc - base[k].dsc) for k in keys], missing, per_seed)


def render(c: Comparison, base_name: str, cand_name: str, cell: str) -> str:
    lines = [f"{cell}: {cand_name} against {base_name} (DSC %, paired by fold, seed and case)", "",
             "| Fold | Rows (case x seed) | Base DSC | Candidate DSC | Difference | Base median vol. ratio | Candidate median vol. ratio |",
             "|:---|---:|---:|---:|---:|---:|---:|"]
    for fold, n, b, k, rb, rk in c.per_fold:
        lines.append(f"| {fold} | {n} | {b:.2f} | {k:.2f} | {k - b:+.2f} | {rb:.3f} | {rk:.3f} |")
    fd = c.fold_diffs
    if fd:
        sd = statistics.stdev(fd) if len(fd) > 1 else 0.0
        wins, losses = sum(d > 0 for d in c.diffs), sum(d < 0 for d in c.diffs)
        lines += ["", f"Across folds: {statistics.fmean(fd):+.2f} ± {sd:.2f} points (mean ± sd of {len(fd)} fold "
                      f"differences). Per case: {statistics.fmean(c.diffs):+.2f} points over {len(c.diffs)} paired "
                      f"cases, {wins} better / {losses} worse, sign test p {_p_text(sign_test_p(wins, losses))}."]
        if len(c.per_seed) > 1:
            lines += ["Per seed (mean over folds of the fold differences): "
                      + ", ".join(f"seed {seed} {d:+.2f}" for seed, d in c.per_seed.items()) + "."]
    if c.missing:
        lines += ["", "Only on one side (left out): " + ", ".join(c.missing) + "."]
    return "\n".join(lines)


def _p_text(p: float) -> str:
    """'= 0.013', or '< 0.001' where three decimals would print 0.000."""
    return f"= {p:.3f}" if p >= 0.001 else "< 0.001"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="the current default's CV output folder(s), comma-separated")
    ap.add_argument("candidate", help="the candidate's CV output folder(s), comma-separated (same folds)")
    ap.add_argument("--arm", default="synthesized", help="the grid arm compared (default synthesized)")
    ap.add_argument("--candidate-arm", default=None,
                    help="the candidate's arm when it differs, e.g. synthesized against --arm exemplars: what "
                         "synthesis adds on the same cases (base and candidate may then be one folder)")
    ap.add_argument("--count", default="150")
    ap.add_argument("--prompt", default="center", help="the grid evaluation compared (default center)")
    ap.add_argument("--candidate-prompt", default=None,
                    help="the candidate's evaluation when it differs, e.g. center+clicked-volume: the same "
                         "fits scored two ways (base and candidate may then be one folder)")
    args = ap.parse_args(argv)
    cand_prompt = args.candidate_prompt or args.prompt
    cand_arm = args.candidate_arm or args.arm
    base = read_all(args.base, args.arm, args.count, args.prompt)
    cand = read_all(args.candidate, cand_arm, args.count, cand_prompt)
    cell = f"{args.arm}_{args.count}_{args.prompt}"
    if (cand_arm, cand_prompt) != (args.arm, args.prompt):
        cell += f" vs {cand_arm}_{args.count}_{cand_prompt}" if cand_arm != args.arm else f" vs {cand_prompt}"
    for name, rows, folder, arm, prompt in (("base", base, args.base, args.arm, args.prompt),
                                            ("candidate", cand, args.candidate, cand_arm, cand_prompt)):
        if not rows:
            print(f"cv_compare: {folder}: no fold-*/cells/{arm}_{args.count}_{prompt}.csv ({name})",
                  file=sys.stderr)
            return 2
    c = compare(base, cand)
    if not c.diffs:
        print(f"cv_compare: {args.base} and {args.candidate} share no (fold, seed, case) of {cell}", file=sys.stderr)
        return 2
    print(render(c, str(args.base), str(args.candidate), cell))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
