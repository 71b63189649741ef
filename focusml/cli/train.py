"""`focusml train`: one tracked run, its options built from the declared run options, MaskAugment and every
method's params.

`--resume RUN_ID` continues a stopped run (KILLED, FAILED, or left RUNNING by a dead process or a
lost server) in the same MLflow run, with the run's own options (`tracking.resume`).
"""

from __future__ import annotations

from contextlib import contextmanager

import click

from focusml.generate.catalog import listing
from focusml.cli._common import ProgressBars, echo_table, echo_ui_links
from focusml.core.options import AUGMENT_OPTIONS, RUN_OPTIONS

_TYPES = {"float": float, "int": int, "str": str}


def run_option(o):
    """The click option of declared run option `o` (focusml.core.options). Its default is None so that a value
    given here can be told apart from one in `--config FILE.yaml`; the effective default is said in the help.
    An optional value is taken as text (the MLproject passes "" for "not given") and typed by the config."""
    if o.type is bool:
        return click.option(f"{o.flag}/--no-{o.flag[2:]}", default=None,
                            help=f"{o.help} (default {'on' if o.default else 'off'})")
    default = o.default_text or o.default
    text = o.help if default is None else f"{o.help} (default {default})"
    if o.choices is not None:
        kind = click.Choice(o.choices)
    else:
        kind = _TYPES[o.type.__name__] if o.coerced and not o.optional else str
    extra = {"is_flag": False, "flag_value": o.flag_value} if o.flag_value is not None else {}
    metavar = o.metavar or ("INTEGER" if o.type is int and kind is str else None)
    return click.option(o.flag, type=kind, default=None, metavar=metavar, help=text, **extra)


def run_options(fn):
    """Every declared run option and mask-augmentation option (focusml.core.options) and every method's option as a
    click option. Method options come from the stored catalog (`focusml.generate.catalog`), so `focusml train --help`
    imports no torch.
    """
    opts = [run_option(o) for o in (*RUN_OPTIONS, *AUGMENT_OPTIONS)]
    stored = listing("train_options")
    for p in stored["method_params"]:
        owners = p["defaults"]
        text = p["help"] if len(owners) == 1 else p["help"].split(" (")[0]
        defaults = ", ".join(f"{n} {d}" for n, d in owners.items())
        opts.append(click.option(f"--{p['name'].replace('_', '-')}", type=_TYPES[p["type"]],
                                 default=None, help=f"{text} [default: {defaults}]"))
    opts.append(click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
                             help="YAML file with the same keys; options given here win"))
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def config_from_options(options: dict):
    """The RunConfig of the given options over `--config FILE.yaml` (imports the library: torch)."""
    from focusml.core.config import RunConfig, load_yaml

    config_file = options.pop("config_file", None)
    values = load_yaml(config_file) if config_file else {}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    values.update({k: v for k, v in options.items() if v is not None})
    return RunConfig.from_flat(values)


SUMMARY_KEYS = ["acc/test", "acc/test_cf", "flip/test", "acc/test_confounded", "acc/test_clean", "bacc/test",
                "f1/test", "evidence_in_mask/test", "wr/test", "cam_in_mask/test", "selected_epoch",
                "selected/acc/val_cf", "time/epoch_s_mean"]


@click.command()
@run_options
@click.option("--resume", "resume_id", default=None, metavar="RUN_ID",
              help="continue this stopped run from its last finished epoch, in the same MLflow run, with its own "
                   "options (only --device may be given besides)")
def train(resume_id=None, **options):
    """Train one method on one dataset and log the run to MLflow.

    \b
    Examples:
      focusml train --method baseline --dataset decoy-digits --epochs 8
      focusml train --method pas --lam 1 --dilate 1
      focusml train --method pas --init-from models:/digits@baseline --epochs 5
      focusml train --config run.yaml --seed 2
      focusml train --resume 3f2a9c0d…          # continue a stopped run
      focusml train --dataset folder --data-root my-data --method pas --system-metrics
    """
    from focusml import tracking  # MLflow and torch: imported when the command runs, not for --help

    if resume_id:
        return _resume(resume_id, options)
    config = config_from_options(options).validate()
    where = tracking.redact(tracking.tracking_uri())
    line = f"Training {config.method} on {config.dataset} (seed {config.seed}) → {where}"
    result = tracking.run(config, callbacks=Announced(config.epochs, line))
    _report(result)


class Announced(ProgressBars):
    """The progress bars, after one line saying what runs where, printed once the run has started
    (so a refused input prints its error line only)."""

    def __init__(self, epochs: int, line: str):
        super().__init__(epochs)
        self.line = line

    @contextmanager
    def run_scope(self, ctx):
        click.echo(self.line, err=True)
        try:
            with super().run_scope(ctx):
                yield
        finally:  # a run stopped mid-epoch: close its bar now, not at exit after the error line
            for bar in (self.bar, self.prep):
                if bar is not None:
                    bar.close()
            self.bar = self.prep = None


def _report(result) -> None:
    echo_table([{"metric": k, "value": result.metrics.get(k)} for k in SUMMARY_KEYS if k in result.metrics])
    for warning in result.warnings:
        click.secho(f"Warning: {warning}", fg="yellow", err=True)
    click.echo(f"run_id: {result.run_id}")
    echo_ui_links(result.run_id)


def _resume(run_id: str, options: dict) -> None:
    from focusml import tracking
    from focusml.core.config import load_yaml

    device = options.pop("device", None)
    config_file = options.pop("config_file", None)
    given = {k: v for k, v in (load_yaml(config_file) if config_file else {}).items()}
    given.update({k: v for k, v in options.items() if v is not None})
    given = {k.replace("-", "_"): v for k, v in given.items()}
    tracking.setup()
    run_id = tracking.resolve_run_id(run_id, f"--resume {run_id}")
    config, _ = tracking.resume_config(run_id, given, device)
    where = tracking.redact(tracking.tracking_uri())
    line = f"Resuming run {run_id}: {config.method} on {config.dataset} (seed {config.seed}) → {where}"
    result = tracking.resume(run_id, callbacks=Announced(config.epochs, line), given=given, device=device,
                             on_warning=lambda text: click.secho(f"Warning: {text}", fg="yellow", err=True))
    _report(result)
