"""How a run computes on its device: mixed precision (`--amp`) and memory format (`--channels-last`).

`--amp` runs the training forward pass and the loss (CE and every method's penalty, input and
CAM gradients included) under `torch.autocast`; the weights, the optimiser and everything
outside the training step (validation, test metrics, CAMs, the logged model) stay float32.
`auto` is bfloat16 on CPU and on GPUs that support it natively (Ampere and newer), float16 on
older GPUs; float16 needs `torch.amp.GradScaler` (its gradients underflow otherwise), bfloat16
has float32's range and needs none. Off by default: a run's numbers then match runs without it.

`--channels-last auto` stores the larger torchvision backbones (`CHANNELS_LAST_MODELS`) and
their training batches channels-last on CUDA, where cuDNN's convolutions (tensor cores above
all) are faster in NHWC; on CPU and for the small nets it changes nothing. `on`/`off` force it.
The memory format changes the kernels, not the maths: results agree to float rounding.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from focusml import FocusmlError

AMP_CHOICES = ("off", "auto", "bf16", "fp16")
CHANNELS_LAST_CHOICES = ("auto", "on", "off")
#: the backbones `--channels-last auto` converts on CUDA: big enough that NHWC convolutions pay
CHANNELS_LAST_MODELS = ("resnet18", "resnet50", "densenet121")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = ["AMP_CHOICES", "CHANNELS_LAST_CHOICES", "CHANNELS_LAST_MODELS", "Precision", "check_amp",
           "check_channels_last", "switch"]


def switch(value, on: str):
    """A YAML boolean as the option's word: `amp: off` in a config file reads as False (YAML 1.1)."""
    return value if not isinstance(value, bool) else on if value else "off"


def check_amp(amp, device: str) -> None:
    """Refuse an unknown `--amp` value, and float16 where no CUDA device will run it (FocusmlError)."""
    if amp not in AMP_CHOICES:
        raise FocusmlError(f"--amp is {amp!r}; choose one of {', '.join(AMP_CHOICES)} "
                           "(auto: bf16 on CPU and recent GPUs, fp16 on older GPUs).")
    if amp == "fp16" and (device == "cpu" or (device == "auto" and not torch.cuda.is_available())):
        raise FocusmlError("--amp fp16 needs a CUDA device (float16 with a gradient scaler); on CPU use --amp bf16 "
                           "or off.")


def check_channels_last(value) -> None:
    if value not in CHANNELS_LAST_CHOICES:
        raise FocusmlError(f"--channels-last is {value!r}; choose one of {', '.join(CHANNELS_LAST_CHOICES)} "
                           f"(auto: on for {', '.join(CHANNELS_LAST_MODELS)} on CUDA).")


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype `--amp` means on `device` (None: off)."""
    if amp == "off":
        return None
    if amp == "auto":
        native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if device.type != "cuda" or native else torch.float16
    return DTYPES[amp]


def channels_last(value: str, model: str, device: torch.device) -> bool:
    """Whether `--channels-last` (auto/on/off) converts `model` on `device`."""
    if value == "auto":
        return device.type == "cuda" and model in CHANNELS_LAST_MODELS
    return value == "on"


@dataclass
class Precision:
    """A run's autocast dtype, memory format and gradient scaler; the default is plain float32."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None  # autocast dtype; None: float32
    channels_last: bool = False
    scaler: torch.amp.GradScaler | None = None  # float16 only

    @classmethod
    def for_run(cls, amp: str, memory_format: str, model: str, device: torch.device) -> "Precision":
        dtype = amp_dtype(amp, device)
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        return cls(device.type, dtype, channels_last(memory_format, model, device), scaler)

    @property
    def params(self) -> dict[str, str]:
        """What `auto` resolved to, logged beside the options: `amp_dtype`, `memory_format`."""
        names = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}
        return {"amp_dtype": names[self.dtype], "memory_format": "channels_last" if self.channels_last else "contiguous"}

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` in this run's memory format (in place, like `Module.to`)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def autocast(self):
        """The context for the forward pass and the loss."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and optimiser step; float16 scales the loss and skips a step whose gradients overflowed."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
