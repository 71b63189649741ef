"""Datasets: built-in generators, the folder loader and torchvision decoys, behind one registry."""

from focusml.core.data.base import CLEAN_SPLITS, SPLITS, Dataset, Split
from focusml.core.data.registry import DATASETS, DataOptions, load, register

# Importing a loader module registers it.
from focusml.core.data import backgrounds, decoy_digits, folder, sketches, symbols, torchvision_decoys, xray_tokens  # noqa: E402,F401

__all__ = ["CLEAN_SPLITS", "DATASETS", "SPLITS", "DataOptions", "Dataset", "Split", "load", "register"]
