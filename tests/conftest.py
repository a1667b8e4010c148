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
