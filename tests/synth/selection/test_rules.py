"""Exemplar selection: each rule with its counts, the background pool, the list file."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from shared.errors import ConfigError, DataError
from shared.sources import open_source
from shared.splits import resolve_split
from synth.selection.exemplar_list import ExemplarList, select_exemplars
from synth.selection.rules import ExemplarSpec, VolumeScan, pick_most_organs, rank_slices, scan_source

SCHEMA = json.loads((Path(__file__).resolve().parents[3] / "data_manifests/schemas/exemplar_list.schema.json").read_text())


@pytest.fixture(scope="module")
def brats(brats_root):
    src = open_source("brats", brats_root)
    return src, scan_source(src, src.case_ids())


def test_spec_parsing():
    assert ExemplarSpec.parse("150").count == 150
    assert ExemplarSpec.parse("0.5%").percent == 0.5 and ExemplarSpec.parse("1%").resolve(14662) == 147
    # the paper's 0.5 / 1 / 3 % of BraTS 2018's 14,662 tumour slices (it reports 75 / 150 / 450)
    assert [ExemplarSpec.parse(p).resolve(14662) for p in ("0.5%", "1%", "3%")] == [73, 147, 440]
    assert ExemplarSpec.parse("0.001%").resolve(100) == 1
    for bad in ("0", "-3", "abc", "1.5", "150%", "0%", "%", "1e3"):
        with pytest.raises(ConfigError, match="--exemplars"):
            ExemplarSpec.parse(bad)


def test_random_rule_counts_on_the_brats_sample(brats):
    src, scans = brats
    ids = src.case_ids()
    counts = {p: len(select_exemplars(src, ids, p, seed=0, scans=scans).exemplars) for p in ("0.5%", "1%", "3%")}
    assert counts == {"0.5%": 2, "1%": 3, "3%": 9}  # of 309 eligible slices
    lst = select_exemplars(src, ids, "150", seed=0, scans=scans)
    assert lst.rule == "random-slices" and lst.selection["eligible_slices"] == 309
    assert len(set(lst.pairs())) == 150 and lst.pairs() == sorted(lst.pairs())
    by_id = {s.volume_id: s for s in scans}
    assert all(by_id[v].foreground[k] >= 10 for v, k in lst.pairs())
    assert all(e["classes"]["tumour"] == e["foreground_pixels"] >= 10 for e in lst.exemplars)
    assert select_exemplars(src, ids, "150", seed=0, scans=scans).pairs() == lst.pairs()
    assert select_exemplars(src, ids, "150", seed=1, scans=scans).pairs() != lst.pairs()
    assert select_exemplars(src, ids, "309", seed=0, scans=scans).selection["requested"] == 309
    with pytest.raises(DataError, match=r"asked for 310 exemplars but only 309 slices of the 4 chosen case\(s\) hold >= 10"):
        select_exemplars(src, ids, "310", seed=0, scans=scans)
    # the threshold is configurable
    assert select_exemplars(src, ids, "1", seed=0, min_pixels=500, scans=scans).selection["eligible_slices"] < 309


def test_only_the_chosen_cases_feed_exemplars_and_backgrounds(brats):
    src, scans = brats
    train = resolve_split(src, "train")
    lst = select_exemplars(src, train, "1%", seed=0, scans=[s for s in scans if s.volume_id in train])
    assert {v for v, _ in lst.pairs()} <= set(train) and {v for v, _ in lst.background_pairs()} <= set(train)
    assert lst.cases == train and lst.selection["eligible_slices"] < 309


def test_background_pool_on_the_brats_sample(brats):
    src, scans = brats
    lst = select_exemplars(src, src.case_ids(), "1", seed=0, scans=scans)
    assert len(lst.background_pool) == 185
    vol = src.load(src.case_ids()[0])
    pool = [k for v, k in lst.background_pairs() if v == vol.volume_id]
    assert pool and all(not vol.label[k].any() for k in pool)
    assert all((vol.image[k] > 0.02).mean() >= 0.05 for k in pool)  # brain tissue present
    empty = [k for k in range(vol.num_slices) if not vol.image[k].any()]
    assert empty and not set(empty) & set(pool)  # empty slabs are not background


def _scan(vid, rows):
    """rows: per slice, pixel counts of classes 1..3."""
    counts = np.array([[0] + list(r) for r in rows], dtype=np.int64)
    return VolumeScan(vid, counts, np.ones(len(rows)))


@pytest.fixture
def organ_scans():
    return [
        _scan("a", [(0, 0, 0), (20, 20, 0), (20, 20, 20), (50, 50, 0), (15, 0, 0)]),   # best: 2, then 3 (area), 1
        _scan("b", [(30, 30, 30), (90, 90, 90), (11, 0, 0), (5, 0, 0)]),                 # best: 1 (area 270), then 0
        _scan("c", [(40, 40, 40), (0, 0, 0), (60, 0, 0)]),                               # best: 0, then 2
        _scan("d", [(12, 0, 0)]),                                                         # best: 0 only
    ]


def test_most_organs_ranking_and_ties(organ_scans):
    assert rank_slices(organ_scans[0], 10) == [2, 3, 1, 4]
    assert rank_slices(organ_scans[1], 10) == [1, 0, 2]  # slice 3 has 5 px < 10: not eligible
    assert rank_slices(organ_scans[1], 1) == [1, 0, 2, 3]


def test_most_organs_rule_counts(organ_scans):
    pick = lambda n, seed=0: pick_most_organs(organ_scans, n, seed, 10)  # noqa: E731
    assert pick(1) == [("b", 1)]  # the slice with most organs overall, tie broken by area (270 > 120)
    two = pick(2)
    assert len(two) == 2 and len({v for v, _ in two}) == 2  # N < volumes: N volumes, best slice each
    best = {"a": 2, "b": 1, "c": 0, "d": 0}
    assert all(best[v] == k for v, k in two)
    assert pick(3, 0) == pick(3, 0)  # reproducible
    assert len({tuple(pick(2, s)) for s in range(20)}) > 1  # volumes chosen by seed
    assert pick(4) == sorted(best.items())  # N = 1 x volumes
    # N = 2 x volumes: the 2 best of each volume, but "d" has only one: it drops out
    with pytest.raises(DataError, match="asked for 12 exemplars but only 10 slices"):
        pick(12)
    assert pick(7) == sorted([("a", 2), ("a", 3), ("b", 1), ("b", 0), ("c", 0), ("c", 2), ("d", 0)])
    # other N = k x V + r: k best of every volume plus the next best of r volumes by seed
    five = pick(5)
    assert set(best.items()) <= set(five) and len(five) == 5
    assert pick(10) == sorted([("a", 2), ("a", 3), ("a", 1), ("a", 4), ("b", 1), ("b", 0), ("b", 2),
                               ("c", 0), ("c", 2), ("d", 0)])


def test_most_organs_on_the_synapse_sample(synapse_root):
    src = open_source("synapse", synapse_root)
    ids = resolve_split(src, "all")
    scans = scan_source(src, ids)
    one = select_exemplars(src, ids, "1", seed=0, scans=scans)
    assert one.rule == "most-organs" and one.pairs() == [("0001", 13)]
    assert one.exemplars[0]["organs"] == 8 and len(one.exemplars[0]["classes"]) == 8
    two = select_exemplars(src, ids, "2", seed=0, scans=scans)  # 2 per volume (1 volume)
    assert two.pairs() == [("0001", 12), ("0001", 13)]
    assert [len(select_exemplars(src, ids, p, seed=0, scans=scans).exemplars) for p in ("0.5%", "1%", "3%")] == [1, 1, 1]
    assert one.selection["eligible_slices"] == 30 and all("erased_pixels" in e for e in one.background_pool)  # organs in every slice: fallback pool


def test_demo_sources_select_and_have_a_background_pool():
    brain = open_source("demo-brain")
    train = resolve_split(brain, "train")
    lst = select_exemplars(brain, train, "5", seed=3)
    assert len(lst.exemplars) == 5 and lst.background_pool
    vol = brain.load(lst.background_pool[0]["volume"])
    k = lst.background_pool[0]["slice"]
    assert not vol.label[k].any() and (vol.image[k] > 0.02).mean() >= 0.05
    abd = open_source("demo-abdomen")
    ids = resolve_split(abd, "train")
    lst = select_exemplars(abd, ids, str(2 * len(ids)), seed=0)
    assert sorted({v for v, _ in lst.pairs()}) == ids and all(sum(v == i for v, _ in lst.pairs()) == 2 for i in ids)
    assert lst.exemplars[0]["sha256"]["image_file"] != lst.exemplars[0]["sha256"]["label_file"]


def test_list_file_round_trip_and_schema(tmp_path, brats):
    src, scans = brats
    lst = select_exemplars(src, src.case_ids(), "1%", seed=5, scans=scans, split="all")
    out = lst.to_json(tmp_path / "list.json")
    data = json.loads(out.read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["dataset"] == src.describe() and data["split"] == "all" and data["spec"] == "1%" and data["seed"] == 5
    entry = data["exemplars"][0]
    assert set(entry) >= {"volume", "slice", "classes", "sha256"} and len(entry["sha256"]["image_file"]) == 64
    back = ExemplarList.from_json(out, src)
    assert back.pairs() == lst.pairs() and back.background_pairs() == lst.background_pairs()
    back.verify_hashes(src, out)
    with pytest.raises(DataError, match="already exists"):
        lst.to_json(out)
    lst.to_json(out, overwrite=True)
    data["exemplars"][0]["sha256"]["label_file"] = "0" * 64
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"tampered.json: .*_seg.nii.gz changed since the list was made .*exemplars\[0\]"):
        ExemplarList.from_json(tampered, src).verify_hashes(src, tampered)


def test_published_lists_are_valid_and_reusable(brats_root, synapse_root):
    folder = Path(__file__).resolve().parents[3] / "data_manifests" / "exemplars"
    files = sorted(folder.glob("*.json"))
    assert {f.name for f in files} >= {"brats2018_sample_150.json", "synapse_sample_1.json"}
    for f in files:
        jsonschema.validate(json.loads(f.read_text()), SCHEMA)
    brats = ExemplarList.from_json(folder / "brats2018_sample_150.json", open_source("brats", brats_root))
    assert len(brats.exemplars) == 150 and len(brats.background_pool) == 185
    brats.verify_hashes(open_source("brats", brats_root))
    syn = ExemplarList.from_json(folder / "synapse_sample_1.json", open_source("synapse", synapse_root))
    assert syn.pairs() == [("0001", 13)]


def test_bad_lists_name_the_file_and_entry(tmp_path, synapse_root):
    src = open_source("synapse", synapse_root)
    cases = {
        "unknown.json": ({"exemplars": [{"volume": "0001", "slice": 3}, {"volume": "0099", "slice": 1}]},
                         r"unknown.json: exemplars\[1\] names volume '0099'"),
        "range.json": ({"exemplars": [{"volume": "0001", "slice": 30}]},
                       r"range.json: exemplars\[0\] slice 30 is out of range for 0001 \(30 slices\)"),
        "twice.json": ({"exemplars": [{"volume": "0001", "slice": 3}, {"volume": "0001", "slice": 3}]}, "listed twice"),
        "shape.json": ({"exemplars": [{"volume": "0001"}]}, r"shape.json: exemplars/0: 'slice' is a required property"),
        "empty.json": ({"exemplars": []}, "non-empty 'exemplars'"),
    }
    for name, (content, match) in cases.items():
        path = tmp_path / name
        path.write_text(json.dumps(content))
        with pytest.raises(DataError, match=match):
            ExemplarList.from_json(path, src)
    with pytest.raises(DataError, match="made for dataset 'synapse', not 'demo-abdomen'"):
        ExemplarList.from_json(Path(__file__).resolve().parents[3] / "data_manifests/exemplars/synapse_sample_1.json",
                               open_source("demo-abdomen"))
    with pytest.raises(DataError, match="exemplar list not found"):
        ExemplarList.from_json(tmp_path / "nope.json", src)


def test_hand_written_list_is_completed(tmp_path, synapse_root):
    src = open_source("synapse", synapse_root)
    path = tmp_path / "clinician.json"
    path.write_text(json.dumps([{"volume": "0001", "slice": 10}, {"volume": "0001", "slice": 20}]))
    lst = ExemplarList.from_json(path, src).complete(src)
    assert lst.rule == "user" and lst.dataset == src.describe()
    assert lst.exemplars[0]["classes"]["liver"] > 0 and len(lst.exemplars[1]["sha256"]) == 2
    jsonschema.validate(lst.to_dict(), SCHEMA)
    empty_slice = tmp_path / "empty_slice.json"
    brain = open_source("demo-brain")
    empty_slice.write_text(json.dumps([{"volume": "brain_00", "slice": 0}]))
    with pytest.raises(DataError, match=r"slice 0\) has 0 foreground pixels"):
        ExemplarList.from_json(empty_slice, brain).complete(brain)
