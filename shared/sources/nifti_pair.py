"""Loading an image/label NIfTI pair into a Volume: shared by the brats, synapse and nifti sources."""
from __future__ import annotations

from pathlib import Path

from shared.sources.base import Source, check_shapes
from shared.sources.io import check_finite, nifti_geometry, nifti_shape, read_nifti, read_nifti_array, to_slice_first
from shared.intensity import apply_intensity, intensity_chunks
from shared.volume import Volume


def load_pair(source: Source, case_id: str, image_file: Path, label_file: Path,
              meta: dict | None = None) -> Volume:
    """Read, validate (shape, NaN/Inf, class map) and preprocess one image/label pair."""
    raw_image, img = read_nifti(image_file)
    raw_label, _ = read_nifti(label_file)
    check_shapes(raw_image.shape, raw_label.shape, image_file, label_file)
    check_finite(raw_image, image_file)
    label = to_slice_first(source.classmap.apply(raw_label, str(label_file)))
    image = apply_intensity(to_slice_first(raw_image), source.intensity)
    spacing, affine = nifti_geometry(img)
    return source._volume(case_id, image, label, spacing, affine, (image_file, label_file), meta)


def read_labels(source: Source, label_file: Path):
    """The label file alone -> uint8 (S, R, C) task classes (see ``Source.load_labels``)."""
    raw_label = read_nifti_array(label_file)
    return to_slice_first(source.classmap.apply(raw_label, str(label_file)))


def read_label_counts(source: Source, label_file: Path):
    """The label file alone -> ((S, R, C), (S, classes) counts) (see ``Source.label_counts``)."""
    raw = to_slice_first(read_nifti_array(label_file))
    return tuple(int(n) for n in raw.shape), source.classmap.slice_counts(raw, str(label_file))


def read_label_slices(source: Source, label_file: Path, slices: list[int]) -> dict:
    """Some slices of the label file -> {k: uint8 (R, C) task classes}; the class map is applied to
    those slices only (elementwise: the same values as mapping the whole volume)."""
    raw_label = read_nifti_array(label_file)
    ks = [int(k) for k in slices]
    mapped = to_slice_first(source.classmap.apply(raw_label[:, :, ks], str(label_file)))
    return {k: mapped[i] for i, k in enumerate(ks)}


def read_raw_image(image_file: Path):
    """The image file alone -> its voxels, slice-first and checked finite (``Source.raw_image``)."""
    raw_image = read_nifti_array(image_file)
    check_finite(raw_image, image_file)
    return to_slice_first(raw_image)


def read_image_chunks(source: Source, image_file: Path, chunk: int = 8):
    """The image file alone -> ((S, R, C), iterator of preprocessed slice chunks); see
    ``Source.image_chunks``."""
    raw = read_raw_image(image_file)
    return raw.shape, intensity_chunks(raw, source.intensity, chunk)


class PairedNiftiSource(Source):
    """A source whose cases are (image, label) NIfTI pairs found by ``_cases`` (brats, synapse,
    nifti); ``_volume_meta`` adds a source's own facts to ``Volume.meta``."""
    reader_modules = ("nibabel",)  # the NIfTI header (shared.sources.io)

    _cases: dict[str, tuple[Path, Path]]  # case id -> (image file, label file); a cached_property

    def case_ids(self) -> list[str]:
        return sorted(self._cases)

    def files(self, case_id: str) -> tuple[Path, ...]:
        self.check_case(case_id)
        return self._cases[case_id]

    def num_slices(self, case_id: str) -> int:
        return nifti_shape(self.files(case_id)[0])[2]

    def load(self, case_id: str) -> Volume:
        image, label = self.files(case_id)
        return load_pair(self, case_id, image, label, self._volume_meta(case_id))

    def _volume_meta(self, case_id: str) -> dict | None:
        """Extra ``Volume.meta`` of one case (None: nothing beyond the source's)."""
        return None

    def load_labels(self, case_id: str):
        return read_labels(self, self.files(case_id)[1])

    def label_counts(self, case_id: str):
        return read_label_counts(self, self.files(case_id)[1])

    def image_chunks(self, case_id: str, chunk: int = 8):
        return read_image_chunks(self, self.files(case_id)[0], chunk)

    def raw_image(self, case_id: str):
        return read_raw_image(self.files(case_id)[0])

    def label_slices(self, case_id: str, slices: list[int]):
        return read_label_slices(self, self.files(case_id)[1], slices)
