"""The tracked run: what `focusml train`, the MLproject entry points and the Optuna trials call.

`run` is the core `focusml.run.run` with `RunLogger` plugged in as its callbacks, after checking
that the tracking store answers (so a wrong URI never leaves a half-written run).
"""

from __future__ import annotations

from focusml.callbacks import Callbacks
from focusml.config import RunConfig
from focusml.run import RunResult
from focusml.run import run as run_untracked
from focusml.tracking.logger import RunLogger
from focusml.tracking.sources import resolve
from focusml.tracking.store import setup


def run(config: RunConfig, *, callbacks: Callbacks | None = None, parent_run_id: str | None = None,
        tags: dict[str, str] | None = None) -> RunResult:
    """Train and evaluate one configuration and log everything to MLflow; returns the metrics and run id.

    `config.init_from` (a run, a registered model or a file) is resolved here, before any run starts.
    """
    config.validate()
    setup()
    source = resolve(config.init_from) if config.init_from else None
    return run_untracked(config, RunLogger(callbacks, parent_run_id, tags, lineage=source),
                         init=source.weights if source else None)
