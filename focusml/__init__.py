"""focusml: refine CNN classifiers that are right for the wrong reasons.

Mark the shortcut with masks, retrain with a refinement method, and measure against a baseline
(trained on the shortcut) and an upper bound (trained without it), tracked in MLflow.
"""

__version__ = "0.1.0"


class FocusmlError(Exception):
    """A bad input or environment, with a message that names the problem and the fix."""
