"""`RunConfig`: every option of a run in one validated dataclass, logged as MLflow params.

A YAML config file and the CLI use the same flat keys (`lam`, `dilate`, ... at the top level);
`RunConfig.from_flat` sorts them into run fields, mask augmentation and method options.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from focusml import FocusmlError, methods
from focusml.data import DATASETS
from focusml.data.masks import CORRUPTIONS, MaskAugment, corruption_strength, parse_budget
from focusml.data.stream import MODES as DATA_LOADING
from focusml.evaluate import SELECTABLE
from focusml.models import MODELS
from focusml.precision import check_amp, check_channels_last, switch
from focusml.values import check_seed, coerce

LR_SCHEDULES = ("cosine", "constant")
#: options whose empty value means "not given"
OPTIONAL = ("pretrained", "init_from", "mask_budget", "corruption_strength")

__all__ = ["MaskAugment", "RunConfig", "load_yaml"]  # MaskAugment lives in data.masks, beside what it drives


@dataclass
class RunConfig:
    method: str = "baseline"
    dataset: str = "decoy-digits"
    data_root: str | None = None
    download: bool = False
    data_seed: int = 0
    image_size: int | None = None
    train_size: int | None = None
    data_loading: str = "auto"  # folder: auto | memory | stream (read from disk on demand; docs/datasets.md)
    model: str = "small"
    pretrained: str | None = None  # a local state-dict file, or "imagenet" (torchvision's cached file)
    init_from: str | None = None  # a trained model to start from: local file, run id, runs:/..., models:/...
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-3
    lr_schedule: str = "cosine"  # cosine annealing to 0 over the epochs, or constant
    select: str = "auto"  # the validation metric that picks the evaluated checkpoint, or "last"
    seed: int = 0
    device: str = "auto"
    amp: str = "off"  # mixed precision of the training step: off | auto | bf16 | fp16 (focusml/precision.py)
    channels_last: str = "auto"  # channels-last memory format: auto (big backbones on CUDA) | on | off
    experiment: str | None = None  # None: MLFLOW_EXPERIMENT_NAME, else MLFLOW_EXPERIMENT_ID, else "focusml"
    run_name: str | None = None
    log_model: bool = True
    system_metrics: bool = False  # MLflow's CPU/memory/GPU sampling during the run
    cam_every: int = 1  # the cam_grid_val image series: every N epochs (the first and last always)
    mask_budget: int | float | str | None = None  # N annotated training images, a share in (0, 1), or all
    mask_corruption: str = "none"  # none | partial | shifted | dilated (data/masks.py)
    corruption_strength: float | None = None  # None: the corruption's default
    augment: MaskAugment = field(default_factory=MaskAugment)
    method_params: dict[str, Any] = field(default_factory=dict)

    def check_types(self) -> None:
        """Each field as its declared type (`focusml.values.coerce`: a bool is no number, an int is whole),
        mask augmentation's too; seeds in range (`amp`, `channels_last` and `mask_budget` also take YAML's
        booleans or numbers: `switch` and `parse_budget` check them). Raises FocusmlError naming the option."""
        untyped = ("augment", "method_params", "mask_budget", "amp", "channels_last")  # checked by their own parsers
        typed = [(self, f) for f in fields(self) if f.name not in untyped]
        typed += [(self.augment, f) for f in fields(MaskAugment)]
        for owner, f in typed:
            value = getattr(owner, f.name)
            kinds = str(f.type).replace(" ", "").split("|")
            if value is None and "None" in kinds:
                continue
            setattr(owner, f.name, coerce(f"--{f.name.replace('_', '-')}", value, kinds[0]))
        check_seed("--seed", self.seed)
        check_seed("--data-seed", self.data_seed)

    def validate(self, own_data: bool = False, own_model: bool = False) -> "RunConfig":
        """Check every field; fill in the method's defaults. Raises FocusmlError.

        `own_data` / `own_model`: the run is given its dataset / network (`run(data=..., model=...)`), so
        `dataset` / `model` only name them."""
        self.check_types()
        cls = methods.get(self.method)
        if self.dataset not in DATASETS and not own_data:
            raise FocusmlError(f"unknown dataset '{self.dataset}'. Known datasets: {', '.join(sorted(DATASETS))}.")
        if self.model not in MODELS and not own_model:
            raise FocusmlError(f"unknown model '{self.model}'. Known models: {', '.join(MODELS)}.")
        if not isinstance(self.epochs, int) or self.epochs <= 0:
            raise FocusmlError(f"--epochs is {self.epochs}; it must be a whole number ≥ 1.")
        if not isinstance(self.cam_every, int) or self.cam_every < 1:
            raise FocusmlError(f"--cam-every is {self.cam_every}; it must be a whole number ≥ 1 (1: every epoch).")
        if self.batch_size <= 0:
            raise FocusmlError(f"--batch-size is {self.batch_size}; it must be ≥ 1.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FocusmlError(f"--lr is {self.lr}; it must be a finite number > 0.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise FocusmlError(f"--lr-schedule is {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}.")
        check_select(self.select)
        if self.train_size is not None and (not isinstance(self.train_size, int) or self.train_size < 1):
            raise FocusmlError(f"--train-size is {self.train_size}; it must be a whole number ≥ 1.")
        if self.image_size is not None and self.image_size < 8:
            raise FocusmlError(f"--image-size is {self.image_size}; it must be ≥ 8.")
        if self.data_loading not in DATA_LOADING:
            raise FocusmlError(f"--data-loading is {self.data_loading!r}; choose one of {', '.join(DATA_LOADING)}.")
        if self.data_loading == "stream" and self.dataset != "folder":
            raise FocusmlError(f"--data-loading stream reads a folder dataset from disk; dataset '{self.dataset}' is "
                               "built in memory. Drop the option or use --dataset folder.")
        check_device(self.device)
        self.amp, self.channels_last = switch(self.amp, "auto"), switch(self.channels_last, "on")
        check_amp(self.amp, self.device)
        check_channels_last(self.channels_last)
        if self.pretrained and self.pretrained != "imagenet":  # a bad weights file is refused here, before any run exists
            from focusml.models import check_state_dict_file

            check_state_dict_file(self.pretrained)
        if self.init_from:
            from focusml.models import check_state_dict_file, source_kind

            if self.pretrained:
                raise FocusmlError("--init-from and --pretrained both give starting weights; pass one of them "
                                   "(--init-from loads a whole trained model, --pretrained only the tensors that fit).")
            if source_kind(self.init_from) == "file":
                check_state_dict_file(self.init_from)
        self.augment.validate()
        if self.augment.active and not cls.uses_masks:
            raise FocusmlError(
                f"mask augmentation (--dilate/--jitter/--scale/--blur/--keep-fraction) does not apply to method "
                f"'{self.method}': it uses no masks. Drop those options or pick a mask-based method."
            )
        self.mask_budget = parse_budget(self.mask_budget)
        if self.mask_corruption not in CORRUPTIONS:
            raise FocusmlError(f"--mask-corruption is {self.mask_corruption!r}; choose one of {', '.join(CORRUPTIONS)}.")
        self.corruption_strength = corruption_strength(self.mask_corruption, self.corruption_strength)
        if (self.mask_budget is not None or self.mask_corruption != "none") and not cls.uses_masks:
            raise FocusmlError(f"--mask-budget/--mask-corruption do not apply to method '{self.method}': it uses no "
                               "masks. Drop those options or pick a mask-based method.")
        if cls.needs_init and not self.init_from:
            raise FocusmlError(f"method '{self.method}' refines a trained model: pass --init-from RUN_ID, "
                               "models:/NAME@ALIAS or a local state-dict file.")
        if cls.replaces_training:
            self.epochs = 1  # it has no training loop: one step of the run's history
        self.method_params = cls.resolve_options(self.method_params)
        return self

    def to_params(self) -> dict[str, Any]:
        """Flat params for MLflow (and for reproducing the run with --config)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("augment", "method_params")}
        out.update(asdict(self.augment))
        out.update(self.method_params)
        return out

    @classmethod
    def from_params(cls, params: dict[str, str]) -> "RunConfig":
        """The config a run logged (`to_params`), from MLflow's string params (what `--resume` continues).

        Params that are not options (`dataset_fingerprint`, values a method's `prepare` worked out)
        are ignored; an empty string or "None" is None for optional fields.
        """
        own = {f.name: str(f.type) for f in fields(cls) if f.name not in ("augment", "method_params")}
        method_keys = {p.name for p in methods.get(params.get("method", cls.method)).params}
        keep = own.keys() | {f.name for f in fields(MaskAugment)} | method_keys
        values: dict[str, Any] = {}
        for key, text in params.items():
            if key not in keep:
                continue
            kind = own.get(key, "")
            if "None" in kind and text in ("", "None"):
                continue
            try:
                values[key] = (text == "True" if kind.startswith("bool") else int(text) if kind.startswith("int")
                               else float(text) if kind.startswith("float") else text)
            except ValueError:
                raise FocusmlError(f"the run's param {key}={text!r} is not a valid {kind.split()[0]}.") from None
        return cls.from_flat(values)

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> "RunConfig":
        """Build from flat keys (YAML file or CLI); None values mean 'not given'."""
        own = {f.name for f in fields(cls)} - {"augment", "method_params"}
        aug_keys = {f.name for f in fields(MaskAugment)}
        method_keys = set(methods.all_params())
        run, aug, mparams = {}, {}, {}
        for key, value in values.items():
            key = key.replace("-", "_")
            if value is None or (key in OPTIONAL and value == ""):  # MLproject passes "" for "not given"
                continue
            if key in own:
                run[key] = value
            elif key in aug_keys:
                aug[key] = value
            elif key in method_keys:
                mparams[key] = value
            else:
                allowed = sorted(own | aug_keys | method_keys)
                raise FocusmlError(f"unknown option '{key}'. Allowed keys: {', '.join(allowed)}.")
        augment = MaskAugment(**{k: coerce(f"--{k.replace('_', '-')}", v, type(getattr(MaskAugment(), k)).__name__)
                                 for k, v in aug.items()})
        return cls(**run, augment=augment, method_params=mparams)


def check_select(select) -> None:
    """Refuse a selection metric that is not a validation metric (a test split must never choose)."""
    if select in ("auto", "last") or select in SELECTABLE:
        return
    allowed = ", ".join(["auto", "last", *SELECTABLE])
    why = " It reads a test split, which must never choose a model." if "test" in str(select) else ""
    raise FocusmlError(f"--select is {select!r}.{why} Choose one of: {allowed}.")


def check_device(device) -> None:
    """Refuse a device this machine does not have, naming the ones it has (FocusmlError)."""
    if device in ("auto", "cpu"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    have = ", ".join(["cpu", *(f"cuda:{i}" for i in range(count))])
    match = re.fullmatch(r"cuda(?::(\d{1,9}))?", device) if isinstance(device, str) else None
    if match is None:
        raise FocusmlError(f"--device is {device!r}; use auto, cpu or cuda[:N] (this machine has: {have}).")
    if count == 0:
        raise FocusmlError(f"--device is {device!r} but this machine has no usable CUDA device (it has: {have}). "
                           "Use --device cpu or auto.")
    if int(match.group(1) or 0) >= count:
        raise FocusmlError(f"--device is {device!r} but this machine has {count} CUDA device"
                           f"{'s' if count > 1 else ''} (it has: {have}). Use one of those, or auto.")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML run config; refuse anything but a mapping."""
    p = Path(path)
    if not p.is_file():
        raise FocusmlError(f"config file {p} not found.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise FocusmlError(f"config file {p} is not valid YAML: {e}")
    if not isinstance(data, dict):
        raise FocusmlError(f"config file {p} must be a mapping of option: value, got {type(data).__name__}.")
    return data
