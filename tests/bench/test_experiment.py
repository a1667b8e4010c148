"""bench/experiment.py drives the two CLIs by subprocess: every option it passes must exist there."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests.conftest import PROJECT_ROOT


def _commands() -> dict[str, click.Group]:
    from synth.cli import cli as synth_cli
    from train.cli import cli as train_cli

    return {"synth": synth_cli, "train": train_cli}


@pytest.mark.parametrize("config", ["brats_sample.json", "synapse_sample.json", "brats_cohort.json"])
def test_dry_run_commands_use_existing_options(config, tmp_path):
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "experiment.py"),
                             str(PROJECT_ROOT / "bench" / "experiments" / config), "--dry-run", "--jobs", "2",
                             "--data-root", str(tmp_path), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    lines = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("[run ]")]
    groups = _commands()
    seen = set()
    for line in lines:
        argv = shlex.split(line)
        tool, sub = Path(argv[0]).name, argv[1]
        group = groups[tool]
        command = group.get_command(click.Context(group), sub)
        assert command is not None, f"{tool} has no command {sub}"
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        unknown = [a for a in argv[2:] if a.startswith("--") and a not in known]
        assert not unknown, f"{tool} {sub} does not take {unknown}"
        seen.add((tool, sub))
    assert {("synth", "pack"), ("synth", "select"), ("synth", "build"), ("train", "fit"), ("train", "eval")} <= seen
    if config == "brats_cohort.json":     # pretrained arms: `train pretrain` then fit/eval from its model.pt
        assert ("train", "pretrain") in seen


def _fake_eval(folder: Path, dsc: float, hd95: float, cases: list[tuple[str, float]]) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "mean_dsc": dsc, "mean_hd95": hd95, "hd95_unit": "mm",
        "per_class": {"tumour": {"dsc": dsc, "hd95": hd95, "n_volumes": len(cases)}}}))
    rows = "".join(f"{vol},tumour,{d:.6f},3.0,100,110,\n" for vol, d in cases)
    (folder / "cases.csv").write_text("volume,class,dsc,hd95,gt_voxels,pred_voxels,note\n" + rows)


def test_multi_seed_tables_cells_and_plot(tmp_path):
    """--table-only aggregates finished evaluations: mean ± sd over seeds, paired differences,
    per-patient CSVs with a seed column, results.json, and the DSC plot."""
    config = {"name": "toy", "dataset": "demo-brain", "root": "", "exemplar_counts": ["4", "8"],
              "arms": ["synthesized", "exemplars"], "prompts": ["center"], "seeds": [0, 1],
              "fit": {"model": "tiny", "steps": 10}}
    cfg_path = tmp_path / "toy.json"
    cfg_path.write_text(json.dumps(config))
    out = tmp_path / "out"
    dsc = {("synth", "4"): (0.60, 0.70), ("synth", "8"): (0.80, 0.90),
           ("exemplars", "4"): (0.50, 0.50), ("exemplars", "8"): (0.55, 0.75)}
    for (arm, count), values in dsc.items():
        for seed, value in enumerate(values):
            _fake_eval(out / f"seed-{seed}" / "evals" / f"{arm}_{count}_center", value, 10.0 * (seed + 1),
                       [("case_a", value - 0.1), ("case_b", value + 0.1)])
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "experiment.py"), str(cfg_path),
                             "--table-only", "--out", str(out), "--data-root", str(tmp_path)],
                            capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    table = (out / "table.md").read_text()
    # synthesized at 8: mean 85.00, sd of (80, 90) = 7.07; HD95 mean 15.00 sd 7.07
    assert "| ours (synthesized) | 8 | – | 85.00 ± 7.07 | 15.00 ± 7.07 | – |" in table
    assert "| exemplars only | 4 | – | 50.00 ± 0.00 |" in table
    # paired differences at 4: (60-50, 70-50) -> 15.00 ± 7.07; at 8: (80-55, 90-75) -> 20.00 ± 7.07
    assert "| 4 | 65.00 ± 7.07 | 50.00 ± 0.00 | 15.00 ± 7.07 |" in table
    assert "| 8 | 85.00 ± 7.07 | 65.00 ± 14.14 | 20.00 ± 7.07 |" in table
    cells = (out / "cells" / "synthesized_8_center.csv").read_text().splitlines()
    assert cells[0] == "seed,volume,class,dsc,hd95,gt_voxels,pred_voxels,note"
    assert len(cells) == 5 and cells[1].startswith("0,case_a,tumour,0.700000") and cells[3].startswith("1,case_a")
    results = json.loads((out / "results.json").read_text())
    row = next(r for r in results["rows"] if r["arm"] == "exemplars" and r["count"] == "8")
    assert row["prompts"]["center"]["dsc"]["min"] == 0.55 and row["prompts"]["center"]["dsc"]["max"] == 0.75
    pytest.importorskip("matplotlib")
    png = (out / "dsc_vs_exemplars.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_missing_seed_is_marked(tmp_path):
    """A cell with fewer finished seeds than configured says so instead of passing for a full mean."""
    config = {"name": "toy", "dataset": "demo-brain", "root": "", "exemplar_counts": ["4"],
              "arms": ["synthesized"], "prompts": ["center"], "seeds": [0, 1, 2], "fit": {"model": "tiny"}}
    cfg_path = tmp_path / "toy.json"
    cfg_path.write_text(json.dumps(config))
    out = tmp_path / "out"
    _fake_eval(out / "seed-0" / "evals" / "synth_4_center", 0.5, 4.0, [("case_a", 0.5)])
    _fake_eval(out / "seed-2" / "evals" / "synth_4_center", 0.7, 6.0, [("case_a", 0.7)])
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "experiment.py"), str(cfg_path),
                             "--table-only", "--out", str(out)], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    assert "| ours (synthesized) | 4 | – | 60.00 ± 14.14 (n=2) | 5.00 ± 1.41 (n=2) | – |" in (out / "table.md").read_text()
