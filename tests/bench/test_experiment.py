"""bench/experiment.py drives the two CLIs by subprocess: every option it passes must exist there."""
from __future__ import annotations

import json
import os
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


@pytest.mark.parametrize("config", ["brats_sample.json", "synapse_sample.json", "brats_cohort.json",
                                    "brats_cohort_sites.json", "cv_sites_150_p995.json", "cv_sites_150_intaug.json",
                                    "brats_cohort_sites_mrmedsam.json", "brats_cohort_test_mrmedsam.json",
                                    "brats_cohort_sites_mrmedsam_full.json", "brats_cohort_sites_litemedsam.json"])
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
    needed = {("synth", "pack"), ("synth", "build"), ("train", "fit"), ("train", "eval")}
    if not config.endswith("_full.json"):  # the full arm builds every slice: no exemplar selection
        needed.add(("synth", "select"))
    assert needed <= seen
    if config == "brats_cohort.json":     # pretrained arms: `train pretrain` then fit/eval from its model.pt
        assert ("train", "pretrain") in seen
    if config == "brats_cohort_sites_mrmedsam.json":  # "center+clicked-volume": the same fits, --keep
        evals = [shlex.split(line) for line in lines if shlex.split(line)[1] == "eval"]
        kept = [a for a in evals if "--keep" in a]
        assert kept and all(a[a.index("--keep") + 1] == "clicked-volume" and a[a.index("--prompt") + 1] == "center"
                            and a[a.index("--out") + 1].endswith("_center+clicked-volume") for a in kept)
        assert len(kept) == len(evals) // 3  # one of the three evaluations of every fit
    if config == "brats_cohort_sites_litemedsam.json":  # "{out}" -> the fold's folder, in fit and eval flags
        for line in lines:
            argv = shlex.split(line)
            if argv[1] in ("fit", "eval"):
                fold = argv[argv.index("--out") + 1].split("/seed-")[0]
                assert argv[argv.index("--embedding-cache") + 1] == fold + "/embeddings", line
    if config == "cv_sites_150_p995.json":  # the list must be made with the preset the build reads
        for line in lines:
            argv = shlex.split(line)
            if argv[1] in ("select", "build", "pack"):
                assert argv[argv.index("--intensity") + 1] == "mri-slice-p99.5", line


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
    # ... then the median volume ratio (pred 110 / true 100 voxels) and the fit time (no run folders here)
    assert "| ours (synthesized) | 8 | – | 85.00 ± 7.07 | 15.00 ± 7.07 | 1.100 | – |" in table
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
    assert "| ours (synthesized) | 4 | – | 60.00 ± 14.14 (n=2) | 5.00 ± 1.41 (n=2) | 1.100 | – |" in (out / "table.md").read_text()


# --------------------------------------------------------------------------- fit times per device (issue 32)

def _fake_run(folder: Path, seconds: float, device: str | None = None, name: str = "", threads: int = 1) -> None:
    folder.mkdir(parents=True)
    summary = {"steps": 10, "seconds": seconds}
    if device is not None:   # runs from before `train fit` recorded its device have none
        summary.update(device=device, device_name=name, threads=threads)
    (folder / "summary.json").write_text(json.dumps(summary))


def _fit_columns(table: str) -> tuple[list[str], list[list[str]]]:
    """The table's first header line split into cells, and its body rows."""
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    return head, body


def test_fit_time_columns_never_mix_devices(tmp_path):
    """One "Fit (s)" column per device (CPU, GPU, unrecorded), each cell the mean of that device's
    fits only, the full device names under the table (issue 32's leftover)."""
    config = {"name": "toy", "dataset": "demo-brain", "root": "", "exemplar_counts": ["4"],
              "arms": ["synthesized", "exemplars"], "prompts": ["center"], "seeds": [0, 1, 2],
              "fit": {"model": "tiny"}}
    cfg_path = tmp_path / "toy.json"
    cfg_path.write_text(json.dumps(config))
    out = tmp_path / "out"
    for seed in range(3):
        for arm in ("synth", "exemplars"):
            _fake_eval(out / f"seed-{seed}" / "evals" / f"{arm}_4_center", 0.5, 4.0, [("case_a", 0.5)])
    _fake_run(out / "seed-0" / "runs" / "synth_4", 600.0, "cpu", "Test Xeon")
    _fake_run(out / "seed-1" / "runs" / "synth_4", 700.0, "cpu", "Test Xeon")
    _fake_run(out / "seed-2" / "runs" / "synth_4", 90.0, "cuda:0", "Test H100")
    _fake_run(out / "seed-0" / "runs" / "exemplars_4", 250.0)                  # device not recorded
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "experiment.py"), str(cfg_path),
                             "--table-only", "--out", str(out)], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    table = (out / "table.md").read_text()
    head, body = _fit_columns(table)
    assert head[-3:] == ["Fit (s), CPU", "Fit (s), GPU", "Fit (s), unrecorded"]
    assert "Fit (s)" not in head
    rows = {r[0]: r for r in body}
    assert rows["ours (synthesized)"][-3:] == ["650 (n=2)", "90 (n=1)", "–"]
    assert rows["exemplars only"][-3:] == ["–", "–", "250 (n=1)"]
    assert "CPU = Test Xeon, 1 thread; GPU = Test H100; unrecorded = not recorded" in table
    saved = json.loads((out / "results.json").read_text())
    synth = next(r for r in saved["rows"] if r["arm"] == "synthesized")
    assert synth["fit_seconds_by_device"] == {"CPU: Test Xeon, 1 thread": [600.0, 700.0], "GPU: Test H100": [90.0]}


def test_fit_time_includes_the_frozen_encoders_embedding_pass(tmp_path):
    """A frozen-encoder fit's time is its steps plus the embedding pass its config.json records
    (on CPU the pass is about half of the fit); a fit without one is its steps alone."""
    from bench import experiment_tables

    frozen, plain = tmp_path / "frozen", tmp_path / "plain"
    _fake_run(frozen, 495.4, "cpu", "Test Xeon")
    (frozen / "config.json").write_text(json.dumps({"embeddings": {"seconds": 236.1, "samples": 480}}))
    _fake_run(plain, 300.0, "cpu", "Test Xeon")
    (plain / "config.json").write_text(json.dumps({"embeddings": None}))
    summary = lambda d: json.loads((d / "summary.json").read_text())  # noqa: E731
    assert experiment_tables.fit_seconds(frozen, summary(frozen)) == 731.5
    assert experiment_tables.fit_seconds(plain, summary(plain)) == 300.0
    assert experiment_tables.fit_seconds(plain, {"steps": 3}) is None


def test_train_fit_records_the_device_the_table_splits_by(tmp_path):
    """A real (1-step, 32 px) `train fit` writes device, device_name and threads to summary.json,
    and the runner's label for that fit names the device kind and the thread count."""
    from bench import experiment_tables

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "synth"), "build", "--dataset", "demo-brain", "--exemplars", "2", "--num-samples",
                    "8", "--workers", "1", "--no-progress", "--out", str(tmp_path / "ds")],
                   check=True, capture_output=True, env=env)
    subprocess.run([str(bin_dir / "train"), "fit", "--shards", str(tmp_path / "ds"), "--model", "tiny", "--img-size",
                    "32", "--steps", "1", "--batch-size", "2", "--num-threads", "1", "--device", "cpu",
                    "--no-progress", "--out", str(tmp_path / "run")], check=True, capture_output=True, env=env)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["threads"] == 1 and summary["device_name"]
    assert experiment_tables.fit_device(summary) == f"CPU: {summary['device_name']}, 1 thread"
    assert experiment_tables.fit_device({"seconds": 3.0}) == "unrecorded"
    assert experiment_tables.fit_device({"device": "cuda:0", "device_name": "H100"}) == "GPU: H100"


# --------------------------------------------------------------------------- leave-site-out folds (issue 30)

FOLDS = PROJECT_ROOT / "data_manifests" / "splits" / "brats2018_cohort_sites.json"


def _bench():
    from bench import cross_site, experiment

    return experiment, cross_site


def test_cohort_fold_file_loads_and_partitions_the_cv_cases(tmp_path):
    from shared.splits import read_split_file, seeded_rule, seeded_split

    _, cv = _bench()
    folds = cv.load_folds(FOLDS)
    assert folds.dataset == "brats"
    assert {site: len(cases) for site, cases in folds.sites.items()} == {"2013": 3, "CBICA": 16, "TCIA-HGG": 2,
                                                                          "TCIA-LGG": 3}
    assert [(f.name, len(f.train), len(f.test)) for f in folds.folds] == [("2013", 21, 3), ("CBICA", 8, 16),
                                                                         ("TCIA", 19, 5)]
    cases = folds.cases
    assert len(cases) == 24 and len(folds.excluded) == 6
    tested = []
    for fold in folds.folds:
        assert not set(fold.train) & set(fold.test)                        # disjoint
        assert sorted(fold.train + fold.test) == cases                     # together: every CV case
        assert not set(fold.train + fold.test) & set(folds.excluded)        # the test split in no fold
        assert {folds.site_of(c) for c in fold.test} == set(fold.held_out_sites)
        assert not {folds.site_of(c) for c in fold.train} & set(fold.held_out_sites)
        tested += fold.test
        # its split file is one that synth's --split-file accepts, with the same cases
        path = tmp_path / f"{fold.name}.json"
        path.write_text(json.dumps(cv.fold_split(folds, fold)))
        assert read_split_file(path, cases + folds.excluded) == {"train": fold.train, "test": fold.test}
    assert sorted(tested) == cases                                         # each case tested exactly once
    # the excluded cases are the cohort's test split: the seeded 80/20 rule on the 30 case ids
    rule = seeded_rule()
    assert seeded_split(cases + folds.excluded, rule["seed"], rule["test_fraction"])["test"] == folds.excluded
    cv.check_folds_cover(folds, cases + folds.excluded, folds.excluded)
    with pytest.raises(cv.FoldFileError, match="does not cover"):
        cv.check_folds_cover(folds, cases + folds.excluded + ["Brats18_CBICA_NEW_1"])
    with pytest.raises(cv.FoldFileError, match="not the source's test split"):
        cv.check_folds_cover(folds, cases + folds.excluded, folds.excluded[1:] + [cases[0]])


def test_cohort_fold_file_matches_the_cohort_on_disk(shared_data):
    """The sites against the real folders: every case of the cohort named once, the LGG site's cases
    under LGG/ and the others under HGG/, the excluded cases the source's own test split."""
    from shared.sources import open_source
    from shared.splits import split_parts

    root = shared_data / "brats2018_cohort"
    if not root.is_dir():
        pytest.skip(f"brats2018_cohort not found at {root}")
    _, cv = _bench()
    folds = cv.load_folds(FOLDS)
    source = open_source("brats", root)
    cv.check_folds_cover(folds, source.case_ids(), split_parts(source)[0]["test"])
    for site, cases in folds.sites.items():
        grade = "LGG" if site == "TCIA-LGG" else "HGG"
        assert all((root / grade / case).is_dir() for case in cases), site


def _toy_folds(tmp_path: Path, edit=None) -> Path:
    """A fold file on the demo-brain source (brain_02 and brain_06 are its test split); edit(doc) changes it."""
    doc = {"dataset": "demo-brain", "kind": "leave-site-out", "min_test_cases": 1,
           "excluded": {"cases": ["brain_02", "brain_06"]},
           "sites": {"A": {"pattern": "^brain_0[013]$", "cases": ["brain_00", "brain_01", "brain_03"]},
                     "B": {"cases": ["brain_04"]}, "C": {"cases": ["brain_05", "brain_07"]}},
           "folds": [{"name": "A", "held_out_sites": ["A"], "test": ["brain_00", "brain_01", "brain_03"],
                      "train": ["brain_04", "brain_05", "brain_07"]},
                     {"name": "B", "held_out_sites": ["B"], "test": ["brain_04"],
                      "train": ["brain_00", "brain_01", "brain_03", "brain_05", "brain_07"]},
                     {"name": "C", "held_out_sites": ["C"], "test": ["brain_05", "brain_07"],
                      "train": ["brain_00", "brain_01", "brain_03", "brain_04"]}]}
    if edit is not None:
        edit(doc)
    path = tmp_path / "folds.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("folds"), "does not match cv_folds.schema.json"),
    (lambda d: d.update(kind="random"), "does not match cv_folds.schema.json"),
    (lambda d: d["sites"]["B"]["cases"].append("brain_00"), "is in sites 'A' and 'B'"),
    (lambda d: d["sites"]["A"]["cases"].append("brain_04"), "does not match its pattern"),
    (lambda d: d["excluded"]["cases"].append("brain_04"), "is excluded and in site 'B'"),
    (lambda d: d["folds"].pop(), "never: \\['C'\\]"),
    (lambda d: d["folds"][0]["test"].pop(), "fold 'A': test must be the cases of"),
    (lambda d: d["folds"][1]["train"].append("brain_02"), "fold 'B': train must be every other"),
    (lambda d: d["folds"][2]["held_out_sites"].append("Z"), "unknown site"),
    (lambda d: d.update(min_test_cases=2), "fold 'B' tests on 1 case\\(s\\), fewer than min_test_cases 2: merge"),
])
def test_fold_file_errors(tmp_path, edit, message):
    _, cv = _bench()
    assert len(cv.load_folds(_toy_folds(tmp_path)).folds) == 3
    with pytest.raises(cv.FoldFileError, match=message):
        cv.load_folds(_toy_folds(tmp_path, edit))


def _run_lines(stdout: str) -> list[list[str]]:
    return [shlex.split(line.split(": ", 1)[1]) for line in stdout.splitlines() if line.startswith("[run ]")]


def test_cv_plan_runs_every_arm_per_fold_on_that_folds_split(tmp_path):
    """--dry-run of the cohort CV config: per fold, pack the held-out site and select/build/fit on
    the rest through that fold's split file; 3 seeds x (synthesized 8/17/150 + exemplars-only 8)."""
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "experiment.py"),
                             str(PROJECT_ROOT / "bench" / "experiments" / "brats_cohort_sites.json"), "--dry-run",
                             "--num-threads", "1", "--data-root", str(tmp_path), "--out", str(out)],
                            capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    argvs = _run_lines(result.stdout)
    for name in ("2013", "CBICA", "TCIA"):
        fold_out = out / f"fold-{name}"
        mine = [a for a in argvs if str(fold_out) + "/" in a[a.index("--out") + 1]]
        split = str(fold_out / "split.json")
        subs = [(Path(a[0]).name, a[1]) for a in mine]
        assert subs.count(("synth", "pack")) == 1 and subs.count(("synth", "select")) == 9
        for a in mine:
            if a[0].endswith("synth"):
                assert a[a.index("--split-file") + 1] == split and a[a.index("--workers") + 1] == "1"
                assert a[a.index("--split") + 1] == ("test" if a[1] == "pack" else "train")
            else:
                assert a[a.index("--num-threads") + 1] == "1"
        builds = sorted(Path(a[a.index("--out") + 1]).name for a in mine if a[1] == "build")
        assert builds == sorted([f"synth_{n}" for n in ("8", "17", "150")] * 3 + ["exemplars_8"] * 3)
        fits = [a for a in mine if a[1] == "fit"]
        assert sorted(Path(a[a.index("--out") + 1]).name for a in fits) == sorted(
            ["synth_8", "synth_17", "synth_150", "exemplars_8"] * 3)
        assert all(a[a.index("--steps") + 1] == "2000" for a in fits)
        evals = [a for a in mine if a[1] == "eval"]
        assert len(evals) == 24 and all(a[a.index("--shards") + 1] == str(fold_out / "data" / "test") for a in evals)
    assert len(argvs) == 3 * (1 + 9 + 12 + 12 + 24)
    def dry_run(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "experiment.py"),
                               str(PROJECT_ROOT / "bench" / "experiments" / "brats_cohort_sites.json"), "--dry-run",
                               *flags, "--data-root", str(tmp_path), "--out", str(out)],
                              capture_output=True, text=True, cwd=PROJECT_ROOT)

    # --only-folds / --only-seeds: one fold, one seed
    result = dry_run("--only-folds", "TCIA", "--only-seeds", "1")
    assert result.returncode == 0, result.stderr
    argvs = _run_lines(result.stdout)
    assert {a[a.index("--out") + 1].split("/fold-")[1].split("/")[0] for a in argvs} == {"TCIA"}
    assert {a[a.index("--seed") + 1] for a in argvs if "--seed" in a} == {"1"}
    # --only-counts: one exemplar count now (e.g. the largest first)
    result = dry_run("--only-folds", "TCIA", "--only-seeds", "1", "--only-counts", "150")
    assert result.returncode == 0, result.stderr
    argvs = _run_lines(result.stdout)
    assert sorted(Path(a[a.index("--out") + 1]).name for a in argvs if a[1] == "fit") == ["synth_150"]
    result = dry_run("--only-counts", "151")
    assert result.returncode != 0 and "--only-counts ['151']" in result.stderr
    # --only-arms: an arm added to a finished grid runs alone (exemplars only runs at 8)
    result = dry_run("--only-folds", "TCIA", "--only-seeds", "1", "--only-arms", "exemplars")
    assert result.returncode == 0, result.stderr
    argvs = _run_lines(result.stdout)
    assert sorted(Path(a[a.index("--out") + 1]).name for a in argvs if a[1] in ("build", "fit")) == [
        "exemplars_8", "exemplars_8"]
    assert sorted(Path(a[a.index("--out") + 1]).name for a in argvs if a[1] == "select") == ["exemplars_8.json"]
    result = dry_run("--only-arms", "full")
    assert result.returncode != 0 and "--only-arms ['full']" in result.stderr


def test_cv_tables_across_folds_sites_and_seeds(tmp_path):
    """--table-only over finished (fake) evaluations of 3 folds x 2 seeds: mean and sd across folds,
    sd across seeds, the per-case mean, per-fold and per-site rows, the median volume ratio, the
    paired synthesis difference per fold, fit times per device."""
    folds_path = _toy_folds(tmp_path)
    config = {"name": "toy", "dataset": "demo-brain", "root": "", "exemplar_counts": ["8"],
              "arms": ["synthesized", "exemplars"], "prompts": ["center"], "seeds": [0, 1],
              "fit": {"model": "tiny"}, "folds": str(folds_path)}
    cfg_path = tmp_path / "toy.json"
    cfg_path.write_text(json.dumps(config))
    out = tmp_path / "out"
    synth = {"A": [(0.6, 0.7, 0.8), (0.8, 0.9, 1.0)], "B": [(0.5,), (0.7,)], "C": [(0.4, 0.4), (0.6, 0.6)]}
    exemplars = {"A": [0.5, 0.7], "B": [0.4, 0.6], "C": [0.3, 0.5]}
    volumes = {"A": ["brain_00", "brain_01", "brain_03"], "B": ["brain_04"], "C": ["brain_05", "brain_07"]}
    pred = {"A": 110, "B": 90, "C": 200}                       # true volume 100 voxels in every case
    for i, fold in enumerate("ABC"):
        for seed in (0, 1):
            base = out / f"fold-{fold}" / f"seed-{seed}" / "evals"
            cases = list(zip(volumes[fold], synth[fold][seed]))
            _fake_cv_eval(base / "synth_8_center", cases, 10.0 * (i + 1) + seed, pred[fold])
            _fake_cv_eval(base / "exemplars_8_center", [(v, exemplars[fold][seed]) for v in volumes[fold]],
                          5.0, 100)
    _fake_run(out / "fold-A" / "seed-0" / "runs" / "synth_8", 100.0, "cpu", "Test Xeon")
    _fake_run(out / "fold-B" / "seed-0" / "runs" / "synth_8", 300.0, "cpu", "Test Xeon")
    _fake_run(out / "fold-A" / "seed-1" / "runs" / "synth_8", 20.0, "cuda:0", "Test H100")
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "experiment.py"), str(cfg_path),
                             "--table-only", "--out", str(out)], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    table = (out / "cv_table.md").read_text()
    head, body = _fit_columns(table)
    assert head == ["Method", "Exemplars", "Folds", "DSC (%) center, across folds", "seed sd center",
                    "per case center", "HD95 center, across folds", "Vol. ratio (center)", "Fit (s), CPU",
                    "Fit (s), GPU"]
    # fold means 0.8 / 0.6 / 0.5 -> 63.33 ± 15.28; seed means over folds 0.533 / 0.733 -> sd 14.14;
    # per case: 8.0 over 12 case scores = 66.67; HD95 fold means 10.5 / 20.5 / 30.5 -> 20.50 ± 10.00;
    # ratios 6 x 1.1, 2 x 0.9, 4 x 2.0 -> median 1.100; fits: CPU (100, 300), GPU (20) of 6 expected
    assert body[0] == ["ours (synthesized)", "8", "3", "63.33 ± 15.28", "14.14", "66.67", "20.50 ± 10.00", "1.100",
                       "200 (n=2)", "20 (n=1)"]
    assert "| A | A | 3 | 3 | ours (synthesized) | 8 | 80.00 ± 14.14 | 10.50 ± 0.71 | 1.100 |" in table
    assert "| B | B | 1 | 5 | exemplars only | 8 | 50.00 ± 14.14 | 5.00 ± 0.00 | 1.000 |" in table
    assert "| C | 2 | C | ours (synthesized) | 8 | 50.00 ± 14.14 | 30.50 ± 0.71 | 2.000 |" in table   # per site
    # synthesis minus exemplars only, per fold (0.2, 0.1, 0.1) -> 13.33 ± 5.77 across folds
    assert "| 8 | 63.33 ± 15.28 | 50.00 ± 10.00 | 13.33 ± 5.77 | 20.00 ± 0.00 | 10.00 ± 0.00 | 10.00 ± 0.00 |" in table
    saved = json.loads((out / "cv_results.json").read_text())
    row = next(r for r in saved["rows"] if r["arm"] == "synthesized")["prompts"]["center"]
    assert row["folds"] == ["A", "B", "C"] and row["across_folds"]["values"] == pytest.approx([0.8, 0.6, 0.5])
    assert row["across_seeds"]["values"] == pytest.approx([1.6 / 3, 2.2 / 3])
    assert row["per_case_mean"] == pytest.approx(8.0 / 12) and row["median_volume_ratio"] == pytest.approx(1.1)
    site_c = next(s for s in saved["sites"] if s["site"] == "C" and s["arm"] == "synthesized")
    assert site_c["cases"] == 2 and site_c["prompts"]["center"]["dsc"]["values"] == pytest.approx([0.4, 0.6])
    for name in "ABC":          # each fold keeps the grid's own outputs
        assert (out / f"fold-{name}" / "table.md").exists() and (out / f"fold-{name}" / "results.json").exists()


def test_cv_per_fold_and_site_rows_show_every_evaluation(tmp_path):
    """Two evaluations of the same fits (e.g. --keep clicked-volume): the per-fold and per-site
    tables give DSC, HD95 and volume ratio of each; a cell the second one lacks prints a dash."""
    folds_path = _toy_folds(tmp_path)
    config = {"name": "toy2", "dataset": "demo-brain", "root": "", "exemplar_counts": ["8"],
              "arms": ["synthesized"], "prompts": ["center", "center+clicked-volume"], "seeds": [0],
              "fit": {"model": "tiny"}, "folds": str(folds_path)}
    cfg_path = tmp_path / "toy2.json"
    cfg_path.write_text(json.dumps(config))
    out = tmp_path / "out"
    volumes = {"A": ["brain_00", "brain_01", "brain_03"], "B": ["brain_04"], "C": ["brain_05", "brain_07"]}
    for fold, cases in volumes.items():
        base = out / f"fold-{fold}" / "seed-0" / "evals"
        _fake_cv_eval(base / "synth_8_center", [(v, 0.6) for v in cases], 10.0, 120)
        if fold != "C":
            _fake_cv_eval(base / "synth_8_center+clicked-volume", [(v, 0.7) for v in cases], 5.0, 105)
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "experiment.py"), str(cfg_path),
                             "--table-only", "--out", str(out)], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    table = (out / "cv_table.md").read_text()
    assert ("| Fold | Held out | Test cases | Train cases | Method | Exemplars | DSC (%) center | HD95 (mm) center "
            "| Vol. ratio center | DSC (%) center+clicked-volume | HD95 (mm) center+clicked-volume "
            "| Vol. ratio center+clicked-volume |") in table
    center, clicked = "60.00 ± 0.00 | 10.00 ± 0.00 | 1.200", "70.00 ± 0.00 | 5.00 ± 0.00 | 1.050"
    assert f"| A | A | 3 | 3 | ours (synthesized) | 8 | {center} | {clicked} |" in table
    assert f"| C | C | 2 | 4 | ours (synthesized) | 8 | {center} | – | – | – |" in table
    assert f"| B | 1 | B | ours (synthesized) | 8 | {center} | {clicked} |" in table  # per site


def _fake_cv_eval(folder: Path, cases: list[tuple[str, float]], hd95: float, pred_voxels: int) -> None:
    folder.mkdir(parents=True)
    dsc = sum(d for _, d in cases) / len(cases)
    (folder / "summary.json").write_text(json.dumps({
        "mean_dsc": dsc, "mean_hd95": hd95, "hd95_unit": "mm",
        "per_class": {"tumour": {"dsc": dsc, "hd95": hd95, "n_volumes": len(cases)}}}))
    rows = "".join(f"{vol},tumour,{d:.6f},{hd95},100,{pred_voxels},{pred_voxels / 100:.4f},0.0,\n" for vol, d in cases)
    (folder / "cases.csv").write_text("volume,class,dsc,hd95,gt_voxels,pred_voxels,volume_ratio,mssd,note\n" + rows)
