"""Any ``images/`` + ``labels/`` NIfTI folder pair described by a small config file.

The config (JSON, or YAML if the name ends in .yaml/.yml) says which classes the labels hold and
how to scale intensities; see docs/sources.md. Without ``--config`` the source looks for
``source.json`` (or ``source.yaml``) in the root.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from shared.classmaps import ClassMap
from shared.errors import ConfigError, DataError
from shared.fileio import read_json
from shared.intensity import validate_preset
from shared.sources.base import require_dir
from shared.sources.io import strip_nifti_suffix
from shared.sources.nifti_pair import PairedNiftiSource

DEFAULT_CONFIG_NAMES = ("source.json", "source.yaml", "source.yml")
_KEYS = {"images", "labels", "classes", "label_values", "intensity", "task", "image_suffix", "label_suffix"}


def read_config(path: Path, *, known: set[str] | frozenset[str] = frozenset(_KEYS),
                what: str = "nifti source config") -> dict[str, Any]:
    """A source config file (JSON, or YAML by its suffix) as a dict; unknown keys are an error."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            config = yaml.safe_load(path.read_text())
        except Exception as exc:  # yaml.YAMLError, a file that is not text
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    else:
        config = read_json(path, what=what, error=ConfigError)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected an object with 'classes' and 'intensity'")
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return config


def parse_classmap(config: dict[str, Any], where: Path) -> ClassMap:
    classes = config.get("classes")
    if isinstance(classes, dict):
        try:
            pairs = sorted((int(k), str(v)) for k, v in classes.items())
        except ValueError:
            raise ConfigError(f"{where}: 'classes' keys must be integer indices, got {list(classes)}") from None
        if [k for k, _ in pairs] != list(range(len(pairs))):
            raise ConfigError(f"{where}: 'classes' indices must be 0..N-1 without gaps, got {[k for k, _ in pairs]}")
        names = tuple(v for _, v in pairs)
    elif isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        names = tuple(classes)
    else:
        raise ConfigError(f"{where}: 'classes' must be a list of names or an {{index: name}} object, "
                          f"starting with 'background'")
    if len(names) < 2 or names[0] != "background":
        raise ConfigError(f"{where}: 'classes' needs 'background' first and at least one target, got {list(names)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: duplicate class names in {list(names)}")
    values = config.get("label_values")
    if values is None:
        codes = {i: i for i in range(len(names))}
    else:
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: 'label_values' must map raw label values to class indices or names")
        codes = {0: 0}
        for raw, target in values.items():
            try:
                raw_code = int(raw)
            except ValueError:
                raise ConfigError(f"{where}: 'label_values' key {raw!r} is not an integer label value") from None
            if isinstance(target, str):
                if target not in names:
                    raise ConfigError(f"{where}: 'label_values' maps {raw} to unknown class {target!r}")
                target = names.index(target)
            if not isinstance(target, int) or not 0 <= target < len(names) or raw_code < 0:
                raise ConfigError(f"{where}: 'label_values' entry {raw}: {target!r} is not a valid class index")
            codes[raw_code] = target
    return ClassMap(names, codes)


class NiftiSource(PairedNiftiSource):
    name = "nifti"

    def __init__(self, root: str | Path, *, config: str | Path | None = None, intensity: Any = None):
        root_path = Path(root).resolve()
        require_dir(root_path, "nifti root")
        if config is None:
            found = [root_path / n for n in DEFAULT_CONFIG_NAMES if (root_path / n).is_file()]
            if not found:
                raise ConfigError(f"{root_path}: no source config (pass --config FILE or put source.json "
                                  "in the root; see docs/sources.md)")
            config = found[0]
        config_path = Path(config).resolve()
        options: dict[str, Any] = {"config": str(config_path)}
        if intensity is not None:
            options["intensity"] = validate_preset(intensity, "--intensity")
        super().__init__(root_path, options)
        cfg = read_config(config_path)
        self.config = cfg
        self.classmap = parse_classmap(cfg, config_path)
        if "intensity" not in cfg:
            raise ConfigError(f"{config_path}: missing 'intensity' (e.g. \"ct-abdomen\", "
                              "{\"kind\": \"clip\", \"low\": -125, \"high\": 275} or {\"kind\": \"minmax\", \"per\": \"slice\"})")
        self.intensity = (options["intensity"] if "intensity" in options  # --intensity replaces the config's
                          else validate_preset(cfg["intensity"], f"{config_path}: intensity"))
        task = cfg.get("task", "single" if len(self.classmap.names) == 2 else "multi")
        if task not in ("single", "multi"):
            raise ConfigError(f"{config_path}: 'task' must be 'single' or 'multi', got {task!r}")
        self.task = task
        self.image_dir = require_dir(root_path / cfg.get("images", "images"), "images")
        self.label_dir = require_dir(root_path / cfg.get("labels", "labels"), "labels")
        self.image_suffix = str(cfg.get("image_suffix", ""))
        self.label_suffix = str(cfg.get("label_suffix", ""))
        self._cases

    @cached_property
    def _cases(self) -> dict[str, tuple[Path, Path]]:
        cases: dict[str, tuple[Path, Path]] = {}
        for image in sorted(self.image_dir.iterdir()):
            stem = strip_nifti_suffix(image.name)
            if stem is None or not stem.endswith(self.image_suffix):
                continue
            case = stem[: len(stem) - len(self.image_suffix)] if self.image_suffix else stem
            ext = image.name[len(stem):]
            candidates = [self.label_dir / f"{case}{self.label_suffix}{e}" for e in (ext, ".nii.gz", ".nii")]
            label = next((c for c in candidates if c.is_file()), None)
            if label is None:
                raise DataError(f"{image}: image has no label (expected {candidates[0]})")
            cases[case] = (image, label)
        if not cases:
            raise DataError(f"{self.image_dir}: no NIfTI images (*{self.image_suffix}.nii.gz or .nii)")
        return cases


    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["config"] = self.config  # the content too, so a manifest stays readable if the file moves
        return out
