"""TransUNet's preprocessed Synapse format (also used by SAMed and successors).

``train_npz/caseNNNN_sliceNNN.npz`` (keys ``image``, ``label``; one axial slice each) and
``test_vol_h5/caseNNNN.npy.h5`` (datasets ``image``, ``label``, shape (z, y, x)). Images are
already HU-clipped to [-125, 275] and scaled to [0, 1]; labels are the 8-organ indices. Slices are
grouped back into volumes by case (npz slices when a case has them, else its h5 volume).
The format keeps no geometry: spacing is reported as 1 mm and the affine as identity
(``meta["geometry_known"] = False``).
"""
from __future__ import annotations

import re
import zipfile
from functools import cached_property
from pathlib import Path

import numpy as np

from shared.classmaps import SYNAPSE8_MAP
from shared.errors import DataError
from shared.intensity import CT_ABDOMEN
from shared.sources.base import Source, check_shapes, layout_hint, require_dir
from shared.volume import Volume

_NPZ = re.compile(r"^(case\d+)_slice(\d+)\.npz$")
_H5 = re.compile(r"^(case\d+)\.npy\.h5$")


class TransUNetSource(Source):
    name = "transunet"
    task = "multi"
    classmap = SYNAPSE8_MAP

    def __init__(self, root: str | Path):
        super().__init__(root, {})
        # The data was windowed upstream with this preset; recorded so `train predict` applies the
        # same window to a raw CT.
        self.intensity = dict(CT_ABDOMEN)
        require_dir(self.root, "TransUNet data root")
        self._npz, self._h5
        if not self._npz and not self._h5:
            raise DataError(f"{self.root}: no train_npz/caseNNNN_sliceNNN.npz or test_vol_h5/caseNNNN.npy.h5 files"
                            + (layout_hint(self.root, "train_npz") or layout_hint(self.root, "test_vol_h5")))

    @cached_property
    def _npz(self) -> dict[str, dict[int, Path]]:
        cases: dict[str, dict[int, Path]] = {}
        folder = self.root / "train_npz"
        if folder.is_dir():
            for path in folder.iterdir():
                match = _NPZ.match(path.name)
                if match:
                    cases.setdefault(match.group(1), {})[int(match.group(2))] = path
        for case, slices in cases.items():
            missing = sorted(set(range(max(slices) + 1)) - set(slices))
            if missing:
                raise DataError(f"{folder}: {case} is missing slice file(s) "
                                f"{', '.join(f'{case}_slice{k:03d}.npz' for k in missing[:5])}"
                                f"{' ...' if len(missing) > 5 else ''}")
        return cases

    @cached_property
    def _h5(self) -> dict[str, Path]:
        folder = self.root / "test_vol_h5"
        if not folder.is_dir():
            return {}
        return {m.group(1): p for p in folder.iterdir() if (m := _H5.match(p.name))}

    def case_ids(self) -> list[str]:
        return sorted(set(self._npz) | set(self._h5))

    def files(self, case_id: str) -> tuple[Path, ...]:
        self.check_case(case_id)
        if case_id in self._npz:
            slices = self._npz[case_id]
            return tuple(slices[k] for k in sorted(slices))
        return (self._h5[case_id],)

    def slice_files(self, case_id: str, slice_index: int) -> dict[str, Path | None]:
        self.check_case(case_id)
        if case_id in self._npz:
            path = self._npz[case_id].get(slice_index)
            return {"image_file": path, "label_file": path}
        return {"image_file": self._h5[case_id], "label_file": self._h5[case_id]}

    def num_slices(self, case_id: str) -> int:
        self.check_case(case_id)
        if case_id in self._npz:
            return len(self._npz[case_id])
        import h5py

        with self._open_h5(self._h5[case_id]) as f:
            return int(f["image"].shape[0])

    def load(self, case_id: str) -> Volume:
        self.check_case(case_id)
        return self.load_npz(case_id) if case_id in self._npz else self.load_h5(case_id)

    def load_npz(self, case_id: str) -> Volume:
        """The case assembled from its ``train_npz`` slice files."""
        if case_id not in self._npz:
            raise DataError(f"{self.root / 'train_npz'}: no slice files for {case_id}")
        paths = [self._npz[case_id][k] for k in sorted(self._npz[case_id])]
        images, labels = [], []
        for path in paths:
            image, label = _read_npz(path)
            check_shapes(image.shape, label.shape, path, path)
            if images and image.shape != images[0].shape:
                raise DataError(f"{path}: slice shape {image.shape} differs from {paths[0].name} {images[0].shape}")
            images.append(image)
            labels.append(label)
        return self._finish(case_id, np.stack(images), np.stack(labels), tuple(paths), "npz")

    def load_h5(self, case_id: str) -> Volume:
        """The case read from its ``test_vol_h5`` volume file."""
        if case_id not in self._h5:
            raise DataError(f"{self.root / 'test_vol_h5'}: no {case_id}.npy.h5")
        path = self._h5[case_id]
        with self._open_h5(path) as f:
            try:
                image, label = f["image"][()], f["label"][()]
            except KeyError:
                raise DataError(f"{path}: expected datasets 'image' and 'label', found {sorted(f.keys())}") from None
            except OSError as exc:
                raise DataError(f"{path}: unreadable HDF5 data ({' '.join(str(exc).split())})") from None
        if image.ndim != 3:
            raise DataError(f"{path}: expected (z, y, x) arrays, got image shape {image.shape}")
        check_shapes(image.shape, label.shape, path, path)
        return self._finish(case_id, image, label, (path,), "h5")

    def _finish(self, case_id: str, image: np.ndarray, label: np.ndarray, files: tuple[Path, ...],
                fmt: str) -> Volume:
        first = files[0]
        image = np.asarray(image, dtype=np.float32)
        if not np.isfinite(image).all():
            raise DataError(f"{first}: image contains NaN or Inf values ({case_id})")
        lo, hi = float(image.min()), float(image.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"{first}: image values [{lo:g}, {hi:g}] are outside [0, 1]; "
                            "this is not TransUNet-preprocessed data")
        label = self.classmap.apply(label, str(first))
        meta = {"format": fmt, "geometry_known": False}
        return self._volume(case_id, np.ascontiguousarray(image), np.ascontiguousarray(label),
                            (1.0, 1.0, 1.0), np.eye(4), files, meta)

    @staticmethod
    def _open_h5(path: Path):
        import h5py

        try:
            return h5py.File(path, "r")
        except OSError as exc:
            raise DataError(f"{path}: unreadable HDF5 file ({' '.join(str(exc).split())})") from None


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as data:
            if "image" not in data or "label" not in data:
                raise DataError(f"{path}: expected keys 'image' and 'label', found {sorted(data.files)}")
            return data["image"], data["label"]
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or truncated npz ({' '.join(str(exc).split())})") from None
