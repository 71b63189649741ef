"""The core: a run without tracking. Torch only: it reaches neither MLflow nor Optuna (`lint-imports`).

`run.run(config, callbacks)` validates, loads the data (data/), builds the model (models.py) and the
method (methods/), and fits (train.py) and tests (evaluate.py), reporting through the hooks of
callbacks.py; options.py declares every run option, config.py and values.py check them. Above the core
sit tracking (MLflow), tune, analysis, the mask tool and the CLI; the generators (focusml.generate)
read the core's declarations. This package imports nothing: import its modules (`focusml.core.run`),
so that `focusml.core.options` stays free of torch.
"""
