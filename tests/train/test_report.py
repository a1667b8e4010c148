"""train.report: summary.json content, cases.csv rows, the paper-format table and `train report`'s
side-by-side comparison, checked value by value."""
from __future__ import annotations

import csv
import io
import json
import math

import pytest

from shared.errors import DataError
from train.metrics import CaseScore, summarise
from train.report import (cases_csv, comparability_warnings, compare, markdown_table, read_summary,
                          summary_dict)

CLASSES = ("background", "liver", "left_kidney")


def _rows() -> list[CaseScore]:
    return [CaseScore("case1", 1, "liver", 0.9, 2.5, 100, 110, volume_ratio=1.1, mssd=0.4),
            CaseScore("case1", 2, "left_kidney", 0.5, 7.25, 40, 20, volume_ratio=0.5, mssd=-1.0),
            CaseScore("case2", 1, "liver", 0.7, 4.5, 80, 88, volume_ratio=1.1, mssd=0.2),
            CaseScore("case2", 2, "left_kidney", math.nan, math.nan, 0, 0, note="absent in both")]


def _summary(**extra) -> dict:
    return summary_dict(summarise(_rows(), CLASSES), task="multi", class_names=CLASSES, **extra)


def test_summary_dict_averages_like_the_tables():
    s = _summary(method="run", prompt="center")
    assert s["per_class"]["liver"]["dsc"] == pytest.approx(0.8) and s["per_class"]["liver"]["n_volumes"] == 2
    assert s["per_class"]["liver"]["hd95"] == pytest.approx(3.5)
    assert s["per_class"]["left_kidney"]["dsc"] == pytest.approx(0.5)        # the unscored case left out
    assert s["per_class"]["left_kidney"]["n_volumes"] == 1
    assert s["mean_dsc"] == pytest.approx(0.65) and s["mean_hd95"] == pytest.approx((3.5 + 7.25) / 2)
    assert s["class_names"] == list(CLASSES) and s["method"] == "run" and s["prompt"] == "center"
    json.dumps(s, allow_nan=False)     # no NaN reaches summary.json (unscored numbers are null)


def test_cases_csv_rows_and_nan():
    rows = list(csv.DictReader(io.StringIO(cases_csv(_rows()))))
    assert [r["volume"] for r in rows] == ["case1", "case1", "case2", "case2"]
    assert rows[0]["dsc"] == "0.900000" and rows[0]["hd95"] == "2.5000" and rows[0]["pred_voxels"] == "110"
    assert rows[1]["volume_ratio"] == "0.5000" and rows[1]["mssd"] == "-1.0000"
    assert rows[3]["dsc"] == "NaN" and rows[3]["hd95"] == "NaN" and rows[3]["note"] == "absent in both"


def test_markdown_table_values_and_units():
    s = _summary()
    table = markdown_table([("ours", s)])
    lines = table.splitlines()
    assert lines[0] == "| Method | DSC (%) | HD95 (mm) | liver | left kidney |"
    assert lines[1] == "|:---|---:|---:|---:|---:|"
    assert lines[2] == "| ours | 65.00 | 5.38 | 80.00 | 50.00 |"
    assert lines[-1].startswith("HD95 in mm; empty cases: strict (")
    # another unit per row, a missing class shown as a dash, the prompt column of `train report`
    other = {**s, "hd95_unit": "voxel", "per_class": {"liver": s["per_class"]["liver"]}, "prompt": "random"}
    both = markdown_table([("ours", {**s, "prompt": "center"}), ("theirs", other)], prompt_column=True)
    rows = both.splitlines()
    assert rows[0] == "| Method | Prompt | DSC (%) | HD95 | liver | left kidney |"
    assert rows[2] == "| ours | center | 65.00 | 5.38 mm | 80.00 | 50.00 |"
    assert rows[3] == "| theirs | random | 65.00 | 5.38 voxels | 80.00 | – |"
    assert rows[-1].startswith("HD95 in mm, voxels;")
    # two evaluations of one run, with and without --keep: the column tells them apart
    kept = markdown_table([("ours", {**s, "prompt": "center", "keep": "all"}),
                           ("ours", {**s, "prompt": "center", "keep": "clicked-volume"})], prompt_column=True)
    assert [r.split(" | ")[1] for r in kept.splitlines()[2:4]] == ["center", "center, keep clicked-volume"]


def _evaldir(path, summary: dict, volumes: list[str]):
    path.mkdir()
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "cases.csv").write_text(cases_csv([CaseScore(v, 1, "liver", 0.5, 1.0, 1, 1) for v in volumes]))
    return path


def test_compare_reads_evaluations_and_warns_on_different_test_data(tmp_path):
    s = _summary(prompt="center", dataset={"source": {"name": "synapse"}})
    a = _evaldir(tmp_path / "a", s, ["case1", "case2"])
    b = _evaldir(tmp_path / "b", {**s, "mean_dsc": 0.5}, ["case1", "case2"])
    c = _evaldir(tmp_path / "c", s, ["case3"])
    table = compare([a, b], ["A", "B"])
    assert "| A | center | 65.00 |" in table and "| B | center | 50.00 |" in table
    assert comparability_warnings([a, b]) == []
    (warning,) = comparability_warnings([a, c], ["A", "C"])
    assert "A: synapse (2 classes, 2 volumes)" in warning and "C: synapse (2 classes, 1 volume)" in warning
    with pytest.raises(DataError, match="--names gives 1 names for 2"):
        compare([a, b], ["A"])


def test_read_summary_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="not an evaluation directory"):
        read_summary(tmp_path)
    (tmp_path / "summary.json").write_text("{broken")
    with pytest.raises(DataError, match="summary.json: not valid JSON") as err:
        read_summary(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "summary.json").write_text(json.dumps({"mean_dsc": 1}))
    with pytest.raises(DataError, match="not a `train eval` summary"):
        read_summary(tmp_path)
