"""The streaming scan's integer shortcut equals its general float32 path on real BraTS FLAIR."""
from __future__ import annotations

import platform
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shared.errors import DataError
from shared.sources import open_source
from synth.selection import scanning
from synth.selection.scanning import stream_scan


def _scan(source, cases, workers: int = 1):
    def choose(label_scans, _hashes):  # two exemplar slices with foreground per case
        return [(s.volume_id, int(k)) for s in label_scans for k in np.flatnonzero(s.foreground > 0)[:2]]

    return stream_scan(source, cases, workers=workers, progress=False, choose=choose, pool_size=60, pool_seed=3,
                       keep_backgrounds=True)


def _int16_copy(brats_root: Path, dst: Path, cases: list[str]) -> Path:
    """The sample's FLAIR volumes (z-scored float32 there) stored as int16 like most BraTS releases
    (the 30-patient cohort: 26 of 30), labels unchanged."""
    for case in cases:
        src_dir = next(brats_root.glob(f"*/{case}"))
        out = dst / src_dir.parent.name / case
        out.mkdir(parents=True)
        flair = nib.load(src_dir / f"{case}_flair.nii.gz")
        data = np.asarray(flair.dataobj, dtype=np.float64)
        scaled = np.rint((data - data.min()) * 400.0).astype(np.int16)
        nib.save(nib.Nifti1Image(scaled, flair.affine), out / f"{case}_flair.nii.gz")
        (out / f"{case}_seg.nii.gz").write_bytes((src_dir / f"{case}_seg.nii.gz").read_bytes())
    return dst


def test_integer_shortcut_equals_float_chunks(brats_root, tmp_path, monkeypatch):
    cases = open_source("brats", brats_root).case_ids()[:2]
    source = open_source("brats", _int16_copy(brats_root, tmp_path / "brats16", cases))
    assert source.raw_image(cases[0]).dtype == np.int16
    fast = _scan(source, cases)
    assert fast.image_passes == {c: "integers" for c in cases}  # every volume took the shortcut
    monkeypatch.setattr(type(source), "raw_image", lambda self, case: None)  # force the float32 chunks
    slow = _scan(source, cases)
    assert slow.image_passes == {c: "chunks" for c in cases}
    assert fast.chosen == slow.chosen and len(fast.exemplar_slices) == 2 * len(cases)
    for a, b in zip(fast.scans, slow.scans):
        assert a.volume_id == b.volume_id and np.array_equal(a.content, b.content)
        assert np.array_equal(a.counts, b.counts)
    for ref, (img, lab) in slow.exemplar_slices.items():
        fimg, flab = fast.exemplar_slices[ref]
        assert np.array_equal(fimg.view(np.uint32), img.view(np.uint32)) and np.array_equal(flab, lab)
    assert list(fast.backgrounds) == list(slow.backgrounds) and len(slow.backgrounds) == 60
    for ref, enc in slow.backgrounds.items():
        got = fast.backgrounds[ref]
        assert (got.data.dtype, got.scale) == (enc.data.dtype, enc.scale) and np.array_equal(got.data, enc.data)


def test_reusing_freed_memory_changes_no_result(brats_root):
    """The allocator tuning around a scan (glibc: mallopt) only changes where memory comes from."""
    from shared.allocator import reusing_freed_memory

    source = open_source("brats", brats_root)
    cases = source.case_ids()[:1]
    tuned = _scan(source, cases)
    with reusing_freed_memory() as applied:  # nested in the scan's own: still applied
        assert applied == (platform.libc_ver()[0] == "glibc")  # elsewhere a no-op, by design
        again = _scan(source, cases)
    assert [s.content.tolist() for s in tuned.scans] == [s.content.tolist() for s in again.scans]
    assert list(tuned.backgrounds) == list(again.backgrounds)


def test_two_workers_send_cropped_candidates_and_give_the_same_scan(brats_root, tmp_path, monkeypatch):
    """Worker processes pickle each candidate's nonzero box (synth.base.slice_store.CroppedSlice), which the
    bank keeps: the same pool, bytes and order as one worker in this process."""
    cases = open_source("brats", brats_root).case_ids()[:3]
    source = open_source("brats", _int16_copy(brats_root, tmp_path / "brats16", cases))
    one, two = _scan(source, cases, workers=1), _scan(source, cases, workers=2)
    assert one.chosen == two.chosen and list(one.backgrounds) == list(two.backgrounds)
    for ref, enc in one.backgrounds.items():
        got = two.backgrounds[ref]
        assert type(got) is type(enc) and (got.data.dtype, got.data.shape, got.scale) == (enc.data.dtype, enc.data.shape, enc.scale)
        assert np.array_equal(got.data, enc.data)
    for a, b in zip(one.scans, two.scans):
        assert np.array_equal(a.content, b.content) and np.array_equal(a.counts, b.counts)


def test_spawned_scan_workers_get_the_source_once_and_agree(brats_root, tmp_path, monkeypatch):
    """Under spawn (macOS, Windows) the scan state (source, shared threshold) is pickled once per
    worker, not per task; the scan equals the one-process scan."""
    import multiprocessing as mp

    from synth.base import parallel

    cases = open_source("brats", brats_root).case_ids()[:2]
    source = open_source("brats", _int16_copy(brats_root, tmp_path / "brats16", cases))
    one = _scan(source, cases, workers=1)
    monkeypatch.setattr(parallel, "context", lambda: mp.get_context("spawn"))
    two = _scan(source, cases, workers=2)
    assert one.chosen == two.chosen and list(one.backgrounds) == list(two.backgrounds)
    assert all(np.array_equal(one.backgrounds[r].data, two.backgrounds[r].data) for r in one.backgrounds)
    assert all(np.array_equal(a.content, b.content) for a, b in zip(one.scans, two.scans))


def _forced_rereads(monkeypatch, keep: float = 0.2) -> None:
    """A cap far below the pool's threshold from the start: the ``keep`` fraction of the free
    slices' keys (the sample needs more), whatever has been seen."""
    from synth.selection import background_pool

    monkeypatch.setattr(background_pool.PoolCap, "value", property(lambda self: int(self.keys[int(keep * len(self.keys))])))


@pytest.mark.parametrize("workers", [1, 2])
def test_deferred_slices_that_make_the_pool_are_read_again(brats_root, tmp_path, monkeypatch, workers):
    """The cap only decides what is read early: with a cap far below the pool's threshold, most
    pool slices are deferred, their volumes are read again, and the pool is the same."""
    cases = open_source("brats", brats_root).case_ids()[:3]
    source = open_source("brats", _int16_copy(brats_root, tmp_path / "brats16", cases))
    plain = _scan(source, cases, workers=1)
    assert plain.volumes_read_again == 0
    _forced_rereads(monkeypatch)
    tight = _scan(source, cases, workers=workers)
    assert tight.volumes_read_again > 0 and tight.candidates_offered < plain.candidates_offered
    assert list(tight.backgrounds) == list(plain.backgrounds)
    for ref, enc in plain.backgrounds.items():
        got = tight.backgrounds[ref]
        assert (got.data.dtype, got.scale) == (enc.data.dtype, enc.scale) and np.array_equal(got.data, enc.data)


def test_a_deferred_slice_that_no_longer_qualifies_is_a_clear_error(brats_root, tmp_path, monkeypatch):
    cases = open_source("brats", brats_root).case_ids()[:2]
    source = open_source("brats", _int16_copy(brats_root, tmp_path / "brats16", cases))
    _forced_rereads(monkeypatch)
    original = scanning.map_volumes

    def changing_files(fn, tasks, workers, progress, desc, state=None):
        if desc.endswith("(again)"):  # as if the files changed: nothing qualifies any more
            monkeypatch.setattr(scanning, "BACKGROUND_MIN_CONTENT", 2.0)
        yield from original(fn, tasks, workers, progress, desc, state)

    monkeypatch.setattr(scanning, "map_volumes", changing_files)
    with pytest.raises(DataError, match=r"qualified for the background pool on the first read but not on the second"):
        _scan(source, cases)


def test_float_shortcut_equals_float_chunks(brats_root, monkeypatch):
    """The sample's FLAIRs are z-scored float32: the image pass counts content on the raw floats
    (the "floats" image pass) and gives the float32 chunks' numbers, exemplars and pool."""
    source = open_source("brats", brats_root)
    cases = source.case_ids()[:2]
    assert source.raw_image(cases[0]).dtype == np.float32
    fast = _scan(source, cases)
    assert fast.image_passes == {c: "floats" for c in cases}
    monkeypatch.setattr(type(source), "raw_image", lambda self, case: None)  # force the float32 chunks
    slow = _scan(source, cases)
    assert slow.image_passes == {c: "chunks" for c in cases}
    assert fast.chosen == slow.chosen and list(fast.backgrounds) == list(slow.backgrounds)
    for a, b in zip(fast.scans, slow.scans):
        assert np.array_equal(a.content, b.content)
    for ref, (img, lab) in slow.exemplar_slices.items():
        assert np.array_equal(fast.exemplar_slices[ref][0].view(np.uint32), img.view(np.uint32))
    for ref, enc in slow.backgrounds.items():
        got = fast.backgrounds[ref]
        assert (got.data.dtype, got.scale) == (enc.data.dtype, enc.scale) and np.array_equal(got.data, enc.data)
