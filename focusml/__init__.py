"""focusml: refine CNN classifiers that are right for the wrong reasons.

Mark the shortcut with masks, retrain with a refinement method, and measure against a baseline
(trained on the shortcut) and an upper bound (trained without it), tracked in MLflow.
"""

from contextlib import contextmanager

__version__ = "0.1.0"

#: the Python API (`focusml.api`, docs/api.md), imported on first use so that `import focusml` and the CLI
#: stay fast. `fit` and `score`, not `train` and `evaluate`: those are core modules (focusml.core.train, .evaluate).
API = {"fit": "fit", "refine": "refine", "discover": "discover", "score": "evaluate", "as_dataset": "as_dataset",
       "adapt": "adapt"}


def __getattr__(name: str):
    if name in API:  # by name, so the package itself depends on nothing (the API sits above tracking)
        import importlib

        return getattr(importlib.import_module("focusml.api"), API[name])
    raise AttributeError(f"module 'focusml' has no attribute {name!r}")


class FocusmlError(Exception):
    """A bad input or environment, with a message that names the problem and the fix."""


class RunFailed(Exception):
    """A run that started and could not finish (it diverged, the tracking server went away).

    Not a bad input: the CLI prints the message as one line and exits with `exit_code`.
    """

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same path ends a run KILLED (see `stop_on_sigterm`)."""

    signal_name = "SIGTERM"


def stop_on_sigterm() -> None:
    """Make SIGTERM (what `timeout`, Docker, Kubernetes, Slurm and systemd send) raise `Terminated`.

    A `KeyboardInterrupt` subclass, so a run ends KILLED as with Ctrl-C. Only the first SIGTERM
    raises; later ones are ignored while the run closes (SIGKILL still ends the process at once).
    Call it from the main thread of a command or worker process.
    """
    import signal

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


@contextmanager
def environment(values: dict[str, str]):
    """Set these environment variables for a block, then restore each (unset if it was unset).

    Only these keys change: other threads never see the rest of the environment cleared and
    refilled, as `unittest.mock.patch.dict(os.environ)` would do on exit."""
    import os

    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
