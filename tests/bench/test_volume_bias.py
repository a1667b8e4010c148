"""bench/volume_bias.py: a CV run's volume ratio split into unreached components, size prior, border."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import volume_bias


def test_unreached_share_is_the_ground_truth_outside_the_clicked_components():
    mask = np.zeros((3, 40, 40), bool)
    mask[0, 2:22, 2:22] = True        # 400 px: holds the centre click (farthest from the border)
    mask[0, 30:35, 30:35] = True      # 25 px: a second component, never clicked
    mask[2, 10:20, 10:20] = True      # 100 px: one component, clicked
    assert volume_bias.unreached_share(mask) == pytest.approx(25 / 525)
    assert volume_bias.unreached_share(mask[2:]) == 0.0
    assert math.isnan(volume_bias.unreached_share(np.zeros((2, 8, 8), bool)))


def test_summary_of_rows():
    rows = [{"gt_voxels": g, "pred_voxels": g * r, "volume_ratio": r, "mssd": m, "unreached": u}
            for g, r, m, u in [(100, 1.2, 1.0, 0.0), (200, 1.1, 0.5, 0.1), (400, 0.9, -0.5, 0.0), (800, 0.8, -1.0, 0.2)]]
    b = volume_bias.summarise("synth_8_center", rows)
    assert b.rows == 4 and b.median_ratio == pytest.approx(1.0)
    assert b.median_ratio_smaller_half == pytest.approx(1.15) and b.median_ratio_larger_half == pytest.approx(0.85)
    assert b.median_ideal == pytest.approx(0.95) and b.size_slope < 1.0
    assert "| synth_8_center | 4 | 1.000 | 0.950 |" in volume_bias.table([b])


def test_reads_a_cv_folder_end_to_end(tmp_path, capsys):
    """The packed held-out volumes of a fold joined with an evaluation's cases.csv, through main()."""
    fold = tmp_path / "cv" / "fold-A"
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "synth"), "pack", "--dataset", "demo-brain", "--split", "test", "--no-progress",
                    "--out", str(fold / "data" / "test")], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    from train.testsets import open_shards_testset

    testset = open_shards_testset(fold / "data" / "test")
    evals = fold / "seed-0" / "evals" / "synth_8_center"
    evals.mkdir(parents=True)
    lines = ["volume,class,dsc,hd95,gt_voxels,pred_voxels,volume_ratio,mssd,note"]
    for vid in testset.volume_ids:
        gt = int((testset.load(vid).label == 1).sum())
        lines.append(f"{vid},tumour,0.8,5.0,{gt},{gt * 0.9:.0f},0.9,-0.5,")
    (evals / "cases.csv").write_text("\n".join(lines) + "\n")
    volume_bias.main([str(tmp_path / "cv"), "--json", str(tmp_path / "bias.json")])
    out = capsys.readouterr().out
    assert "| synth_8_center | 2 | 0.900 |" in out
    rows = volume_bias.collect(tmp_path / "cv")["synth_8_center"]
    assert {r["volume"] for r in rows} == set(testset.volume_ids)
    assert all(0.0 <= r["unreached"] < 1.0 and r["fold"] == "A" and r["seed"] == 0 for r in rows)
    assert (tmp_path / "bias.json").exists()
    with pytest.raises(SystemExit, match="not a finished cross-validation folder"):
        volume_bias.collect(tmp_path / "nothing")
