"""The Python API to the dataset readers (re-exported from :mod:`shared.sources`).

>>> from synth.sources import open_source
>>> src = open_source("synapse", "/data/Synapse")
>>> vol = src.load("0001")
>>> vol.image.shape, vol.class_names
"""
from shared.sources import DATASETS, Source, open_described, open_source, preprocess_raw, read_nifti

__all__ = ["DATASETS", "Source", "open_described", "open_source", "preprocess_raw", "read_nifti"]
