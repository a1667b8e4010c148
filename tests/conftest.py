"""Shared test fixtures.

Real sample data is read from EXEMPLAR_SAM_DATA (default: ../shared/data relative to the project
root). Tests that need it take the ``shared_data`` fixture and are skipped, with the reason, when
the folder is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("EXEMPLAR_SAM_DATA", PROJECT_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if not (root / "README.md").exists() and not any(root.glob("*_sample")):
        pytest.skip(f"real sample data not found at {root} (set EXEMPLAR_SAM_DATA)")
    return root


def _sample_folder(shared_data: Path, name: str) -> Path:
    path = shared_data / name
    if not path.is_dir():
        pytest.skip(f"{name} not found at {path}")
    return path


@pytest.fixture(scope="session")
def brats_root(shared_data: Path) -> Path:
    return _sample_folder(shared_data, "brats2018_sample")


@pytest.fixture(scope="session")
def synapse_root(shared_data: Path) -> Path:
    return _sample_folder(shared_data, "synapse_sample")


@pytest.fixture(scope="session")
def transunet_root(shared_data: Path) -> Path:
    return _sample_folder(shared_data, "transunet_sample")


@pytest.fixture(scope="session")
def vit_b_random_checkpoint(tmp_path_factory):
    """An 'official' checkpoint: segment_anything's own vit_b builder, random init, torch.save.

    Returns (path, {name: shape}, state dict). Built once per session (about 9 s on 2 cores)."""
    import torch
    from segment_anything import sam_model_registry

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        ref = sam_model_registry["vit_b"]()
        # rel-pos tables are zero-initialised; give them values so resizing is observable
        for blk in ref.image_encoder.blocks:
            torch.nn.init.normal_(blk.attn.rel_pos_h, std=0.02)
            torch.nn.init.normal_(blk.attn.rel_pos_w, std=0.02)
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_random.pth"
    state = ref.state_dict()
    torch.save(state, path)
    return path, {k: v.shape for k, v in state.items()}, state


@pytest.fixture(scope="session", autouse=True)
def _private_model_caches(tmp_path_factory):
    """Engine exports and frozen-encoder embeddings go to a folder of the test session, not to the
    user's ~/.cache (one export is shared by the whole session)."""
    root = tmp_path_factory.mktemp("model-caches")
    saved = {k: os.environ.get(k) for k in ("EXEMPLAR_SAM_ENGINE_CACHE", "EXEMPLAR_SAM_EMBEDDING_CACHE")}
    os.environ["EXEMPLAR_SAM_ENGINE_CACHE"] = str(root / "engines")
    os.environ["EXEMPLAR_SAM_EMBEDDING_CACHE"] = str(root / "embeddings")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
