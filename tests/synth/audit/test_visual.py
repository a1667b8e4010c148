"""Audit pictures: drawing functions (synth/audit/visual.py) and the `synth show` / `synth sheet` commands."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from shared.errors import DataError
from synth.audit import visual
from synth.synthesis.bank import SliceRef
from synth.synthesis.sample import synthesize
from synth.synthesis.config import load_config
from synthkit import ORGANS, abdomen_bank

CONFIG = load_config()


def test_overlay_colours_each_class() -> None:
    img = np.full((40, 50), 0.5, np.float32)
    lab = np.zeros((40, 50), np.uint8)
    lab[5:15, 5:15] = 1
    lab[20:35, 25:45] = 5
    out = visual.overlay(img, lab, contour=True)
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    assert (out[0, 0] == 128).all()  # background untouched grey
    for k, (y, x) in ((1, (10, 10)), (5, (27, 35))):
        px = out[y, x].astype(int)
        expected = (0.7 * 128 + 0.3 * np.array(visual.class_colour(k))).astype(int)
        assert np.abs(px - expected).max() <= 1
        assert (out[5 if k == 1 else 20, 10 if k == 1 else 35] == visual.class_colour(k)).all()  # contour
    big = visual.overlay(img, lab, size=200)
    assert max(big.shape[:2]) == 200


def test_show_and_sheet_figures_from_synthesized_samples(tmp_path: Path) -> None:
    bank = abdomen_bank()
    samples = []
    for i in range(7):
        image, label, rec = synthesize(i, 0, bank, CONFIG, "multi")
        samples.append((f"s{i}", image, label))
    exemplars = []
    for obj in rec["objects"]:
        ref = SliceRef.from_json(obj["ref"])
        if all(t != str(ref) for t, _, _ in exemplars):
            exemplars.append((str(ref), *bank.exemplar(ref)))
    bg = SliceRef.from_json(rec["background"]["ref"])
    fig = visual.show_figure(exemplars, (str(bg), bank.background(bg)), ("s6", image, label), rec, ORGANS, size=128)
    lines = visual.params_lines(rec, ORGANS)
    assert len(lines) == 3 + 2 * len(rec["objects"]) and any("liver" in line for line in lines)
    assert fig.ndim == 3 and fig.shape[1] >= 128 * (len(exemplars[:4]) + 2)
    sheet = visual.sheet_figure(samples, ORGANS, cols=3, size=96)
    assert sheet.shape[1] >= 3 * 96 and sheet.shape[0] >= 3 * 96
    for name, arr in (("show.png", fig), ("sheet.png", sheet)):
        assert cv2.imwrite(str(tmp_path / name), arr)
        back = cv2.imread(str(tmp_path / name))
        assert back.shape == arr.shape


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory) -> Path:
    from synth.cli import cli

    out = tmp_path_factory.mktemp("vis") / "ds"
    res = CliRunner().invoke(cli, ["build", "--dataset", "demo-abdomen", "--exemplars", "3", "--num-samples", "10",
                                   "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


def test_show_command(demo_dataset: Path, tmp_path: Path) -> None:
    from synth.cli import cli

    out = tmp_path / "pics" / "s3.png"
    res = CliRunner().invoke(cli, ["show", str(demo_dataset), "--sample", "s000003", "--out", str(out)])
    assert res.exit_code == 0, res.output
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 3 * 256
    # by index too; same picture
    res = CliRunner().invoke(cli, ["show", str(demo_dataset), "--sample", "3", "--out", str(tmp_path / "b.png")])
    assert res.exit_code == 0 and (cv2.imread(str(tmp_path / "b.png")) == img).all()
    # the exemplar panels come from the source: not blank
    assert img[30:250, 20:240].std() > 5


def test_show_without_the_source_still_draws(demo_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    import shared.sources

    from synth.cli import cli

    def gone(description):
        raise DataError(f"{description.get('root')}: source folder not found")

    monkeypatch.setattr(shared.sources, "open_described", gone)
    res = CliRunner().invoke(cli, ["show", str(demo_dataset), "--sample", "0", "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 0, res.output
    assert "warning: cannot re-read the source slices" in res.output
    assert cv2.imread(str(tmp_path / "x.png")) is not None


def test_sheet_command(demo_dataset: Path, tmp_path: Path) -> None:
    from synth.cli import cli

    out = tmp_path / "sheet.png"
    res = CliRunner().invoke(cli, ["sheet", str(demo_dataset), "--n", "6", "--cols", "3", "--seed", "1",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "6 samples" in res.output
    img = cv2.imread(str(out))
    assert img is not None and img.shape[1] >= 3 * 180
    again = tmp_path / "again.png"
    CliRunner().invoke(cli, ["sheet", str(demo_dataset), "--n", "6", "--cols", "3", "--seed", "1", "--out", str(again)])
    assert (cv2.imread(str(again)) == img).all()  # seeded choice


def test_show_bad_sample_and_bad_out(demo_dataset: Path, tmp_path: Path) -> None:
    from shared.cli_support import run_cli
    from synth.cli import cli

    for args, message in ((["--sample", "s999999"], "no sample with id"), (["--sample", "99"], "out of range")):
        with pytest.raises(SystemExit) as info:
            run_cli(cli, ["show", str(demo_dataset), *args, "--out", str(tmp_path / "x.png")])
        assert info.value.code == 2
    with pytest.raises(DataError, match="give a .png file name"):
        CliRunner().invoke(cli, ["show", str(demo_dataset), "--sample", "0", "--out", str(tmp_path / "x.jpg")],
                           catch_exceptions=False)
    with pytest.raises(DataError):
        CliRunner().invoke(cli, ["sheet", str(tmp_path / "missing"), "--out", str(tmp_path / "y.png")],
                           catch_exceptions=False)


def test_show_uses_the_recorded_parameters(demo_dataset: Path) -> None:
    rec = json.loads((demo_dataset / "samples.jsonl").read_text().splitlines()[4])
    lines = visual.params_lines(rec["synthesis"], tuple(json.loads((demo_dataset / "dataset.json").read_text())["class_names"]))
    p = rec["synthesis"]["objects"][0]["params"]
    assert f"s={p['scale']:.3f}" in lines[4]
