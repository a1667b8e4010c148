"""An experiment grid's config (bench/experiments/*.json), its arms and cells, and the flags it
passes to the two CLIs; shared by the grid runner (bench/experiment.py), its tables
(bench/experiment_tables.py) and the cross-validation (bench/cross_site.py)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ARMS = ("zero-shot", "samed", "synthesized", "exemplars", "full")
ARM_LABELS = {"zero-shot": "zero-shot (pretrained, no fine-tuning)", "samed": "SAMed-style (promptless)",
              "synthesized": "ours (synthesized)", "exemplars": "exemplars only", "full": "full set"}


@dataclass
class ExperimentConfig:
    name: str
    dataset: str
    root: str                          # may contain {data}: replaced by --data-root
    exemplar_counts: list[str]
    train_split: str = "train"
    test_split: str = "test"
    split_file: str | None = None      # relative to the project root, or absolute
    arms: list[str] = field(default_factory=lambda: ["synthesized", "exemplars", "full"])
    prompts: list[str] = field(default_factory=lambda: ["center", "random"])
    seed: int = 0                      # the one seed of a single-seed grid (kept for old configs)
    seeds: list[int] | None = None     # selection, synthesis, training and random prompts seeded together
    num_samples: int | None = None     # synthesized set size (None: the dataset preset)
    fit: dict = field(default_factory=dict)        # flags for `train fit`; "{pretrained}" -> PRE/model.pt, "{out}" -> OUT
    build: dict = field(default_factory=dict)      # extra flags for every `synth build` / `synth pack`
    pretrain: dict | None = None       # flags for `train pretrain` (dataset, root and split come from above)
    zero_shot: dict = field(default_factory=dict)  # flags for the zero-shot `train eval` (model, img_size)
    eval: dict = field(default_factory=dict)       # extra flags for every `train eval`; "{out}" -> OUT (a fold's)
    samed_counts: list[str] = field(default_factory=list)   # counts whose synthesized set trains promptless
    samed_fit: dict = field(default_factory=lambda: {"prompt": "none"})
    arm_counts: dict = field(default_factory=dict)  # arm -> the exemplar counts it runs at (absent: all)
    folds: str | None = None           # a cross-validation fold file (data_manifests/splits/*_sites.json)
    notes: str = ""

    @classmethod
    def load(cls, path: Path) -> "ExperimentConfig":
        raw = json.loads(path.read_text())
        raw = {k: v for k, v in raw.items() if not k.startswith("_")}
        cfg = cls(**raw)
        unknown = [a for a in cfg.arms if a not in ARMS]
        if unknown:
            raise SystemExit(f"{path}: unknown arm(s) {unknown}; known: {list(ARMS)}")
        if "zero-shot" in cfg.arms and cfg.pretrain is None and "checkpoint" not in cfg.zero_shot:
            raise SystemExit(f"{path}: the zero-shot arm needs a `pretrain` section or zero_shot.checkpoint")
        for arm, counts in cfg.arm_counts.items():
            if arm not in ("synthesized", "exemplars"):
                raise SystemExit(f"{path}: arm_counts names {arm!r}; only synthesized and exemplars take counts "
                                 f"(the SAMed-style arm has samed_counts)")
            stray = [c for c in counts if c not in cfg.exemplar_counts]
            if stray:
                raise SystemExit(f"{path}: arm_counts[{arm!r}] has {stray}, not in exemplar_counts {cfg.exemplar_counts}")
        return cfg

    def runs_at(self, arm: str, count: str) -> bool:
        """Whether `arm` is in the grid at this exemplar count (arms, arm_counts, samed_counts)."""
        if arm not in self.arms:
            return False
        if arm == "samed":
            return count in self.samed_counts
        return count in self.arm_counts.get(arm, self.exemplar_counts)

    @property
    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]


def eval_flags(prompt: str) -> list[str]:
    """A grid's evaluation name -> its `train eval` flags: "center" -> --prompt center;
    "center+clicked-volume" -> --prompt center --keep clicked-volume."""
    mode, _, keep = prompt.partition("+")
    return ["--prompt", mode, *(["--keep", keep] if keep else [])]


def cli_flags(flags: dict, substitutions: dict[str, str] | None = None) -> list[str]:
    """{"img_size": 128, "no_progress": True} -> ["--img-size", "128", "--no-progress"]."""
    out: list[str] = []
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                out.append(flag)
        elif value is not None:
            text = str(value)
            for placeholder, replacement in (substitutions or {}).items():
                text = text.replace(placeholder, replacement)
            out += [flag, text]
    return out


@dataclass
class Cell:
    """One row of the tables for one seed: where its training set, run and evaluations live."""
    arm: str
    count: str                       # "150", "1%", "all" (full set), "-" (zero-shot)
    seed: int
    shards: Path | None              # None for zero-shot
    run_dir: Path | None             # None for zero-shot
    evals: dict[str, Path]           # prompt -> evaluation folder


def count_tag(count: str) -> str:
    return count.replace("%", "pct")
