"""`focusml datasets export` round trip, `focusml methods`, `focusml server` on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from click.testing import CliRunner

from focusml.cli import cli
from focusml.core.data import DataOptions, load
from focusml.core.methods import METHODS


def test_export_then_load_as_folder_gives_the_same_tensors(tmp_path, digits):
    res = CliRunner().invoke(cli, ["datasets", "export", "decoy-digits", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d" / "masks" / "train" / "0").is_dir() and (tmp_path / "d" / "clean" / "test").is_dir()
    back = load("folder", DataOptions(root=tmp_path / "d"))
    assert back.classes == digits.classes
    for name in ("train", "test", "test_confounded", "train_clean"):
        a, b = digits.split(name), back.split(name)
        # export groups rows by class folder; compare as sorted multisets per class
        for c in range(10):
            ia, ib = a.images[a.labels == c], b.images[b.labels == c]
            assert ia.shape == ib.shape
            key = lambda t: t.flatten(1).float() @ torch.arange(t[0].numel(), dtype=torch.float)  # noqa: E731
            assert torch.equal(key(ia).sort().values, key(ib).sort().values)
        assert int(a.masks.sum()) == int(b.masks.sum())


def test_methods_lists_every_registered_method():
    res = CliRunner().invoke(cli, ["methods"])
    assert res.exit_code == 0
    for name, cls in METHODS.items():
        assert name in res.output and cls.family in res.output


@pytest.mark.server
@pytest.mark.slow
def test_server_binds_loopback_and_answers(tmp_path, free_port, wait_healthy, stop_group):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "focusml", "server", "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.status == 200
        out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
        lines = [l for l in out.splitlines() if f":{port} " in l]
        assert lines and all("127.0.0.1" in l for l in lines), lines
    finally:
        stop_group(proc)
    assert (tmp_path / "mlflow.db").exists()
