"""Helpers that several test files share (pytest puts tests/ on sys.path, as for conftest.py)."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from focusml.core.models import CamNet


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """`focusml ARGS` in this process: (exit status, stdout, stderr); what earlier steps printed is dropped."""
    from focusml.cli import main

    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def main_ok(argv: list[str]) -> None:
    """`focusml ARGV` in this process, which must succeed (its output stays in capsys)."""
    from focusml.cli import main

    try:
        main(argv)
    except SystemExit as e:
        assert e.code in (0, None), argv


def as_in_a_terminal() -> None:
    """A subprocess's `preexec_fn`: SIGINT as a foreground command gets it. A suite started in the background
    (`make test &`) has it ignored, and Python then never turns Ctrl-C into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def shortcut_reader(bias: float) -> CamNet:
    """Identity features (a ReLU over the two channels: object, shortcut) and a head that reads the shortcut
    channel only: class 1 when its global average exceeds `bias / 400`."""
    conv = nn.Conv2d(2, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        conv.bias.zero_()
    model = CamNet(nn.Sequential(conv, nn.ReLU()), 2, 2)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[0.0, -400.0], [0.0, 400.0]]))
        model.classifier.bias.copy_(torch.tensor([bias, -bias]))
    return model
