"""`focusml` command line: a click group whose commands live in the modules of this package.

Each module adds its commands to `cli`; they parse options, call the library and own all output
(progress bars, tables). A `FocusmlError` becomes one clear message and exit status 2.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from focusml import FocusmlError, __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="focusml")
def cli():
    """focusml: refine CNN classifiers that are right for the wrong reasons."""


for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")


def main(argv=None) -> None:
    try:
        cli.main(args=argv, prog_name="focusml", standalone_mode=False)
    except FocusmlError as e:
        click.secho(f"Error: {e}", fg="red", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
