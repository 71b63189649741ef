"""The house's layers hold: import-linter's contracts (pyproject.toml), a lazy CLI, no cycles."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    """cli → analysis | tune | masktool | generate → tracking → core; MLflow only in tracking; core never
    reaches MLflow or Optuna; the cross-run summary needs no tracking; no import cycles."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("`lint-imports` is missing: pip install -e '.[dev]' (it installs import-linter)")
    res = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_help_lists_every_command_without_importing_them():
    code = ("import sys; from focusml.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('focusml.cli.') or m.split('.')[0] in "
            "('mlflow', 'optuna', 'torch'))\n"
            "print('LOADED', loaded)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "LOADED []" in res.stdout, res.stdout.splitlines()[-1]
    for name in ("compare", "datasets", "filters", "masks", "methods", "register", "server", "train", "tune"):
        assert f"\n  {name} " in res.stdout


def test_lazy_help_lines_match_the_commands():
    from focusml.cli import COMMANDS, cli

    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        for limit in (40, 80, 200):
            listed = click.Command(name, help=COMMANDS[name][2]).get_short_help_str(limit)
            assert listed == command.get_short_help_str(limit), name


def test_every_module_sits_in_a_layer():
    """Every module and package directly under focusml/ is named by the layers contract, so none escapes
    lint-imports: the core is one package (focusml.core), not loose modules listed by hand."""
    import re
    import tomllib

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["id"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in re.split(r"[|:]", layer)}
    children = {f"focusml.{p.stem}" for p in (REPO / "focusml").iterdir()
                if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p / "__init__.py").is_file()}
    assert children - named == set(), f"not in any layer of pyproject.toml's layers contract: {children - named}"
    assert {"focusml.core", "focusml.generate"} <= named
