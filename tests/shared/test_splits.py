"""Splits: the checked-in rules are read back, the seeded rule, the TransUNet list, user files."""
from __future__ import annotations

import json

import pytest

from shared import splits
from shared.errors import ConfigError, DataError
from shared.sources import open_source
from shared.splits import SPLITS_DIR, resolve_split, seeded_split, split_parts


class FakeSource:
    def __init__(self, name, ids):
        self.name, self._ids, self.root = name, sorted(ids), "/fake"

    def case_ids(self):
        return list(self._ids)


def test_checked_in_rules_match_the_builtin_copies():
    rule = json.loads((SPLITS_DIR / "seeded_80_20.json").read_text())
    assert {k: rule[k] for k in ("kind", "seed", "test_fraction")} == splits.DEFAULT_RULE
    tu = json.loads((SPLITS_DIR / "synapse_transunet.json").read_text())
    assert tuple(tu["test_cases"]) == splits.TRANSUNET_TEST_CASES == (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)


def test_seeded_rule_is_reproducible_80_20():
    ids = [f"Brats18_case_{i:03d}" for i in range(285)]
    a = seeded_split(ids, 2018)
    assert a == seeded_split(list(reversed(ids)), 2018)  # order of discovery does not matter
    assert len(a["train"]) == 228 and len(a["test"]) == 57
    assert not set(a["train"]) & set(a["test"]) and set(a["train"]) | set(a["test"]) == set(ids)
    assert seeded_split(ids, 7) != a
    assert seeded_split(["x"], 2018) == {"train": ["x"], "test": []}
    assert [len(v) for v in seeded_split(["a", "b"], 1).values()] == [1, 1]


def test_brats_sample_split_is_recorded_and_read_back(brats_root):
    src = open_source("brats", brats_root)
    recorded = json.loads((SPLITS_DIR / "brats2018_sample.json").read_text())
    rule = seeded_split(src.case_ids(), recorded["seed"])
    assert {"train": recorded["train"], "test": recorded["test"]} == rule
    parts, origin = split_parts(src)
    assert "brats2018_sample.json" in origin and parts == rule
    assert resolve_split(src, "train") == ["Brats18_2013_3_1", "Brats18_2013_4_1", "Brats18_2013_6_1"]
    assert resolve_split(src, "test") == ["Brats18_2013_5_1"]
    assert resolve_split(src, "all") == src.case_ids()


def test_other_brats_case_lists_use_the_seeded_rule():
    ids = [f"Brats18_TCIA01_{i}_1" for i in range(10)]
    parts, origin = split_parts(FakeSource("brats", ids))
    assert "seed 2018" in origin and parts == seeded_split(ids, 2018) and len(parts["test"]) == 2


def test_transunet_split_on_the_synapse_numbering():
    numbers = list(range(1, 11)) + list(range(21, 41))  # the 30 labelled Synapse scans
    syn = FakeSource("synapse", [f"{n:04d}" for n in numbers])
    tu = FakeSource("transunet", [f"case{n:04d}" for n in numbers])
    assert resolve_split(syn, "test") == ["0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029",
                                          "0032", "0035", "0036", "0038"]
    assert len(resolve_split(syn, "train")) == 18
    assert resolve_split(tu, "test") == [f"case{n:04d}" for n in splits.TRANSUNET_TEST_CASES]
    assert "case0005" in resolve_split(tu, "train")


def test_sample_synapse_train_split_is_empty_with_advice(synapse_root, transunet_root):
    for name, root, case in (("synapse", synapse_root, "0001"), ("transunet", transunet_root, "case0001")):
        src = open_source(name, root)
        with pytest.raises(DataError, match="split 'train' of .* is empty.*use --split all"):
            resolve_split(src, "train")
        assert resolve_split(src, "test") == [case] == resolve_split(src, "all")


def test_demo_splits_follow_the_seeded_rule():
    brain = open_source("demo-brain")
    assert resolve_split(brain, "train") == seeded_split(brain.case_ids(), 2018)["train"]
    assert len(resolve_split(brain, "train")) == 6 and len(resolve_split(open_source("demo-abdomen"), "train")) == 5


def test_user_split_file(tmp_path):
    src = FakeSource("nifti", ["a", "b", "c", "d"])
    good = tmp_path / "split.json"
    good.write_text(json.dumps({"train": ["b", "a"], "test": ["d"]}))
    assert resolve_split(src, "train", good) == ["a", "b"] and resolve_split(src, "test", good) == ["d"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": ["a", "zz"]}))
    with pytest.raises(DataError, match=r"bad.json: unknown case id\(s\) in 'train': zz"):
        resolve_split(src, "train", bad)
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"train": ["a"], "test": ["a"]}))
    with pytest.raises(DataError, match="in both train and test"):
        resolve_split(src, "train", both)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"train": [], "test": ["a"]}))
    with pytest.raises(DataError, match="split 'train' .* is empty"):
        resolve_split(src, "train", empty)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(DataError, match="broken.json: not valid JSON"):
        resolve_split(src, "train", broken)
    with pytest.raises(DataError, match="split file not found"):
        resolve_split(src, "train", tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="unknown split"):
        resolve_split(src, "val")
