"""Dataset splits, read back from ``data_manifests/splits/``.

- ``brats`` (and ``nifti``/demo without a split file): a seeded 80/20 random split by case. The
  rule and its seed live in ``data_manifests/splits/seeded_80_20.json``: sort the case ids, permute
  them with ``numpy.random.default_rng(seed)``, the first ``round(0.2 * n)`` (at least 1 when
  n >= 2) are test. The same rule therefore splits any BraTS case list (the 4-case sample, the
  285-case release) reproducibly. Explicit split files recorded for a known case list (e.g.
  ``brats2018_sample.json``) are used when their cases are exactly the source's cases.
- ``synapse`` / ``transunet``: the TransUNet test list (cases 1, 2, 3, 4, 8, 22, 25, 29, 32, 35,
  36, 38; ``synapse_transunet.json``); every other case is train.
- Any source: a user split file ``{"train": [...], "test": [...]}`` overrides the above.

``--split all`` is every case; an empty result is an error telling the user what to do.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ConfigError, DataError
from shared.fileio import read_json

SPLITS = ("train", "test", "all")
SPLITS_DIR = Path(__file__).resolve().parents[1] / "data_manifests" / "splits"

# Built-in copies of the checked-in rules (a test asserts they equal the files), so an installed
# package without data_manifests/ still splits identically.
DEFAULT_RULE: dict[str, Any] = {"kind": "seeded-random", "seed": 2018, "test_fraction": 0.2}
TRANSUNET_TEST_CASES: tuple[int, ...] = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)


def _read_split_json(path: Path) -> dict[str, Any]:
    return read_json(path, what="split file", expect=dict)


def seeded_split(case_ids: list[str], seed: int, test_fraction: float = 0.2) -> dict[str, list[str]]:
    """The seeded random split by case: returns ``{"train": [...], "test": [...]}`` (sorted)."""
    ids = sorted(case_ids)
    n = len(ids)
    n_test = int(np.floor(test_fraction * n + 0.5)) if n >= 2 else 0
    n_test = min(max(n_test, 1 if n >= 2 else 0), n - 1 if n >= 2 else 0)
    order = np.random.default_rng(seed).permutation(n)
    test = {ids[i] for i in order[:n_test]}
    return {"train": [c for c in ids if c not in test], "test": [c for c in ids if c in test]}


def seeded_rule() -> dict[str, Any]:
    path = SPLITS_DIR / "seeded_80_20.json"
    if path.is_file():
        data = _read_split_json(path)
        return {"kind": data["kind"], "seed": int(data["seed"]), "test_fraction": float(data["test_fraction"])}
    return dict(DEFAULT_RULE)


def transunet_test_cases() -> tuple[int, ...]:
    path = SPLITS_DIR / "synapse_transunet.json"
    if path.is_file():
        return tuple(int(c) for c in _read_split_json(path)["test_cases"])
    return TRANSUNET_TEST_CASES


def case_number(case_id: str) -> int | None:
    """``"0001"`` / ``"case0001"`` / ``"img0001"`` -> 1."""
    match = re.search(r"(\d+)$", case_id)
    return int(match.group(1)) if match else None


def _recorded_split(dataset: str, case_ids: list[str]) -> tuple[dict[str, list[str]], str] | None:
    """An explicit checked-in split whose cases are exactly ``case_ids``, if any."""
    if not SPLITS_DIR.is_dir():
        return None
    wanted = set(case_ids)
    for path in sorted(SPLITS_DIR.glob("*.json")):
        data = _read_split_json(path)
        if data.get("dataset") != dataset or "train" not in data:
            continue
        if set(data["train"]) | set(data.get("test", [])) == wanted:
            return {"train": list(data["train"]), "test": list(data.get("test", []))}, str(path)
    return None


def read_split_file(path: str | Path, case_ids: list[str]) -> dict[str, list[str]]:
    """A user split file ``{"train": [...], "test": [...]}``; unknown case ids are an error."""
    path = Path(path)
    data = _read_split_json(path)
    if "train" not in data and "test" not in data:
        raise DataError(f"{path}: a split file needs a 'train' and/or 'test' list of case ids")
    known = set(case_ids)
    out: dict[str, list[str]] = {}
    for part in ("train", "test"):
        ids = data.get(part, [])
        if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
            raise DataError(f"{path}: '{part}' must be a list of case id strings")
        unknown = [c for c in ids if c not in known]
        if unknown:
            raise DataError(f"{path}: unknown case id(s) in '{part}': {', '.join(unknown[:5])}"
                            f"{' ...' if len(unknown) > 5 else ''} (the source has {len(known)} cases)")
        out[part] = sorted(ids)
    both = set(out["train"]) & set(out["test"])
    if both:
        raise DataError(f"{path}: case(s) in both train and test: {', '.join(sorted(both)[:5])}")
    return out


def split_parts(source, split_file: str | Path | None = None) -> tuple[dict[str, list[str]], str]:
    """``({"train": [...], "test": [...]}, description of where the split came from)``."""
    ids = source.case_ids()
    if split_file is not None:
        return read_split_file(split_file, ids), f"split file {Path(split_file).resolve()}"
    if source.name in ("synapse", "transunet"):
        test_numbers = set(transunet_test_cases())
        test = [c for c in ids if case_number(c) in test_numbers]
        return {"train": [c for c in ids if c not in test], "test": test}, "TransUNet Synapse split"
    recorded = _recorded_split(source.name, ids)
    if recorded is not None:
        return recorded[0], f"recorded split {Path(recorded[1]).name}"
    rule = seeded_rule()
    return (seeded_split(ids, rule["seed"], rule["test_fraction"]),
            f"seeded {1 - rule['test_fraction']:.0%}/{rule['test_fraction']:.0%} split by case (seed {rule['seed']})")


def resolve_split(source, split: str, split_file: str | Path | None = None) -> list[str]:
    """The sorted case ids of ``split`` ("train", "test" or "all"); DataError when empty."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    ids = source.case_ids()
    if split == "all":
        chosen = list(ids)
        origin = "all cases"
    else:
        parts, origin = split_parts(source, split_file)
        chosen = parts[split]
    if not chosen:
        hint = " use --split all to use every case" if split != "all" else ""
        raise DataError(f"split '{split}' of {source.name} at {source.root} is empty ({origin}; "
                        f"the source has {len(ids)} case(s): {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''});{hint}")
    return sorted(chosen)
