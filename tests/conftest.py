"""Shared fixtures: a real `mlflow server` (SQLite backend, free loopback port), tiny configs, and
the helpers tests use to start and stop processes. Tests get them as fixtures (never `from conftest
import ...`).

Markers (`make test-fast` deselects all three):
- `server`: starts or talks to a real `mlflow server`; set automatically on every test that uses
  the `mlflow_server` fixture (directly or through `tracking_env`), and by hand on tests that start
  a server themselves;
- `slow`: trains models for whole epochs or runs the `focusml` CLI in a subprocess; set
  automatically on tests that use `cli_env`, by hand on the others;
- `browser`: drives headless Chromium.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "mlflow_server" in item.fixturenames:
            item.add_marker(pytest.mark.server)
        if "cli_env" in item.fixturenames:
            item.add_marker(pytest.mark.slow)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {url} did not become healthy in {timeout}s")


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True and everything it spawned."""
    import signal

    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server over HTTP; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        _stop_group(proc)
        log.close()


@pytest.fixture
def tracking_env(mlflow_server, monkeypatch):
    """Point MLflow (in this process and in subprocesses) at the test server."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FOCUSML_CACHE", str(tmp_path_factory.getbasetemp() / "focusml-cache"))


@pytest.fixture(scope="session")
def digits():
    from focusml.core.data import load

    return load("decoy-digits")


def _tiny_config(**kw):
    """A 1-epoch, CPU run config for tests."""
    from focusml.core.config import RunConfig

    base = dict(epochs=1, batch_size=64, device="cpu", log_model=False)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="session")
def tiny_config():
    """`tiny_config(**fields)`: a 1-epoch, CPU, no-model-logging RunConfig with those fields changed."""
    return _tiny_config


@pytest.fixture(scope="session")
def free_port():
    """`free_port()`: a free TCP port on the loopback interface."""
    return _free_port


@pytest.fixture(scope="session")
def wait_healthy():
    """`wait_healthy(url, proc)`: wait until an MLflow server answers /health (or its process dies)."""
    return _wait_healthy


@pytest.fixture(scope="session")
def stop_group():
    """`stop_group(proc)`: stop a process started with start_new_session=True and all it spawned."""
    return _stop_group


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """The folder of this Python's console scripts (`focusml`, `mlflow`)."""
    return VENV_BIN


@pytest.fixture
def cli_env(tmp_path):
    """Environment for running `focusml` in a subprocess from a scratch directory."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # as with an activated venv
    return env


def _make_folder(root: Path, per_class: dict[str, int], annotated: dict[str, float] | None = None) -> Path:
    """A folder dataset of tiny 12×12 greyscale PNGs, classes cat and dog (a bright bar's orientation) with a
    shortcut patch in a corner that follows the label; a mask file (the patch) for the share `annotated[split]`
    of a split's images (drawn with a fixed seed), no mask file for the others."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        rows = [(cls, i) for i in range(n) for cls in ("cat", "dog")]
        masked = set(rng.permutation(len(rows))[:round((annotated or {}).get(split, 0) * len(rows))].tolist())
        for k, (cls, i) in enumerate(rows):
            img = (rng.random((12, 12)) * 60).astype(np.uint8)
            if cls == "cat":
                img[5:7, 2:10] = 220
            else:
                img[2:10, 5:7] = 220
            corner = (slice(0, 3), slice(0, 3)) if cls == "cat" else (slice(0, 3), slice(9, 12))
            img[corner] = 255
            files = [(root / "images" / split / cls / f"{cls}{i}.png", img)]
            if k in masked:
                mask = np.zeros((12, 12), np.uint8)
                mask[corner] = 255
                files.append((root / "masks" / split / cls / f"{cls}{i}.png", mask))
            for path, arr in files:
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path)
    return root


@pytest.fixture(scope="session")
def make_folder():
    """`make_folder(root, {"train": 20, "val": 10, "test": 10}, {"train": 0.1})`: a tiny folder dataset (that
    many images per class and split) with mask files for the given share of a split's images."""
    return _make_folder


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster (tests/postgres.py), started once; `postgres.createdb(name)` gives a
    database URL. Skips where the binaries or the psycopg2 driver are missing."""
    import importlib.util

    from postgres import MISSING_BINARIES, MISSING_DRIVER, Cluster, find_bin

    bindir = find_bin()
    if bindir is None:
        pytest.skip(MISSING_BINARIES)
    if importlib.util.find_spec("psycopg2") is None:
        pytest.skip(MISSING_DRIVER)
    cluster = Cluster(bindir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's, through Playwright); the test is skipped, naming the package, where
    either is missing. Each `browser.new_context()` is a fresh profile."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser tests need the `playwright` Python package (pip install -e '.[dev]')")
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if exe is None:
        pytest.skip("browser tests need Debian's `chromium` package (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()
