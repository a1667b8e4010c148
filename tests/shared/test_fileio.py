"""shared.fileio: atomic writes leave the old file or the whole new one; JSON reads fail in one line."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shared.errors import ConfigError, DataError
from shared.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, atomic_writer, read_json


def test_atomic_writes_replace_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"b": 1, "a": [1, 2]}
    assert target.read_text().endswith("\n")
    atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(target.parent)) == ["a.json"]  # no temporary file left


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as fh:
            fh.write(b"half")
            raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_read_json_errors_are_one_line_and_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"x": 1}')
    assert read_json(good, expect=dict) == {"x": 1}
    missing = tmp_path / "missing.json"
    with pytest.raises(DataError, match=r"missing\.json: split file not found$"):
        read_json(missing, what="split file")
    broken = tmp_path / "broken.json"
    broken.write_text('{"x": \n')
    with pytest.raises(ConfigError) as info:
        read_json(broken, what="config file", error=ConfigError)
    assert "broken.json: not valid JSON" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="expected a JSON object"):
        read_json(_list_file(tmp_path), expect=dict)
    with pytest.raises(DataError, match="is a folder"):
        read_json(tmp_path)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"deep\.json: prompt file JSON nested too deeply$"):
        read_json(deep, what="prompt file")


def _list_file(tmp_path: Path) -> Path:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    return path
