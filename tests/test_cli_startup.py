"""The CLI answers help and listings without importing torch, MLflow or scikit-learn (a command imports them when it runs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from focusml.generate import catalog

HEAVY = ("torch", "mlflow", "sklearn", "optuna", "pandas")

# Each of these must answer from the lazy group, the stored catalog and click alone.
LIGHT = [["--help"], ["methods"], ["datasets", "list"], ["datasets", "--help"], ["datasets", "show", "--help"],
         ["compare", "--help"], ["register", "--help"], ["server", "--help"], ["masks", "serve", "--help"],
         ["filters", "--help"], ["tune", "--help"], ["train", "--help"], ["predict", "--help"]]


def test_catalog_is_current():
    assert catalog.stored() is not None, "focusml/generate/catalog.json is out of date: run `python -m focusml.generate.catalog`"
    assert catalog.stored() == {"digest": catalog.sources_digest(), **catalog.build()}


@pytest.mark.parametrize("argv", LIGHT, ids=" ".join)
def test_light_commands_import_nothing_heavy(argv):
    code = (f"import sys\nfrom focusml.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit as e:\n"
            f"    assert not e.code, e.code\nprint('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_a_stale_catalog_is_not_used(tmp_path, monkeypatch):
    stale = tmp_path / "catalog.json"
    stale.write_text(json.dumps({"digest": "0" * 16, "methods": [{"method": "gone"}], "datasets": []}))
    monkeypatch.setattr(catalog, "CATALOG", stale)
    assert catalog.stored() is None
    assert catalog.listing("methods") == catalog.build()["methods"]


def test_methods_lists_every_registered_method():
    from focusml.core.methods import METHODS

    out = subprocess.run([sys.executable, "-m", "focusml", "methods"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in METHODS:
        assert f"\n{name} " in out.stdout
