"""train/precheck.py: the checks `train fit` / `eval` / `predict` run before torch is imported.
`check_fit_model` reads the model and checkpoint from `train.config.resolve_values`, the same
merge `resolve_config` uses, so the two cannot disagree about which checkpoint a run needs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shared.errors import ConfigError, DataError
from train.config import resolve_config
from train.precheck import check_fit_model


def _config(tmp_path, data):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("data, model, expect", [
    ({}, "tiny", None),
    ({"model": "tiny"}, None, None),
    ({"model": "vit_b", "checkpoint": "CKPT"}, None, "CKPT"),
    ({"models": {"vit_b": {"checkpoint": "CKPT"}}}, "vit_b", "CKPT"),
    ({"checkpoint": "CKPT", "models": {"tiny": {"img_size": 64}}}, "vit_b", "CKPT"),
])
def test_check_fit_model_resolves_what_resolve_config_resolves(tmp_path, data, model, expect):
    ckpt = tmp_path / "sam.pth"
    ckpt.write_bytes(b"x")
    data = json.loads(json.dumps(data).replace("CKPT", str(ckpt)))
    cfg = _config(tmp_path, data)
    resolved = resolve_config(cfg, {"model": model})
    assert resolved.checkpoint == (None if expect is None else str(ckpt))
    check_fit_model(cfg, model, None)   # accepted: tiny, or a checkpoint that exists
    ckpt.unlink()
    if expect is not None:
        with pytest.raises(DataError, match="SAM checkpoint not found"):
            check_fit_model(cfg, model, None)


def test_check_fit_model_refusals(tmp_path):
    with pytest.raises(ConfigError, match="needs --checkpoint"):
        check_fit_model(None, "vit_b", None)
    with pytest.raises(ConfigError, match="needs --checkpoint"):   # the file names vit_b, no weights
        check_fit_model(_config(tmp_path, {"model": "vit_b"}), None, None)
    with pytest.raises(ConfigError, match="unknown config key"):   # as resolve_config says it
        check_fit_model(_config(tmp_path, {"modle": "tiny"}), None, None)
    with pytest.raises(DataError, match="--config .*not found"):
        check_fit_model(tmp_path / "missing.json", "tiny", None)
    check_fit_model(None, "lite_medsam", None)   # the package weights


def test_precheck_stays_torch_free(tmp_path):
    code = ("import sys\nfrom train.precheck import check_fit_model\ncheck_fit_model(None, 'tiny', None)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
