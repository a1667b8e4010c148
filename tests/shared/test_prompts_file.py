"""shared/prompts_file.py: prompt files in RAS mm or voxels -> slice-first prompts, bad files one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


from shared.errors import DataError
from shared.prompts_file import read_prompt_file

# the Synapse sample's affine: 3 mm voxels, RAS axes
AFFINE = np.array([[3.0, 0, 0, -177.956], [0, 3.0, 0, 11.319], [0, 0, 3.0, 94.302], [0, 0, 0, 1]])
SHAPE = (122, 101, 30)


def _file(tmp_path: Path, data, name="prompts.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _world(ijk) -> list[float]:
    return list((AFFINE @ [*ijk, 1.0])[:3])


def test_voxel_and_ras_prompts(tmp_path):
    data = {"space": "voxel", "classes": ["spleen", "liver", "aorta"],
            "prompts": [{"class": "liver", "point": [40, 50, 12]},
                        {"class": "spleen", "box": [[90, 30, 7], [70, 60, 7]]},
                        {"class": "liver", "point": [41.4, 49.6, 3]}]}
    pf = read_prompt_file(_file(tmp_path, data), AFFINE, SHAPE)
    assert pf.classes == ("spleen", "liver", "aorta") and pf.space == "voxel"
    assert pf.labels_json() == {"1": "spleen", "2": "liver", "3": "aorta"} and pf.unprompted == ("aorta",)
    p0, p1, p2 = pf.prompts
    assert (p0.class_index, p0.kind, p0.slice_index, p0.point, p0.box) == (2, "point", 12, (40, 50), None)
    assert (p1.class_index, p1.kind, p1.slice_index, p1.box) == (1, "box", 7, (70, 30, 90, 60))
    assert p2.point == (41, 50) and p2.slice_index == 3 and p0.voxel() == (40, 50, 12) and p1.voxel() == (80, 45, 7)
    assert list(pf.by_slice()) == [3, 7, 12] and [p.number for p in pf.for_class("liver")] == [0, 2]
    # the same prompts in RAS mm (what a viewer's markups give) land on the same voxels
    ras = {"space": "RAS", "classes": data["classes"],
           "prompts": [{"class": "liver", "point": _world([40, 50, 12])},
                       {"class": "spleen", "box": [_world([90, 30, 7]), _world([70, 60, 7])]},
                       {"class": "liver", "point": _world([41.4, 49.6, 3])}]}
    again = read_prompt_file(_file(tmp_path, ras, "ras.json"), AFFINE, SHAPE)
    assert [(p.slice_index, p.point, p.box) for p in again.prompts] == [(p.slice_index, p.point, p.box) for p in pf.prompts]


def test_ras_on_a_dicom_series_affine(tmp_path):
    """An LPS-written series read back: RAS mm of a voxel map back to that voxel."""
    from dicomkit import write_series
    from shared.sources.dicom import read_dicom_series

    affine = np.array([[0.0, -0.9, 0, 30.0], [1.1, 0.0, 0, -12.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
    write_series(tmp_path / "s", np.zeros((7, 9, 4), np.int16), affine)
    raw, read_affine, _ = read_dicom_series(tmp_path / "s")
    world = list((affine @ [5, 2, 3, 1.0])[:3])
    pf = read_prompt_file(_file(tmp_path, {"space": "RAS", "classes": ["x"], "prompts": [{"class": "x", "point": world}]}),
                          read_affine, raw.shape)
    assert pf.prompts[0].point == (5, 2) and pf.prompts[0].slice_index == 3


@pytest.mark.parametrize("data,match", [
    ("{not json", "not valid JSON"),
    ([1, 2], "expected a JSON object"),
    ({"space": "LPS", "classes": ["a"], "prompts": [{"class": "a", "point": [1, 2, 3]}]}, "at 'space'"),
    ({"space": "voxel", "classes": [], "prompts": [{"class": "a", "point": [1, 2, 3]}]}, "at 'classes'"),
    ({"space": "voxel", "classes": ["a", "a"], "prompts": [{"class": "a", "point": [1, 2, 3]}]}, "at 'classes'"),
    ({"space": "voxel", "classes": ["background"], "prompts": [{"class": "background", "point": [1, 2, 3]}]}, "at 'classes/0'"),
    ({"space": "voxel", "classes": ["a"], "prompts": []}, "at 'prompts'"),
    ({"space": "voxel", "classes": ["a"]}, "'prompts' is a required property"),
    ({"space": "voxel", "classes": ["a"], "prompts": [{"class": "a", "point": [1, 2]}]}, "at 'prompts/0"),
    ({"space": "voxel", "classes": ["a"], "prompts": [{"class": "a", "point": [1, 2, 3], "box": [[1, 2, 3], [4, 5, 3]]}]},
     "prompt 0: needs exactly one of"),
    ({"space": "voxel", "classes": ["a"], "prompts": [{"point": [1, 2, 3]}]}, "prompt 0: missing \"class\""),
    ({"space": "voxel", "classes": ["a"], "prompts": ["a"]}, "prompt 0: expected an object"),
    ({"space": "voxel", "classes": ["a"], "prompts": [{"class": "b", "point": [1, 2, 3]}]}, "prompt 0: unknown class 'b'"),
    ({"space": "voxel", "classes": ["a"], "prompts": [{"class": "a", "point": [1, 2, 3]}, {"class": "a", "point": [122, 2, 3]}]},
     "prompt 1: point \\[122, 2, 3\\] is outside the volume \\(voxel index space 122 x 101 x 30"),
    ({"space": "voxel", "classes": ["a"], "prompts": [{"class": "a", "point": [1, 2, -0.6]}]}, "outside the volume"),
    ({"space": "RAS", "classes": ["a"], "prompts": [{"class": "a", "point": [0, 0, 0]}]}, r"\(voxel \[59, -4, -31\]\) is outside"),
    ({"space": "voxel", "classes": ["a"], "prompts": [{"class": "a", "box": [[1, 2, 3], [4, 5, 4]]}]},
     "box corners lie in slices 3 and 4"),
    ({"space": "voxel", "classes": ["a"], "prompts": [{"class": "a", "box": [[1, 2, 3], [400, 5, 3]]}]},
     "box corner 1 .* is outside the volume"),
    ({"space": "voxel", "classes": ["a"], "prompts": [{"class": "a", "point": [1, 2, 3]}], "colour": 1},
     "Additional properties"),
])
def test_bad_prompt_files(tmp_path, data, match):
    path = _file(tmp_path, data)
    with pytest.raises(DataError, match=match) as exc:
        read_prompt_file(path, AFFINE, SHAPE)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_missing_file_and_model_classes(tmp_path):
    with pytest.raises(DataError, match="nowhere.json: prompt file not found"):
        read_prompt_file(tmp_path / "nowhere.json", AFFINE, SHAPE)
    path = _file(tmp_path, {"space": "voxel", "classes": ["spleen", "kidney"],
                            "prompts": [{"class": "spleen", "point": [1, 2, 3]}]})
    with pytest.raises(DataError, match="class 'kidney' not among the model's classes \\(spleen, liver\\)"):
        read_prompt_file(path, AFFINE, SHAPE, known_classes=["background", "spleen", "liver"])
    assert read_prompt_file(path, AFFINE, SHAPE, known_classes=["background", "spleen", "kidney"]).classes == ("spleen", "kidney")
