"""`RunConfig`: every option of a run in one validated dataclass, logged as MLflow params.

Its fields are the options declared in `focusml.core.options` (type, default, choices, bounds), then mask
augmentation and the method's options. A YAML config file and the CLI use the same flat keys (`lam`,
`dilate`, ... at the top level); `RunConfig.from_flat` sorts them into run fields, mask augmentation
and method options.
"""

from __future__ import annotations

import re
from dataclasses import asdict, field, fields
from pathlib import Path
from typing import Any

import yaml

from focusml import FocusmlError
from focusml.core import methods
from focusml.core.data import DATASETS
from focusml.core.data.masks import MaskAugment, corruption_strength, parse_budget
from focusml.core.evaluate import SELECTABLE
from focusml.core.models import MODELS
from focusml.core.options import AUGMENT_OPTIONS, RUN_OPTIONS, declared
from focusml.core.precision import check_amp, check_channels_last, switch

__all__ = ["MaskAugment", "RunConfig", "load_yaml"]  # MaskAugment lives in data.masks, beside what it drives


@declared(RUN_OPTIONS)
class RunConfig:
    augment: MaskAugment = field(default_factory=MaskAugment)
    method_params: dict[str, Any] = field(default_factory=dict)

    def check_types(self) -> None:
        """Each option as its declared type, in its choices and bounds (`Option.check`: a bool is no number, an
        int is whole), mask augmentation's too (`amp`, `channels_last`, `mask_budget` and
        `corruption_strength` have their own parsers). Raises FocusmlError naming the option."""
        for o in RUN_OPTIONS:
            setattr(self, o.name, o.check(getattr(self, o.name)))
        self.augment.validate()

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
        check_select(self.select)
        if self.data_loading == "stream" and self.dataset != "folder":
            raise FocusmlError(f"--data-loading stream reads a folder dataset from disk; dataset '{self.dataset}' is "
                               "built in memory. Drop the option or use --dataset folder.")
        check_device(self.device)
        self.amp, self.channels_last = switch(self.amp, "auto"), switch(self.channels_last, "on")
        check_amp(self.amp, self.device)
        check_channels_last(self.channels_last)
        if self.pretrained and self.pretrained != "imagenet":  # a bad weights file is refused here, before any run exists
            from focusml.core.models import check_state_dict_file

            check_state_dict_file(self.pretrained)
        if self.init_from:
            from focusml.core.models import check_state_dict_file, source_kind

            if self.pretrained:
                raise FocusmlError("--init-from and --pretrained both give starting weights; pass one of them "
                                   "(--init-from loads a whole trained model, --pretrained only the tensors that fit).")
            if source_kind(self.init_from) == "file":
                check_state_dict_file(self.init_from)
        if self.augment.active and not cls.uses_masks:
            raise FocusmlError(
                f"mask augmentation (--dilate/--jitter/--scale/--blur/--keep-fraction) does not apply to method "
                f"'{self.method}': it uses no masks. Drop those options or pick a mask-based method."
            )
        self.mask_budget = parse_budget(self.mask_budget)
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
        own = {o.name: o for o in (*RUN_OPTIONS, *AUGMENT_OPTIONS)}
        method_keys = {p.name for p in methods.get(params.get("method", cls.method)).params}
        keep = own.keys() | method_keys
        values: dict[str, Any] = {}
        for key, text in params.items():
            if key not in keep:
                continue
            o = own.get(key)
            if o is not None and o.optional and text in ("", "None"):
                continue
            if o is not None and o.type is bool:
                values[key] = text == "True"
            elif o is not None and o.coerced:
                try:
                    values[key] = o.check(text)
                except FocusmlError:
                    raise FocusmlError(f"the run's param {key}={text!r} is not a valid {o.type.__name__}.") from None
            else:
                values[key] = text
        return cls.from_flat(values)

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> "RunConfig":
        """Build from flat keys (YAML file or CLI); None values mean 'not given'."""
        own = {o.name for o in RUN_OPTIONS}
        optional = {o.name for o in RUN_OPTIONS if o.optional}
        aug_keys = {f.name for f in fields(MaskAugment)}
        method_keys = set(methods.all_params())
        run, aug, mparams = {}, {}, {}
        for key, value in values.items():
            key = key.replace("-", "_")
            if value is None or (key in optional and value == ""):  # MLproject passes "" for "not given"
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
        return cls(**run, augment=MaskAugment(**aug), method_params=mparams)


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
