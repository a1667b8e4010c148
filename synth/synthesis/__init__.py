"""Stage 2, one sample: the bank of exemplar and background slices (:mod:`~synth.synthesis.bank`,
inpainted fallback backgrounds in :mod:`~synth.synthesis.background`), the configuration
(:mod:`~synth.synthesis.config`), the transforms (:mod:`~synth.synthesis.transforms`), the anatomy
rule (:mod:`~synth.synthesis.background_choice`, :mod:`~synth.synthesis.placement`,
:mod:`~synth.synthesis.pixel_checks`) and :func:`synthesize` / :func:`replay`
(:mod:`~synth.synthesis.sample`), importable from here."""
from __future__ import annotations

__all__ = ["replay", "synthesize"]


def __getattr__(name: str):
    # synthesize / replay on first use, so importing a sibling module (the bank, the config)
    # does not import the whole synthesis
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("synth.synthesis.sample"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
