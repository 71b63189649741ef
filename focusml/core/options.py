"""Every option of a run, declared once: type, default, choices, bounds, help, and where it shows.

`RunConfig`'s fields (focusml.core.config), `focusml train`'s flags (focusml.cli.train), the MLproject's
parameters (focusml.generate.mlproject) and the keys a YAML config or `--set` may hold are all read from
`RUN_OPTIONS`; adding an option is one `Option` here plus the code that uses its value. Checks that
a declaration can say (type, choices, bounds) are made by `Option.check`; what needs the registries or
the machine (a method's name, `--device`, `--select`) stays with `RunConfig.validate`.

A leaf: imports nothing of focusml but the error type and `values`, so `focusml train --help` reads it
without torch.
`AUGMENT_OPTIONS` are mask augmentation's (the fields of `data.masks.MaskAugment`); each method's own
options are declared with the method (`methods.base.Param`), since they come and go with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from focusml import FocusmlError
from focusml.core.values import SEED_MAX, coerce

#: where an option is an MLproject parameter: every method's entry point, or mask-based methods' only
EVERY_METHOD, MASK_METHODS = "every method", "mask methods"


@dataclass(frozen=True)
class Option:
    """One run option: `--name-with-dashes` on the command line, `name` in YAML, MLflow params and the MLproject."""

    name: str
    type: type  # bool, int, float or str (the value after `check`)
    default: Any
    help: str
    optional: bool = False  # None (or "" from the MLproject) means "not given"
    choices: tuple | None = None
    low: float | None = None  # bounds, inclusive unless `low_open` / `high_open`
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    coerced: bool = True  # False: the value has its own parser (`amp: true`, `mask_budget: 0.5`), not `type`
    default_text: str | None = None  # the default as `--help` says it, where the value alone says too little
    mlproject: str | None = None  # EVERY_METHOD, MASK_METHODS or None (not an MLproject parameter)
    metavar: str | None = None  # --help's placeholder, where it differs from the type's
    flag_value: str | None = None  # the value of the flag given alone (`--amp` means `--amp auto`)

    @property
    def flag(self) -> str:
        return f"--{self.name.replace('_', '-')}"

    @property
    def annotation(self) -> str:
        """The field's type as `RunConfig` declares it (Any where the value has its own parser)."""
        kind = self.type.__name__ if self.coerced else "Any"
        return f"{kind} | None" if self.optional and self.coerced else kind

    def check(self, value: Any) -> Any:
        """`value` as this option's type, in its choices and bounds; FocusmlError naming the flag."""
        if value is None and self.optional:
            return None
        if self.coerced:
            value = coerce(self.flag, value, self.type.__name__)
        if self.choices is not None and value not in self.choices:
            raise FocusmlError(f"{self.flag} is {value!r}; choose one of {', '.join(map(str, self.choices))}.")
        if self.low is None and self.high is None:
            return value
        if self.type is float and not math.isfinite(value):
            raise FocusmlError(f"{self.flag} is {value}; it must be a finite number{self._range()}.")
        below = value <= self.low if self.low_open else value < self.low if self.low is not None else False
        above = value >= self.high if self.high_open else value > self.high if self.high is not None else False
        if below or above:
            raise FocusmlError(f"{self.flag} is {value}; {self._want()}.")
        return value

    def _range(self) -> str:
        low = "" if self.low is None else f" {'>' if self.low_open else '≥'} {self.low:g}"
        return low if self.high is None else f"{low} and {'<' if self.high_open else '≤'} {self.high:g}"

    def _want(self) -> str:
        if self.type is int and self.low is not None and self.high is not None:
            return f"give a whole number from {self.low} to {self.high}"
        return f"it must be a {'whole' if self.type is int else 'finite'} number{self._range()}"


RUN_OPTIONS: tuple[Option, ...] = (
    Option("method", str, "baseline", "training method; see `focusml methods`"),
    Option("dataset", str, "decoy-digits", "dataset name; see `focusml datasets list`", mlproject=EVERY_METHOD),
    Option("data_root", str, None, "folder dataset root, or where MNIST files live", optional=True,
           mlproject=EVERY_METHOD),
    Option("download", bool, False, "allow downloading torchvision datasets"),
    Option("data_seed", int, 0, "generation seed of built-in datasets", low=0, high=SEED_MAX),
    Option("image_size", int, None, "resize folder images (and masks) to N×N", optional=True, low=8),
    Option("train_size", int, None, "decoy-mnist/decoy-fashion: train on the first N of the shuffled training images",
           optional=True, low=1, mlproject=EVERY_METHOD),
    Option("data_loading", str, "auto", "folder dataset: hold it in memory, or stream it from disk with worker "
           "processes; auto streams when it would take over a quarter of the available memory",
           choices=("auto", "memory", "stream"), mlproject=EVERY_METHOD),
    Option("model", str, "small", "network: small, small-bn, vgg11, resnet18, resnet50 or densenet121",
           mlproject=EVERY_METHOD),
    Option("pretrained", str, None, "local state-dict file (the tensors that fit), or imagenet: torchvision's cached "
           "ImageNet file (never downloaded)", optional=True),
    Option("init_from", str, None, "start from a trained model: run id, runs:/ID, models:/NAME@ALIAS, "
           "models:/NAME/VERSION or a local file", optional=True, mlproject=EVERY_METHOD),
    Option("epochs", int, 20, "training epochs", low=1, mlproject=EVERY_METHOD),
    Option("batch_size", int, 32, "batch size", low=1, mlproject=EVERY_METHOD),
    Option("lr", float, 3e-3, "Adam learning rate", low=0, low_open=True, mlproject=EVERY_METHOD),
    Option("lr_schedule", str, "cosine", "learning-rate schedule over the epochs (cosine: annealed to 0)",
           choices=("cosine", "constant"), mlproject=EVERY_METHOD),
    Option("select", str, "auto", "validation metric that picks the evaluated checkpoint (acc/val_cf, acc/val, "
           "flip/val, evidence_in_mask/val, wr/val, cam_in_mask/val, acc/val_clean), last, or auto = acc/val_cf "
           "where val has masks", mlproject=EVERY_METHOD),
    Option("seed", int, 0, "training seed", low=0, high=SEED_MAX, mlproject=EVERY_METHOD),
    Option("device", str, "auto", "auto, cpu or cuda[:N]", mlproject=EVERY_METHOD),
    Option("amp", str, "off", "mixed precision for the training step: bf16, fp16 (CUDA, with a gradient scaler), auto "
           "(what --amp alone means: bf16 on CPU and recent GPUs, fp16 on older GPUs) or off", coerced=False,
           mlproject=EVERY_METHOD, metavar="[auto|bf16|fp16|off]", flag_value="auto"),
    Option("channels_last", str, "auto", "channels-last memory format for model and batches; auto = on for "
           "resnet18, resnet50 and densenet121 on CUDA", coerced=False, mlproject=EVERY_METHOD,
           metavar="[auto|on|off]"),
    Option("experiment", str, None, "MLflow experiment", optional=True,
           default_text="$MLFLOW_EXPERIMENT_NAME, else $MLFLOW_EXPERIMENT_ID, else focusml"),
    Option("run_name", str, None, "MLflow run name", optional=True, default_text="METHOD-DATASET-sSEED"),
    Option("log_model", bool, True, "log the MLflow model"),
    Option("system_metrics", bool, False, "log CPU, memory, disk, network (and GPU) usage as system/* metrics"),
    Option("cam_every", int, 1, "log the validation CAM grid (cam_grid_val) every N epochs; the untrained network, "
           "the first and the last epoch always", low=1, default_text="1: every epoch", mlproject=EVERY_METHOD),
    Option("mask_budget", int, None, "keep masks on N training images (fixed, seeded), or a share in (0, 1); the rest "
           "count as unannotated", optional=True, coerced=False, default_text="all", mlproject=MASK_METHODS),
    Option("mask_corruption", str, "none", "imperfect training masks: partial, shifted or dilated",
           choices=("none", "partial", "shifted", "dilated"), mlproject=MASK_METHODS),
    Option("corruption_strength", float, None, "partial: share of the area kept (0.5); shifted: shift ÷ image side "
           "(0.25); dilated: margin ÷ image side (0.1)", optional=True, coerced=False, mlproject=MASK_METHODS),
)



AUGMENT_OPTIONS: tuple[Option, ...] = (
    Option("dilate", int, 0, "mask augmentation: grow masks by N pixels", low=0, mlproject=MASK_METHODS),
    Option("jitter", int, 0, "mask augmentation: random mask shift of up to N pixels", low=0, mlproject=MASK_METHODS),
    Option("scale", float, 0.0, "mask augmentation: random mask scale in [1−S, 1+S]", low=0, high=1, high_open=True,
           mlproject=MASK_METHODS),
    Option("blur", float, 0.0, "mask augmentation: Gaussian sigma for soft masks", low=0,
           mlproject=MASK_METHODS),
    Option("keep_fraction", float, 1.0, "mask augmentation: share of training images that keep their mask", low=0,
           high=1, mlproject=MASK_METHODS),
)


def declared(options: tuple[Option, ...]):
    """A class decorator: the class as a dataclass whose fields are `options` (in order, with their defaults),
    then its own; `RunConfig` and `MaskAugment` are made so."""

    def make(cls):
        cls.__annotations__ = {**{o.name: o.annotation for o in options}, **cls.__annotations__}
        for o in options:
            setattr(cls, o.name, o.default)
        return dataclass(cls)

    return make


def option(name: str) -> Option:
    """The declaration of run option `name` (mask augmentation's included)."""
    return next(o for o in (*RUN_OPTIONS, *AUGMENT_OPTIONS) if o.name == name)
