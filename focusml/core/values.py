"""Option values checked against their declared type where they enter (a YAML config, `tune --set`,
a study file, the CLI), so `batch_size: 2.5`, `lr: fast` or `epochs: true` is refused in one line
before any run starts instead of failing mid-run or being silently truncated (`int(2.5) == 2`).
"""

from __future__ import annotations

import os
from typing import Any

from focusml import FocusmlError

#: seeds go to torch.manual_seed, torch.Generator and numpy's default_rng (which refuses negatives),
#: and are mixed with salts (`seed * 1_000_003 + salt`): 32 bits keep every use in range
SEED_MAX = 2**32 - 1

_WANT = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "text"}


def coerce(flag: str, value: Any, kind: str) -> Any:
    """`value` as `kind` ("bool", "int", "float" or "str"), or FocusmlError naming `flag`, the value and the type.

    A bool is never a number; an int takes whole numbers (2.0 → 2, "32" → 32), a float any finite
    or non-finite number or numeric text ("3e-3": YAML 1.1 reads it as a string); a str takes text,
    a path or a number (`experiment: 2024`). Range checks stay with the option.
    """
    if kind not in _WANT:
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind in ("int", "float") and not isinstance(value, bool):
        cast = int if kind == "int" else float
        if isinstance(value, int) or (isinstance(value, float) and (kind == "float" or value.is_integer())):
            return cast(value)
        if isinstance(value, str):
            try:
                return cast(value.strip())
            except ValueError:
                pass
    elif kind == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):  # a path given from Python (benchmarks, tests)
            return os.fspath(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    shown = "true" if value is True else "false" if value is False else repr(value)
    raise FocusmlError(f"{flag} is {shown}; give {_WANT[kind]}.")

