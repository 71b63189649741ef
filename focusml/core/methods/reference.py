"""Reference methods: `baseline` (plain CE on the confounded train split) and `upper_bound`
(plain CE on the clean train split, so the shortcut is never seen)."""

from focusml.core.methods.base import Method


class Baseline(Method):
    name = "baseline"
    family = "reference"
    summary = "plain cross-entropy on the confounded train split; masks unused"
    uses_masks = False


class UpperBound(Method):
    name = "upper_bound"
    family = "reference"
    summary = "plain cross-entropy on the clean train split: the shortcut never seen"
    uses_masks = False
    train_split = "train_clean"
