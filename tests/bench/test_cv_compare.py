"""bench/cv_compare.py: two CV outputs paired by fold, seed and case."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import cv_compare


def _cell(out: Path, fold: str, rows: list[tuple[int, str, float, float]], prompt: str = "center",
          arm: str = "synthesized") -> None:
    folder = out / f"fold-{fold}" / "cells"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["seed,volume,class,dsc,hd95,gt_voxels,pred_voxels,volume_ratio,mssd,note"]
    lines += [f"{seed},{case},tumour,{dsc},5.0,100,100,{ratio},1.0," for seed, case, dsc, ratio in rows]
    (folder / f"{arm}_150_{prompt}.csv").write_text("\n".join(lines) + "\n")


def test_pairs_by_fold_seed_and_case(tmp_path, capsys):
    base, cand = tmp_path / "base", tmp_path / "cand"
    _cell(base, "A", [(0, "a1", 0.70, 1.4), (0, "a2", 0.60, 1.2), (1, "a1", 0.50, 1.0)])
    _cell(base, "B", [(0, "b1", 0.80, 0.9)])
    _cell(cand, "A", [(0, "a1", 0.80, 1.1), (0, "a2", 0.60, 1.0)])  # seed 1 of fold A only in base
    _cell(cand, "B", [(0, "b1", 0.70, 1.0)])
    c = cv_compare.compare(cv_compare.read_rows(base, "synthesized", "150", "center"),
                           cv_compare.read_rows(cand, "synthesized", "150", "center"))
    assert c.diffs == pytest.approx([10.0, 0.0, -10.0])          # a1, a2 (seed 0), b1
    fold_a, fold_b = c.per_fold
    assert fold_a[:2] == ("A", 2) and fold_a[2] == pytest.approx(65.0) and fold_a[3] == pytest.approx(70.0)
    assert fold_a[4] == pytest.approx(1.3) and fold_a[5] == pytest.approx(1.05)   # median volume ratios
    assert c.fold_diffs == pytest.approx([5.0, -10.0])
    assert c.missing == ["A seed 1"]
    assert c.per_seed == pytest.approx({0: -2.5})  # (+5 on fold A, -10 on fold B) / 2
    assert cv_compare.main([str(base), str(cand)]) == 0
    text = capsys.readouterr().out
    assert "| A | 2 | 65.00 | 70.00 | +5.00 | 1.300 | 1.050 |" in text
    assert "1 better / 1 worse" in text and "Only on one side (left out): A seed 1." in text


def test_sign_test_exact_values():
    assert cv_compare.sign_test_p(0, 0) == 1.0
    assert cv_compare.sign_test_p(5, 0) == pytest.approx(2 / 32)
    assert cv_compare.sign_test_p(3, 3) == 1.0
    assert cv_compare.sign_test_p(18, 6) == pytest.approx(2 * sum(math.comb(24, i) for i in range(7)) / 2 ** 24)


def test_missing_cells_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _cell(tmp_path / "cand", "A", [(0, "a1", 0.8, 1.0)])
    assert cv_compare.main([str(tmp_path / "empty"), str(tmp_path / "cand")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no fold-*/cells/synthesized_150_center.csv" in err


def test_two_evaluations_of_one_grid(tmp_path, capsys):
    """--candidate-prompt: the same fits scored two ways (e.g. with --keep clicked-volume), one folder."""
    _cell(tmp_path, "A", [(0, "a1", 0.70, 1.4), (0, "a2", 0.60, 1.2)])
    _cell(tmp_path, "A", [(0, "a1", 0.75, 1.1), (0, "a2", 0.60, 1.2)], prompt="center+clicked-volume")
    assert cv_compare.main([str(tmp_path), str(tmp_path), "--candidate-prompt", "center+clicked-volume"]) == 0
    text = capsys.readouterr().out
    assert "| A | 2 | 65.00 | 67.50 | +2.50 | 1.300 | 1.150 |" in text
    assert "center vs center+clicked-volume" in text
    assert cv_compare.main([str(tmp_path), str(tmp_path), "--candidate-prompt", "center+clicked-slice"]) == 2
    assert "synthesized_150_center+clicked-slice.csv (candidate)" in capsys.readouterr().err


def test_two_arms_of_one_grid(tmp_path, capsys):
    """--candidate-arm: synthesis against exemplars only on the same cases, one folder."""
    _cell(tmp_path, "A", [(0, "a1", 0.60, 1.4), (1, "a1", 0.50, 1.2)], arm="exemplars")
    _cell(tmp_path, "A", [(0, "a1", 0.70, 1.1), (1, "a1", 0.70, 1.0)])
    assert cv_compare.main([str(tmp_path), str(tmp_path), "--arm", "exemplars", "--candidate-arm", "synthesized"]) == 0
    text = capsys.readouterr().out
    assert "| A | 2 | 55.00 | 70.00 | +15.00 | 1.300 | 1.050 |" in text
    assert "exemplars_150_center vs synthesized_150_center" in text and "2 better / 0 worse" in text
    assert cv_compare.main([str(tmp_path), str(tmp_path), "--candidate-arm", "full"]) == 2
    assert "full_150_center.csv (candidate)" in capsys.readouterr().err


def test_small_p_values_print_as_a_bound(tmp_path, capsys):
    """11 of 11 cases better: p = 2 / 2**11 < 0.001 prints as '< 0.001', not '0.000'."""
    _cell(tmp_path / "base", "A", [(0, f"a{k}", 0.60, 1.0) for k in range(11)])
    _cell(tmp_path / "cand", "A", [(0, f"a{k}", 0.70, 1.0) for k in range(11)])
    assert cv_compare.main([str(tmp_path / "base"), str(tmp_path / "cand")]) == 0
    assert "11 better / 0 worse, sign test p < 0.001." in capsys.readouterr().out
