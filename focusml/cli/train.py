"""`focusml train`: one tracked run, its options built from RunConfig, MaskAugment and every method's params.

`--resume RUN_ID` continues a stopped run (KILLED, FAILED, or left RUNNING by a dead process or a
lost server) in the same MLflow run, with the run's own options (`tracking.resume`).
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import click

from focusml import FocusmlError
from focusml.catalog import listing
from focusml.cli._common import ProgressBars, echo_table, echo_ui_links

_TYPES = {"float": float, "int": int, "str": str}


def run_options(fn):
    """Every RunConfig field, mask-augmentation field and method option as a click option.

    Defaults are None so that a value given on the command line can be told apart from one in
    `--config FILE.yaml`; the effective defaults are RunConfig's and each method's. Built from the
    stored catalog (`focusml.catalog`), so `focusml train --help` imports no torch.
    """
    stored = listing("train_options")
    defaults = SimpleNamespace(**stored["defaults"])
    opts = [
        click.option("--method", default=None, help=f"training method (default {defaults.method}); see `focusml methods`"),
        click.option("--dataset", default=None, help=f"dataset name (default {defaults.dataset}); see `focusml datasets list`"),
        click.option("--data-root", default=None, help="folder dataset root, or where MNIST files live"),
        click.option("--download/--no-download", default=None, help="allow downloading torchvision datasets"),
        click.option("--data-seed", type=int, default=None, help="generation seed of built-in datasets (default 0)"),
        click.option("--image-size", type=int, default=None, help="resize folder images (and masks) to N×N"),
        click.option("--train-size", default=None,
                     help="decoy-mnist/decoy-fashion: train on the first N of the shuffled training images"),
        click.option("--data-loading", type=click.Choice(["auto", "memory", "stream"]), default=None,
                     help="folder dataset: hold it in memory, or stream it from disk with worker processes; auto "
                          "streams when it would take over a quarter of the available memory (default auto)"),
        click.option("--model", default=None, help="network: small, small-bn, vgg11, resnet18, resnet50 or densenet121 "
                                                    f"(default {defaults.model})"),
        click.option("--pretrained", default=None, help="local state-dict file (the tensors that fit), or imagenet: "
                                                         "torchvision's cached ImageNet file (never downloaded)"),
        click.option("--init-from", default=None, help="start from a trained model: run id, runs:/ID, "
                                                        "models:/NAME@ALIAS, models:/NAME/VERSION or a local file"),
        click.option("--mask-budget", default=None, help="keep masks on N training images (fixed, seeded), or a "
                                                          "share in (0, 1); the rest count as unannotated (default all)"),
        click.option("--mask-corruption", type=click.Choice(["none", "partial", "shifted", "dilated"]), default=None,
                     help="imperfect training masks: partial, shifted or dilated (default none)"),
        click.option("--corruption-strength", default=None,
                     help="partial: share of the area kept (0.5); shifted: shift ÷ image side (0.25); "
                          "dilated: margin ÷ image side (0.1)"),
        click.option("--epochs", type=int, default=None, help=f"training epochs (default {defaults.epochs})"),
        click.option("--batch-size", type=int, default=None, help=f"batch size (default {defaults.batch_size})"),
        click.option("--lr", type=float, default=None, help=f"Adam learning rate (default {defaults.lr})"),
        click.option("--lr-schedule", type=click.Choice(["cosine", "constant"]), default=None,
                     help=f"learning-rate schedule over the epochs (default {defaults.lr_schedule})"),
        click.option("--select", default=None,
                     help="validation metric that picks the evaluated checkpoint (acc/val_cf, acc/val, flip/val, "
                          "evidence_in_mask/val, wr/val, cam_in_mask/val, acc/val_clean), last, or auto = acc/val_cf "
                          "where val has masks (default auto)"),
        click.option("--seed", type=int, default=None, help="training seed (default 0)"),
        click.option("--device", default=None, help="auto, cpu or cuda[:N] (default auto)"),
        click.option("--amp", default=None, is_flag=False, flag_value="auto", metavar="[auto|bf16|fp16|off]",
                     help="mixed precision for the training step: bf16, fp16 (CUDA, with a gradient scaler), auto "
                          "(what --amp alone means: bf16 on CPU and recent GPUs, fp16 on older GPUs) or off "
                          "(default off)"),
        click.option("--channels-last", default=None, metavar="[auto|on|off]",
                     help="channels-last memory format for model and batches; auto = on for resnet18, resnet50 and "
                          "densenet121 on CUDA (default auto)"),
        click.option("--experiment", default=None,
                     help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else $MLFLOW_EXPERIMENT_ID, else focusml)"),
        click.option("--run-name", default=None, help="MLflow run name (default METHOD-DATASET-sSEED)"),
        click.option("--log-model/--no-log-model", default=None, help="log the MLflow model (default on)"),
        click.option("--system-metrics/--no-system-metrics", default=None,
                     help="log CPU, memory, disk, network (and GPU) usage as system/* metrics (default off)"),
        click.option("--cam-every", type=int, default=None,
                     help="log the validation CAM grid (cam_grid_val) every N epochs; the untrained network, the "
                          f"first and the last epoch always (default {defaults.cam_every}: every epoch)"),
    ]
    aug_help = {
        "dilate": "grow masks by N pixels", "jitter": "random mask shift of up to N pixels",
        "scale": "random mask scale in [1−S, 1+S]", "blur": "Gaussian sigma for soft masks",
        "keep_fraction": "share of training images that keep their mask",
    }
    for f in stored["mask_augment"]:
        opts.append(click.option(f"--{f['name'].replace('_', '-')}", type=_TYPES[f["type"]], default=None,
                                 help=f"mask augmentation: {aug_help[f['name']]} (default {f['default']})"))
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
    from focusml.config import RunConfig, load_yaml

    config_file = options.pop("config_file", None)
    values = load_yaml(config_file) if config_file else {}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    values.update({k: v for k, v in options.items() if v is not None})
    if values.get("data_root") == "":
        values["data_root"] = None
    if values.get("train_size") in ("", "None"):  # MLproject passes an empty default
        values["train_size"] = None
    elif isinstance(values.get("train_size"), str):
        try:
            values["train_size"] = int(values["train_size"])
        except ValueError:
            raise FocusmlError(f"--train-size is {values['train_size']!r}; give a whole number.") from None
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
    from focusml.config import load_yaml

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
