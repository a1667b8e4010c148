"""Nothing lost, nothing mixed (issue 13): crashes, concurrent use and hostile input.

Each test replays one case of docs/reliability.md: the command must end in a one-line error
(exit 2, no traceback, nothing half-written) or in correct output. Signal and kill tests run the
real CLIs as subprocesses; the rest run them in-process (faster).
"""
from __future__ import annotations

import gzip
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from clikit import run_in_process
from shared.errors import DataError
from waitkit import HANG, finished_shards, held_build, log_lines, wait_until

PROJECT = Path(__file__).resolve().parents[1]
DEMO = ["--dataset", "demo-brain", "--split", "test", "--exemplars", "6", "--shard-size", "8", "--seed", "1",
        "--no-progress"]
FIT = ["--model", "tiny", "--img-size", "32", "--batch-size", "2", "--num-workers", "0", "--threads", "1",
       "--no-progress", "--log-every", "1"]


# ------------------------------------------------------------------------------------------ helpers
def cli(group: str, *args) -> tuple[int, str]:
    """Run `synth` or `train` in-process as the console script does: (exit code, stdout + stderr)."""
    if group == "synth":
        from synth.cli import cli as grp
    else:
        from train.cli import cli as grp
    return run_in_process(grp, *args)


def clean_error(code: int, text: str, *needles: str) -> str:
    """Exit 2, one `error:` line, no traceback, and every needle in it."""
    assert code == 2, text
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    for needle in needles:
        assert needle in lines[0], text
    return lines[0]


def _as_from_a_terminal() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python then keeps ignoring Ctrl-C;
    # a suite launched with `&` would see builds that never stop. Give the child a terminal's default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


_POPEN = dict(cwd=PROJECT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
              preexec_fn=_as_from_a_terminal)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "1"}


def popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *map(str, args)], env=_env(), **_POPEN)


# Waits are on events (logged steps, finished shards), bounded only against a hang (tests/waitkit.py).
wait_for = wait_until


def metric_lines(run: Path) -> int:
    return log_lines(run / "metrics.jsonl")


def build_demo(out: Path, *extra: str, samples: int = 16) -> Path:
    code, text = cli("synth", "build", *DEMO, "--num-samples", samples, "--workers", "1", *extra, "--out", out)
    assert code == 0, text
    return out


def nifti_source(root: Path, cases: int = 2, shape=(24, 20, 6)) -> Path:
    """A tiny `nifti` source: images/ + labels/ + source.json, a lesion in slices 1..3."""
    import nibabel as nib

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for c in range(cases):
        rng = np.random.default_rng(c)
        label = np.zeros(shape, np.uint8)
        label[5:12, 6:13, 1:4] = 1
        image = rng.normal(100, 20, shape).astype(np.float32) + 80 * label
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "images" / f"case{c}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labels" / f"case{c}.nii.gz"))
    (root / "source.json").write_text(json.dumps({"classes": ["background", "lesion"],
                                                  "intensity": {"kind": "minmax", "per": "slice"}}))
    return root


def lying_nifti(path: Path, shape: tuple[int, ...], payload: int = 500) -> Path:
    """A small .nii.gz whose header claims `shape` (int16) but holds only `payload` bytes."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape(shape)
    hdr.set_data_offset(352)
    with gzip.open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + bytes(payload))
    return path


def read_only_dir() -> Path | None:
    """A folder this process cannot write even as root (a read-only mount), or None."""
    for d in ("/sys", "/proc"):
        try:
            fd, probe = tempfile.mkstemp(dir=d)
        except OSError:
            return Path(d)
        os.close(fd)
        os.unlink(probe)
    return None


@pytest.fixture(scope="module")
def demo_ds(tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory.mktemp("rel") / "ds")


# ------------------------------------------------------------------ 1. training survives crashes
def test_checkpoints_are_periodic_by_default():
    from train.config import resolve_config

    cfg = resolve_config(overrides={"model": "tiny", "steps": 10})
    assert cfg.save_every_steps > 0 and cfg.save_every_minutes > 0


def test_sigterm_saves_and_a_rebuild_under_the_fit_is_refused(tmp_path: Path):
    """Case 1 (SIGTERM) and case 2 (rebuild under a running fit)."""
    ds = build_demo(tmp_path / "ds")
    run = tmp_path / "run"
    proc = popen("train", "fit", "--shards", ds, "--out", run, "--steps", "5000", "--save-every-steps", "0",
                 "--save-every-minutes", "0", *FIT)
    try:
        wait_for(lambda: metric_lines(run) >= 3, proc, "three logged steps")
        # the fit holds the dataset: --overwrite is refused, the dataset is untouched
        before = (ds / "dataset.json").read_bytes()
        clean_error(*cli("synth", "build", *DEMO, "--num-samples", "16", "--seed", "2", "--overwrite",
                         "--out", ds), "being read")
        assert (ds / "dataset.json").read_bytes() == before
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted by SIGTERM: saved step" in out + err
    from train.checkpointing import last_checkpoint, load_checkpoint

    step = load_checkpoint(last_checkpoint(run))["step"]
    assert step >= 3
    code, text = cli("train", "fit", "--shards", ds, "--out", run, "--resume", "--steps", step + 2,
                     "--no-progress", "--threads", "1")
    assert code == 0 and f"steps {step}->{step + 2}" in text, text
    build_demo(ds, "--seed", "2", "--overwrite")  # no reader any more: the rebuild goes ahead


def test_kill_9_loses_at_most_the_save_interval(tmp_path: Path, demo_ds: Path):
    run = tmp_path / "run"
    # saves by step count only (no save every N minutes: what is saved must not depend on speed)
    proc = popen("train", "fit", "--shards", demo_ds, "--out", run, "--steps", "5000",
                 "--save-every-steps", "4", "--save-every-minutes", "0", *FIT)
    try:
        wait_for(lambda: metric_lines(run) >= 10, proc, "ten logged steps")
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    from train.checkpointing import last_checkpoint, load_checkpoint

    saved = load_checkpoint(last_checkpoint(run))["step"]
    assert saved >= 8 and saved % 4 == 0
    clean_error(*cli("train", "fit", "--shards", demo_ds, "--out", run, "--steps", "3", *FIT), "--resume")
    code, text = cli("train", "fit", "--shards", demo_ds, "--out", run, "--resume", "--steps", saved + 2,
                     "--no-progress")
    assert code == 0 and f"steps {saved}->{saved + 2}" in text, text


def test_run_folder_without_checkpoint_says_what_to_do(tmp_path: Path, demo_ds: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')  # killed mid-line
    clean_error(*cli("train", "fit", "--shards", demo_ds, "--out", run, "--resume"),
                "stopped before its first checkpoint", "--overwrite")
    clean_error(*cli("train", "fit", "--shards", demo_ds, "--out", run, "--steps", "2", *FIT),
                "stopped before its first checkpoint", "--overwrite")
    code, text = cli("train", "fit", "--shards", demo_ds, "--out", run, "--steps", "2", "--overwrite", *FIT)
    assert code == 0, text


def test_an_error_mid_run_keeps_the_steps_done(tmp_path: Path, demo_ds: Path, monkeypatch):
    """A corrupt sample / out of memory / divergence at step 4: steps 1-3 are saved for --resume."""
    import train.fit_steps
    from train.checkpointing import last_checkpoint, load_checkpoint
    from train.config import resolve_config
    from train.fit import fit

    real = train.fit_steps.ce_dice_loss      # the loss the training step calls
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise DataError("shard-00001.zarr: cannot read shard data (crc32c mismatch)")
        return real(*args, **kwargs)

    monkeypatch.setattr(train.fit_steps, "ce_dice_loss", failing)
    cfg = resolve_config(overrides={"model": "tiny", "img_size": 32, "batch_size": 2, "num_workers": 0,
                                    "num_threads": 1, "steps": 10, "save_every_steps": 0,
                                    "save_every_minutes": 0})
    messages = []
    with pytest.raises(DataError, match="crc32c"):
        fit(cfg, demo_ds, tmp_path / "run", progress=False, echo=messages.append)
    assert load_checkpoint(last_checkpoint(tmp_path / "run"))["step"] == 3
    assert any("saved step 3" in m and "--resume" in m for m in messages)
    monkeypatch.setattr(train.fit_steps, "ce_dice_loss", real)
    result = fit(cfg, demo_ds, tmp_path / "run", resume=True, progress=False, echo=lambda m: None)
    assert (result.start_step, result.steps) == (3, 10)


def test_checkpoint_errors_are_whole_sentences(tmp_path: Path):
    import torch

    from train.checkpointing import load_checkpoint

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "x", "f": print}, unsafe)  # a global weights_only refuses: a long torch message
    with pytest.raises(DataError) as info:
        load_checkpoint(unsafe)
    msg = str(info.value)
    assert msg.endswith("the file is damaged or not a `train fit` checkpoint")
    assert "Weights only load failed" in msg and "PyTorch 2.6" not in msg and len(msg) < 400
    cut = tmp_path / "cut.pt"
    torch.save({"w": torch.zeros(1000)}, cut)
    cut.write_bytes(cut.read_bytes()[:300])
    with pytest.raises(DataError, match=r"cut.pt: cannot read checkpoint .*the file is damaged"):
        load_checkpoint(cut)


# ------------------------------------------------------------- 2. a dataset cannot change under a reader
def test_reader_lock_refuses_overwrite_and_generation_check_catches_unlocked_readers(tmp_path: Path):
    from shared import open_dataset

    ds_dir = build_demo(tmp_path / "ds")
    info = json.loads((ds_dir / "dataset.json").read_text())
    assert len(info["build_id"]) == 16
    reader = open_dataset(ds_dir)
    clean_error(*cli("synth", "build", *DEMO, "--num-samples", "16", "--seed", "2", "--overwrite",
                     "--out", ds_dir), "being read")
    assert reader[3]["image"].size  # still the same dataset
    reader.close()
    # a reader without the lock (e.g. a read-only copy) still never mixes two builds
    unlocked = open_dataset(ds_dir, lock=False)
    first = unlocked[0]["image"]
    build_demo(ds_dir, "--seed", "2", "--overwrite")
    with pytest.raises(DataError, match="changed while it was being read"):
        unlocked[0]
    with pytest.raises(DataError, match="changed while it was being read"):
        unlocked.read_shard(1)
    fresh = open_dataset(ds_dir)
    assert fresh.generation != unlocked.generation and not np.array_equal(fresh[0]["image"], first)
    fresh.close()


def test_identical_rebuilds_keep_their_build_id(tmp_path: Path, demo_ds: Path):
    again = build_demo(tmp_path / "again")
    assert (again / "dataset.json").read_bytes() == (demo_ds / "dataset.json").read_bytes()


# ------------------------------------------------------------------ 3. exemplar lists match their files
def test_exemplar_list_hashes_are_verified(tmp_path: Path):
    import nibabel as nib

    src = nifti_source(tmp_path / "src")
    lst = tmp_path / "list.json"
    code, text = cli("synth", "select", "--dataset", "nifti", "--root", src, "--split", "all", "--exemplars", "2",
                     "--no-progress", "--out", lst)
    assert code == 0, text
    base = ["build", "--dataset", "nifti", "--root", src, "--split", "all", "--exemplar-list", lst,
            "--num-samples", "8", "--shard-size", "4", "--workers", "1", "--no-progress"]
    assert cli("synth", *base, "--out", tmp_path / "ok")[0] == 0
    # the labels change on disk after the list was made
    case = json.loads(lst.read_text())["exemplars"][0]["volume"]
    label_file = src / "labels" / f"{case}.nii.gz"
    label = np.asanyarray(nib.load(str(label_file)).dataobj).copy()
    label[5:12, 6:13, 1:4] = 0
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(label_file))
    line = clean_error(*cli("synth", *base, "--out", tmp_path / "changed"), f"labels/{case}.nii.gz",
                       "changed since the list was made", "--no-verify-hashes")
    assert not (tmp_path / "changed").exists(), line
    code, text = cli("synth", *base, "--no-verify-hashes", "--out", tmp_path / "forced")
    assert "--no-verify-hashes" in text  # said, not silent (it may still fail on the changed data)


# ----------------------------------------------------------------- 4, 7. NIfTI headers that lie, 2-D scans
def test_nifti_header_sizes_are_checked_before_reading(tmp_path: Path, monkeypatch):
    from shared.sources import read_nifti
    from shared.sources.io import nifti_shape, read_nifti_array

    big = lying_nifti(tmp_path / "big.nii.gz", (1200, 1200, 1200))
    assert big.stat().st_size < 2000
    for reader in (read_nifti, read_nifti_array, nifti_shape):  # the one-piece reader of streaming scans too
        with pytest.raises(DataError, match=r"big.nii.gz: .*\(1200, 1200, 1200\)"):
            reader(big)
    huge = lying_nifti(tmp_path / "huge.nii.gz", (30000, 30000, 30000))
    with pytest.raises(DataError, match=r"huge.nii.gz: .*more than the limit .*EXEMPLAR_SAM_MAX_VOXELS"):
        nifti_shape(huge)
    small = lying_nifti(tmp_path / "small.nii.gz", (200, 200, 200))  # under the limit, over the file
    with pytest.raises(DataError, match="truncated NIfTI or wrong header"):
        read_nifti(small)
    src = nifti_source(tmp_path / "src")
    monkeypatch.setenv("EXEMPLAR_SAM_MAX_VOXELS", "100")
    for reader in (read_nifti, read_nifti_array):
        with pytest.raises(DataError, match="more than the limit 100"):
            reader(src / "images" / "case0.nii.gz")


def test_build_pack_on_lying_and_2d_nifti_end_cleanly(tmp_path: Path):
    import nibabel as nib

    src = nifti_source(tmp_path / "src")
    shutil.copy(lying_nifti(tmp_path / "x.nii.gz", (1200, 1200, 1200)), src / "images" / "case1.nii.gz")
    clean_error(*cli("synth", "pack", "--dataset", "nifti", "--root", src, "--split", "all", "--no-progress",
                     "--out", tmp_path / "p"), "case1.nii.gz", "1200")
    clean_error(*cli("synth", "build", "--dataset", "nifti", "--root", src, "--split", "all", "--exemplars", "1",
                     "--no-progress", "--out", tmp_path / "b"), "case1.nii.gz")
    flat = nifti_source(tmp_path / "flat", cases=1)
    for kind in ("images", "labels"):
        nib.save(nib.Nifti1Image(np.zeros((24, 20), np.float32), np.eye(4)), str(flat / kind / "case0.nii.gz"))
    clean_error(*cli("synth", "pack", "--dataset", "nifti", "--root", flat, "--split", "all", "--no-progress",
                     "--out", tmp_path / "p2"), "case0.nii.gz", "expected a 3D volume")
    assert not (tmp_path / "p").exists() and not (tmp_path / "p2").exists()


# ---------------------------------------------------------------------------- 5. --out inside the source
def test_out_inside_the_source_is_refused(tmp_path: Path):
    src = nifti_source(tmp_path / "src")
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    for cmd in (["pack"], ["build", "--exemplars", "1"]):
        clean_error(*cli("synth", *cmd, "--dataset", "nifti", "--root", src, "--split", "all", "--no-progress",
                         "--out", src / "images" / "ds"), "inside the source folder")
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before


# ---------------------------------------------------------------------------- 6. hostile exemplar lists
@pytest.mark.parametrize("content, needle", [
    ({"exemplars": [{"volume": "brain_06", "slice": 20}], "cases": [1, None]}, "cases/"),
    ({"exemplars": [{"volume": "brain_06", "slice": 20}], "dataset": "brats"}, "dataset: 'brats' is not of type"),
    ({"exemplars": [{"volume": "brain_06", "slice": 20}], "selection": 5}, "selection: 5 is not of type"),
    ({"exemplars": [{"volume": "brain_06", "slice": 20}], "seed": "abc"}, "seed: 'abc' is not of type"),
    ({"exemplars": [{"volume": "brain_06", "slice": "20"}]}, "exemplars/0/slice"),
    ({"exemplars": [{"volume": "brain_06", "slice": 20}],
      "background_pool": [{"volume": "brain_06", "slice": 3}] * 1_000_000}, "listed twice (1,000,000 entries"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_hostile_exemplar_lists_give_one_line_errors(tmp_path: Path, content, needle):
    lst = tmp_path / "list.json"
    lst.write_text(content if isinstance(content, str) else json.dumps(content))
    clean_error(*cli("synth", "build", "--dataset", "demo-brain", "--exemplar-list", lst, "--num-samples", "8",
                     "--no-progress", "--out", tmp_path / "ds"), "list.json", needle)
    assert not (tmp_path / "ds").exists()


# ---------------------------------------------------------------------------- 8. truncated samples.jsonl
def test_audit_detects_a_truncated_manifest(tmp_path: Path, demo_ds: Path):
    ds = tmp_path / "ds"
    shutil.copytree(demo_ds, ds)
    info = json.loads((ds / "dataset.json").read_text())
    ref = f"{info['exemplars'][0]['volume']}:{info['exemplars'][0]['slice']}"
    lines = (ds / "samples.jsonl").read_text().splitlines(keepends=True)
    for kept in (lines[:5], []):
        (ds / "samples.jsonl").write_text("".join(kept))
        clean_error(*cli("synth", "info", ds), "samples.jsonl", f"{len(kept)} records", "16 samples")
        clean_error(*cli("synth", "trace", ds, "--exemplar", ref), "samples.jsonl", f"{len(kept)} records")


# ------------------------------------------------------------------------------ 9. atomic lock takeover
def _contend(folder: str, barrier, holders, overlaps, wins, rounds: int) -> None:
    from synth.building.outdir import BuildLock

    for _ in range(rounds):
        barrier.wait()  # the barrier's action has just planted a stale lock of a dead process
        try:
            lock = BuildLock(Path(folder), log=lambda m: None).acquire()
        except DataError:
            lock = None
        if lock is not None:
            with holders.get_lock():
                holders.value += 1
                if holders.value > 1:
                    overlaps.value += 1
                wins.value += 1
            time.sleep(0.02)
            with holders.get_lock():
                holders.value -= 1
            lock.release()
        barrier.wait()


def _plant_stale_lock(folder: str) -> None:
    (Path(folder) / ".lock").write_text(json.dumps({"pid": 2 ** 22 + 17, "host": os.uname().nodename}))


def test_stale_lock_takeover_is_atomic(tmp_path: Path):
    import functools

    ctx = mp.get_context("fork")
    rounds, procs = 150, 8
    barrier = ctx.Barrier(procs, action=functools.partial(_plant_stale_lock, str(tmp_path)))
    holders, overlaps, wins = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Value("i", 0)
    workers = [ctx.Process(target=_contend, args=(str(tmp_path), barrier, holders, overlaps, wins, rounds))
               for _ in range(procs)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + HANG  # a bound against a hang (a broken barrier), not a speed
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    hung = [w for w in workers if w.is_alive()]
    for w in hung:
        w.kill()
        w.join()
    assert not hung, f"{len(hung)} of {procs} lock contenders still running after {HANG:.0f} s"
    assert all(w.exitcode == 0 for w in workers)
    assert overlaps.value == 0  # never two holders (the O_EXCL + unlink takeover had some in 150 rounds)
    assert wins.value >= rounds  # every round someone took the stale lock


# ------------------------------------------------------------------------------------ 10. the smaller ones
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_parallel_build_is_quiet_and_resumable(tmp_path: Path, how: str):
    out = tmp_path / "ds"
    args = ["synth", "build", *DEMO, "--num-samples", "48", "--workers", "2", "--out", out]
    # held mid-shard from shard 2 on (tests/waitkit.py): still running when signalled, on any machine
    proc = held_build(args[1:], 2, env=_env(), **_POPEN)
    try:
        wait_for(lambda: finished_shards(out) >= 2, proc, "two finished shards")
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # the terminal sends it to the whole process group
        else:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "--resume" in err and not (out / "dataset.json").exists()
    code, text = cli(*args[:-2], "--resume", "--workers", "1", "--out", out)
    assert code == 0 and "keeping" in text, text
    code, text = cli(*args[:-2], "--resume", "--out", out)
    assert code == 0 and "already complete (48 samples), nothing to do" in text, text
    assert "interrupted build" not in text


def test_unwritable_out_is_exit_2_before_any_work(tmp_path: Path, demo_ds: Path):
    from evalkit import make_tiny_run
    from shared.sources import open_source

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    places = [blocker / "sub"] + ([ro / "exemplar-sam-test"] if (ro := read_only_dir()) else [])
    run = make_tiny_run(tmp_path / "run", open_source("demo-brain"), img_size=32)
    packed = tmp_path / "packed"
    assert cli("synth", "pack", "--dataset", "demo-brain", "--split", "test", "--no-progress", "--out", packed)[0] == 0
    broken = nifti_source(tmp_path / "src")
    (broken / "images" / "case1.nii.gz").write_bytes(b"not a nifti")  # scanning would fail on it
    for place in places:
        clean_error(*cli("train", "fit", "--shards", demo_ds, "--out", place, "--steps", "2", *FIT), str(place))
        clean_error(*cli("train", "eval", "--run", run, "--shards", packed, "--out", place / "ev"), "--out")
        line = clean_error(*cli("synth", "select", "--dataset", "nifti", "--root", broken, "--split", "all",
                                "--exemplars", "1", "--no-progress", "--out", place.parent / "list.json"))
        assert "case1" not in line  # refused before scanning the source
