"""`synth build --recipe`, the build summary, `synth info`'s placement lines, and the percentile
intensity preset (shared/intensity.py, --intensity for brats/nifti, train eval's default)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from shared.errors import ConfigError
from shared.intensity import apply_intensity, validate_preset
from synthkit import SMALL, synth


def test_build_recipe_paper_records_and_summarises(tmp_path) -> None:
    out = tmp_path / "paper"
    code, text = synth("build", *SMALL, "--recipe", "paper", "--workers", "1", "--out", out)
    assert code == 0, text
    info = json.loads((out / "dataset.json").read_text())
    assert info["config"]["recipe"] == "paper"
    assert info["config"]["synthesis"]["single"]["placement"]["background_choice"] == "random"
    # the summary: exemplars of eligible, pool, recipe, placement, floating share, next command
    assert "exemplars: 12 of" in text and "eligible slices" in text
    assert "background pool:" in text and "slice index" in text
    assert "recipe: paper" in text
    assert "floating objects (ring test at build time): 0 of 40 samples" in text
    assert f"synth sheet {out} --out" in text
    code, text = synth("info", out)
    assert code == 0, text
    assert "floating objects (ring test on the stored pixels): 0 of 40 samples (0.00 %)" in text
    assert "below min_inside" in text and "placed:" in text
    code, text = synth("info", out, "--json", "--no-pixels")
    s = json.loads(text)
    assert s["placement"]["objects_below_min_inside"] == 0 and "floating_pixels" not in s


def test_recipe_only_applies_to_synthesis(tmp_path) -> None:
    code, text = synth("build", *SMALL, "--recipe", "paper", "--no-synthesis", "--out", tmp_path / "x")
    assert code == 2 and "--recipe" in text


def test_percentile_preset_ignores_outlier_voxels() -> None:
    rng = np.random.default_rng(0)
    vol = np.zeros((3, 40, 40), np.float32)
    vol[:, 10:30, 10:30] = 100 + 20 * rng.random((3, 20, 20))
    vol[1, 15, 15] = 32767.0  # one outlier voxel in slice 1
    plain = apply_intensity(vol, "mri-slice-minmax")
    robust = apply_intensity(vol, "mri-slice-p99.5")
    brain = vol[1] > 0
    assert np.median(plain[1][brain]) < 0.01  # min-max squeezes the brain into a few grey levels
    assert 0.8 < np.median(robust[1][brain]) < 1.0
    assert robust[1, 15, 15] == 1.0 and robust[1, 0, 0] == 0.0  # clipped top, background stays 0
    assert np.array_equal(robust >= 0, np.ones_like(robust, bool)) and robust.max() <= 1.0
    assert validate_preset("mri-slice-p99.5") == {"kind": "minmax", "per": "slice", "upper_percentile": 99.5}
    assert validate_preset({"kind": "minmax"}) == {"kind": "minmax", "per": "slice"}  # old manifests unchanged
    with pytest.raises(ConfigError, match="upper_percentile"):
        validate_preset({"kind": "minmax", "upper_percentile": 20})
    with pytest.raises(ConfigError, match="unknown key"):
        validate_preset({"kind": "minmax", "clip": 3})


def test_intensity_option_only_for_brats_and_nifti() -> None:
    from shared.sources import open_source

    with pytest.raises(ConfigError, match=r"--intensity applies to the brats, .*nifti and dicom sources"):
        open_source("demo-brain", intensity="mri-slice-p99.5")


@pytest.mark.shared_data
def test_brats_intensity_is_recorded_and_reopened(brats_root) -> None:
    from shared.sources import open_described, open_source

    src = open_source("brats", brats_root, intensity="mri-slice-p99.5")
    d = src.describe()
    assert d["intensity"]["upper_percentile"] == 99.5 and d["options"]["intensity"] == d["intensity"]
    again = open_described(json.loads(json.dumps(d)))
    assert again.intensity == src.intensity
    case = src.case_ids()[0]
    a, b = src.load(case).image, again.load(case).image
    assert a.tobytes() == b.tobytes()
    assert "intensity" not in open_source("brats", brats_root).describe()["options"]  # default: as before


def test_eval_uses_the_runs_intensity_preset() -> None:
    from train.commands.eval_cmd import default_intensity

    class Loaded:
        run_config = {"dataset": {"source": {"name": "brats", "intensity": {"kind": "minmax", "per": "slice",
                                                                           "upper_percentile": 99.5}}}}

    assert default_intensity(None, "brats", Loaded())["upper_percentile"] == 99.5
    assert default_intensity(None, "synapse", Loaded()) is None
    assert default_intensity("mri-slice-minmax", "brats", Loaded()) == "mri-slice-minmax"
    assert default_intensity('{"kind": "minmax"}', "brats", Loaded()) == {"kind": "minmax"}


def test_select_records_intensity_and_build_from_the_list_reads_with_it(tmp_path, brats_root) -> None:
    """`synth select --intensity` records the preset in the list (its background pool's content
    test used it); `synth build --exemplar-list` then reads the images with it, and refuses an
    --intensity that contradicts it."""
    lst = tmp_path / "list.json"
    code, text = synth("select", "--dataset", "brats", "--root", brats_root, "--exemplars", "6",
                       "--intensity", "mri-slice-p99.5", "--no-progress", "--workers", "1", "--out", lst)
    assert code == 0, text
    p995 = {"kind": "minmax", "per": "slice", "upper_percentile": 99.5}
    assert json.loads(lst.read_text())["dataset"]["intensity"] == p995
    out = tmp_path / "ds"
    code, text = synth("build", "--exemplar-list", lst, "--num-samples", "8", "--workers", "1", "--no-progress",
                       "--out", out)
    assert code == 0, text
    assert "reading the images with the list's intensity preset" in text
    assert json.loads((out / "dataset.json").read_text())["source"]["intensity"] == p995
    code, text = synth("build", "--exemplar-list", lst, "--intensity", "mri-slice-minmax", "--num-samples", "8",
                       "--no-progress", "--out", tmp_path / "other")
    assert code == 2 and "the list was made with intensity" in text and "Traceback" not in text
    assert not (tmp_path / "other" / "dataset.json").exists()
    # a list made with the source's default preset builds as before (nothing overridden)
    plain = tmp_path / "plain.json"
    code, text = synth("select", "--dataset", "brats", "--root", brats_root, "--exemplars", "6", "--no-progress",
                       "--workers", "1", "--out", plain)
    assert code == 0, text
    code, text = synth("build", "--exemplar-list", plain, "--num-samples", "8", "--workers", "1", "--no-progress",
                       "--out", tmp_path / "plain_ds")
    assert code == 0 and "reading the images with the list's" not in text
