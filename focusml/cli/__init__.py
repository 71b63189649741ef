"""`focusml` command line: a lazy click group, one module per command, each thin over the library.

`COMMANDS` maps a command name to the module that defines it and its one-line help, so
`focusml --help` lists every command without importing any of them (they pull in torch,
MLflow, Optuna) and `focusml train` imports only `focusml.cli.train`. Commands parse options,
call the library and own all output (progress bars, tables). A `FocusmlError` becomes one clear
message and exit status 2; a run that started and could not finish (`RunFailed`: it diverged,
the tracking server was lost) one message and its `exit_code` (1, 3); Ctrl-C exit status 130,
SIGTERM 143 (`main` makes SIGTERM raise like Ctrl-C, so runs end KILLED either way).

Adding a command: a module here with a click command named like the module, and one line in
`COMMANDS` (a test checks the line's help against the command's docstring).
"""

from __future__ import annotations

import importlib
import sys

import click

from focusml import FocusmlError, RunFailed, Terminated, __version__, stop_on_sigterm

#: command name → (module in this package, attribute, one-line help shown by `focusml --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "compare": ("compare", "compare", "Compare every method with the baseline and upper bound of the same dataset and seed."),
    "datasets": ("datasets", "datasets", "Built-in and on-disk datasets."),
    "discover": ("discover", "discover", "Propose the shortcuts a trained model reads, for yes/no answers in the mask tool."),
    "filters": ("filters", "filters",
                "Rank the last conv layer's filters of RUN_ID by the share of their activation inside the masks."),
    "masks": ("masks", "masks", "Draw irrelevance masks on a folder dataset."),
    "methods": ("methods", "methods", "List every training method with its family and options."),
    "predict": ("predict", "predict", "Predict the class of image files with a logged model: one row per file."),
    "refine": ("refine", "refine",
               "Refine a trained model from its masks: head refit, then full refinement if validation says so."),
    "register": ("register", "register",
                 "Register a run's logged model in the MLflow Model Registry and set an alias on it."),
    "server": ("server", "server", "Start the MLflow tracking server and UI on focusml's store."),
    "train": ("train", "train", "Train one method on one dataset and log the run to MLflow."),
    "tune": ("tune", "tune", "Search a method's λ and mask augmentation with Optuna; every trial is an MLflow child run."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use, from `lazy_commands` (see `COMMANDS`)."""

    def __init__(self, *args, lazy_commands: dict[str, tuple[str, str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy_commands or name in self.commands:
            return super().get_command(ctx, name)
        module, attr, _ = self.lazy_commands[name]
        command = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        self.add_command(command, name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Like click's, from the one-line helps in `lazy_commands`: nothing is imported."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            if name in self.lazy_commands and name not in self.commands:
                text = click.Command(name, help=self.lazy_commands[name][2]).get_short_help_str(limit)
            else:
                text = self.commands[name].get_short_help_str(limit)
            rows.append((name, text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy_commands=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="focusml")
def cli():
    """focusml: refine CNN classifiers that are right for the wrong reasons."""


def main(argv=None) -> None:
    stop_on_sigterm()
    try:
        cli.main(args=argv, prog_name="focusml", standalone_mode=False)
    except FocusmlError as e:
        click.secho(f"Error: {e}", fg="red", err=True)
        sys.exit(2)
    except RunFailed as e:
        click.secho(f"Error: {e}", fg="red", err=True)
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as e:
        if isinstance(e, Terminated) or isinstance(e.__context__, Terminated):
            click.echo("Stopped by SIGTERM.", err=True)
            sys.exit(143)
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.BadParameter as e:  # a bad value (e.g. --port 70000): one line, like every bad input
        click.secho(f"Error: {e.format_message()}", fg="red", err=True)
        sys.exit(2)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
