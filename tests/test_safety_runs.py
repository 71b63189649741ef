"""Runs that cannot go wrong quietly (issue 12), in this process and on tiny data: resuming from any
epoch reaches the same bits, divergence ends a run FAILED with its cause, suspect results are
flagged, metrics are never dropped, bad method options and bad `--resume`s are refused before
anything is touched, a run's model is never unpickled, and a study's dead trials are retried.

The real-process faults (signals, a killed server, parallel first runs, killed tune workers)
are in test_faults.py.
"""

from __future__ import annotations

import io
import math
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import torch

from focusml import FocusmlError, tracking
from focusml.core.callbacks import Callbacks
from focusml.core.config import MaskAugment, RunConfig
from focusml.core.run import health_warnings, run
from focusml.core.train import Diverged, FitResult
from helpers import run_cli
from test_folder import make_tree


@pytest.fixture
def tiny_data(tmp_path):
    """A folder dataset of 2 classes × 8 images of 16×16 with masks: an epoch takes milliseconds."""
    return make_tree(tmp_path / "ds", per_class=8, size=(16, 16))


def tiny(root: Path, **kw) -> RunConfig:
    base = dict(dataset="folder", data_root=str(root), epochs=3, batch_size=8, device="cpu", log_model=False)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture
def sqlite_tracking(tmp_path, monkeypatch):
    """A SQLite tracking store that does not exist yet (this process and subprocesses)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return tmp_path / "mlflow.db"


@pytest.fixture(scope="module")
def _module_store(tmp_path_factory):
    return tmp_path_factory.mktemp("store") / "mlflow.db"


@pytest.fixture
def store(_module_store, monkeypatch, request):
    """One SQLite tracking store for the tests of this module (creating one costs seconds); each test
    works in its own experiment, named after the test (returned)."""
    uri = f"sqlite:///{_module_store}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    name = request.node.name[:60]
    mlflow.set_experiment(name)
    return name


def runs_in(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0


class Saves(Callbacks):
    """Keeps every epoch's training state as the bytes `torch.save` writes."""

    def __init__(self):
        self.saved: dict[int, bytes] = {}

    def on_checkpoint(self, epoch, state):
        buf = io.BytesIO()
        torch.save(state, buf)
        self.saved[epoch] = buf.getvalue()


def without_time(history):
    return [{k: v for k, v in h.items() if k != "time/epoch_s"} for h in history]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


# ---- resume: bit-identical from any epoch -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method, extra", [
    ("random_crop", {"augment": MaskAugment(jitter=1, keep_fraction=0.7)}),  # batch order, masks and donors draw from the generator
    ("pas", {"method_params": {"lam": 1.0}}),  # a penalty, Adam's moments, the selector's best state
    ("selective_dropout", {}),  # layer hooks and the generator
])
def test_resuming_from_any_epoch_reaches_the_same_bits(tiny_data, method, extra):
    keep = Saves()
    full = run(tiny(tiny_data, method=method, **extra).validate(), keep)
    assert sorted(keep.saved) == [0, 1, 2]
    for epoch in (0, 1):
        state = torch.load(io.BytesIO(keep.saved[epoch]), weights_only=True)  # what resume.pt holds
        again = run(tiny(tiny_data, method=method, **extra).validate(), Callbacks(), resume=state)
        assert without_time(again.history) == without_time(full.history)
        assert same({k: v for k, v in again.metrics.items() if not k.startswith("time/")},
                    {k: v for k, v in full.metrics.items() if not k.startswith("time/")})
        a, b = full.model.state_dict(), again.model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


# ---- divergence and suspect results -------------------------------------------------------------------


@pytest.mark.slow
def test_an_exploding_loss_stops_the_run_failed_naming_the_learning_rate(tiny_data, store):
    with pytest.raises(Diverged) as err:
        tracking.run(tiny(tiny_data, lr=1e6, experiment=store))
    msg = str(err.value)
    assert "training diverged" in msg and "--lr 1e+06" in msg and "learning rate is likely too large" in msg
    (r,) = mlflow.search_runs(experiment_names=[store], output_format="list")
    assert r.info.status == "FAILED"
    assert r.data.tags["focusml.failure"].startswith("Diverged: training diverged")


def test_a_penalty_method_that_diverges_names_lambda_too(tiny_data):
    with pytest.raises(Diverged, match=r"--lr 1e\+06, --lam 1\); the learning rate or λ is likely too large: "
                                       r"try --lr 100000 or --lam 0.1"):
        run(tiny(tiny_data, method="pas", lr=1e6, method_params={"lam": 1.0}).validate())


def test_chance_accuracy_and_an_all_zero_cam_are_flagged(tiny_data):
    from focusml.core.data import DataOptions, load

    data = load("folder", DataOptions(root=tiny_data))
    fitted = FitResult(history=[{"acc/val": 0.5}], selected_epoch=0)
    warnings = health_warnings(data, fitted, torch.zeros(4, 16, 16))
    assert len(warnings) == 2
    assert warnings[0].startswith("the model ends at chance accuracy (acc/val 0.500, majority class 0.500)")
    assert warnings[1].startswith("the CAM is zero on every test image")
    fitted.history = [{"acc/val": 0.9}]
    assert health_warnings(data, fitted, torch.ones(4, 16, 16)) == []


@pytest.mark.slow
def test_warnings_are_tagged_and_non_finite_metrics_are_logged(tiny_data, store, monkeypatch):
    import focusml.core.run

    monkeypatch.setattr(focusml.core.run, "health_warnings", lambda *a: ["first thing", "second thing"])
    result = tracking.run(tiny(tiny_data, epochs=1, experiment=store))
    r = mlflow.get_run(result.run_id)
    assert r.data.tags["focusml.warning"] == "first thing; second thing" and r.info.status == "FINISHED"
    with mlflow.start_run(run_id=result.run_id):
        tracking.log_metrics({"x/nan": float("nan"), "x/inf": float("inf"), "x/none": None}, step=0)
    m = mlflow.get_run(result.run_id).data.metrics
    assert math.isnan(m["x/nan"]) and m["x/inf"] == pytest.approx(1.7976931348623157e308) and "x/none" not in m


# ---- bad options: exit 2, one line, nothing in the store ----------------------------------------------


def assert_refused(code, out, err, *needles):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args, needles", [
    (["--method", "generative", "--inpainter", "os:system"],
     ["--inpainter os:system names Python's standard library (module 'os')", "give module:callable"]),
    (["--method", "generative", "--inpainter", "subprocess:run"], ["names Python's standard library"]),
    (["--method", "generative", "--inpainter", "torch:zeros"], ["--inpainter torch:zeros is a built-in function"]),
    (["--method", "generative", "--inpainter", "focusml.core.methods.generative.inpainter:fill"],
     ["but an inpainter is called as fn(x_masked, m)"]),
    (["--method", "generative", "--inpainter", "focusml.core.methods.generative.inpainter:VERSION"],
     ["names a value of type int, not a callable"]),
    (["--method", "generative", "--inpainter", "torch.nn:PairwiseDistance"],
     ["it must return a tensor shaped like its input"]),  # takes two inputs, returns distances: the trial call shows it
    (["--method", "generative", "--inpainter", "os"], ["--inpainter is 'os'; give module:callable"]),
    (["--method", "selective_dropout", "--layers", "nosuch"],
     ["--layers for method 'selective_dropout' names 'nosuch', which the model does not have", "features.0"]),
    (["--method", "selective_dropout", "--layers", "input,features.99"], ["names 'features.99'"]),
])
def test_bad_method_options_are_refused_before_the_run(tiny_data, sqlite_tracking, capsys, args, needles):
    code, out, err = run_cli(["train", "--dataset", "folder", "--data-root", str(tiny_data), "--epochs", "1",
                          "--device", "cpu", *args], capsys)
    assert_refused(code, out, err, *needles)
    assert not sqlite_tracking.exists()  # not even the store file was created


@pytest.mark.slow
def test_a_user_inpainter_that_fits_is_used(tiny_data, store, tmp_path, monkeypatch):
    # a module name no other test uses: sys.modules keeps the first module of a name for the session
    (tmp_path / "grey_fill_inpaint.py").write_text("def fill(x, m):\n    return x * 0 + 0.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = tracking.run(tiny(tiny_data, method="generative", epochs=1, experiment=store,
                               method_params={"inpainter": "grey_fill_inpaint:fill"}))
    assert mlflow.get_run(result.run_id).info.status == "FINISHED"


# ---- --resume refusals ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_refuses_what_it_cannot_continue(tiny_data, store, capsys):
    done = tracking.run(tiny(tiny_data, epochs=2, experiment=store))
    code, out, err = run_cli(["train", "--resume", done.run_id], capsys)
    assert_refused(code, out, err, f"run {done.run_id} is FINISHED: there is nothing to resume")
    code, out, err = run_cli(["train", "--resume", "0" * 32], capsys)
    assert_refused(code, out, err, f"run {'0' * 32} not found")

    class Stop(Callbacks):
        def on_epoch_end(self, epoch, metrics, model):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # stopped after its first epoch: KILLED, resumable
        tracking.run(tiny(tiny_data, epochs=3, experiment=store), callbacks=Stop())
    (killed,) = [r for r in mlflow.search_runs(experiment_names=[store], output_format="list")
                 if r.info.status == "KILLED"]
    rid = killed.info.run_id
    assert killed.data.tags["focusml.killed"] == "SIGINT"
    assert (tracking.run_dir(rid) / "resume.pt").is_file()
    code, out, err = run_cli(["train", "--resume", rid, "--lr", "0.1", "--epochs", "3"], capsys)
    assert_refused(code, out, err, "continues the run with its own options; these differ: --lr 0.1 (the run has 0.003)")
    assert mlflow.get_run(rid).info.status == "KILLED"  # untouched

    with pytest.raises(RuntimeError):  # FAILED before its first epoch ended: nothing to resume from
        class Early(Callbacks):
            def on_batch_end(self, epoch, step, steps, loss):
                raise RuntimeError("boom before the first epoch ended")
        tracking.run(tiny(tiny_data, epochs=3, run_name="early", experiment=store), callbacks=Early())
    (failed,) = [r for r in mlflow.search_runs(experiment_names=[store], output_format="list")
                 if r.info.run_name == "early"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["focusml.failure"] == "RuntimeError: boom before the first epoch ended"
    code, out, err = run_cli(["train", "--resume", failed.info.run_id], capsys)
    assert_refused(code, out, err, "has no resumable checkpoint")

    from focusml.tracking.keeper import RunLock

    holder = RunLock(tracking.run_dir(rid))  # as a process still working on the run holds it
    holder.acquire(rid)
    try:
        code, out, err = run_cli(["train", "--resume", rid], capsys)
        assert_refused(code, out, err, f"run {rid} is still running here (pid {os.getpid()})")
    finally:
        holder.release()
    assert mlflow.get_run(rid).info.status == "KILLED"

    # the KILLED run resumes in the same run: the same options given again are accepted
    code, out, err = run_cli(["train", "--resume", rid, "--epochs", "3", "--device", "cpu"], capsys)
    assert code == 0, err
    r = mlflow.get_run(rid)
    assert r.info.status == "FINISHED" and r.data.tags["focusml.resumed"] == "after epoch 1"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(rid, "acc/val")]
    assert steps == [1, 2, 3]  # one-based, as the progress bar counts
    assert not tracking.run_dir(rid).exists()  # FINISHED: the local folder is gone


# ---- a run's model is loaded from its weights only -----------------------------------------------------


class _Opens:
    """Unpickling this writes a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


@pytest.mark.slow
def test_load_run_model_never_unpickles(tiny_data, store, tmp_path, monkeypatch):
    marker = tmp_path / "CODE-RAN"
    monkeypatch.setattr(mlflow.pytorch, "load_model", lambda *a, **k: pytest.fail("the pickled model was loaded"))
    with mlflow.start_run() as r:  # a run with something under model/ but no checkpoint
        mlflow.log_text("flavors: {pytorch: {}}\n", "model/MLmodel")
    with pytest.raises(FocusmlError, match="has no checkpoints/last.pt, and focusml loads a run's model from its "
                                           "weights only"):
        tracking.load_run_model(r.info.run_id)
    with mlflow.start_run() as r:  # a checkpoint that is a pickle
        bad = tmp_path / "last.pt"
        torch.save({"classifier.weight": _Opens(marker)}, bad)
        mlflow.log_artifact(str(bad), artifact_path="checkpoints")
    with pytest.raises(FocusmlError, match="checkpoints/last.pt is not a plain state dict of tensors"):
        tracking.load_run_model(r.info.run_id)
    assert not marker.exists()
    good = tracking.run(tiny(tiny_data, epochs=1, experiment=store))
    assert hasattr(tracking.load_run_model(good.run_id), "forward_features")


# ---- SQLite: the schema is created once, under a lock ---------------------------------------------------


@pytest.mark.slow
def test_the_store_lock_serialises_schema_creation(tmp_path):
    from focusml.tracking.store import ensure_store, store_lock

    uri = f"sqlite:///{tmp_path / 'new.db'}"
    with store_lock(uri):  # another process holding the lock makes this one wait
        code = ("import time; from focusml.tracking.store import ensure_store; "
                f"ensure_store({uri!r}); print(time.time())")
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
        time.sleep(8)
        assert proc.poll() is None  # still waiting for the lock
        released = time.time()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and float(out) >= released  # it created the schema only after the lock was free
    ensure_store(uri)
    assert runs_in(tmp_path / "new.db") == 0 and (tmp_path / "new.db.lock").exists()


# ---- Optuna: dead and stale trials are failed, their runs closed, their params retried ------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rdb", "journal"])
def test_dead_and_stale_trials_are_retried_with_their_params(tmp_path, store, monkeypatch, kind):
    from focusml.tune.recovery import HOST, fail_dead_local, on_stale
    from focusml.tune.storage import open_storage, with_heartbeat

    monkeypatch.setenv("FOCUSML_TUNE_HEARTBEAT_S", "1")  # grace: 3 s
    storage = f"sqlite:///{tmp_path / 'optuna.db'}" if kind == "rdb" else str(tmp_path / "optuna.journal")
    store = with_heartbeat(open_storage(storage)[0], on_stale)
    study = optuna.create_study(study_name="s", storage=store)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runs = {}
    for number, pid in ((0, dead.pid), (1, os.getpid())):
        trial = study.ask()
        trial.suggest_float("lr", 0.001, 0.01)
        trial.set_user_attr("worker_pid", pid)
        trial.set_user_attr("worker_host", HOST)
        with mlflow.start_run(tags={"optuna.study_name": "s", "optuna.trial_number": str(number)}) as r:
            runs[number] = r.info.run_id
        mlflow.MlflowClient().update_run(r.info.run_id, "RUNNING")  # as a dead worker leaves it
        store.record_heartbeat(trial._trial_id)
    assert fail_dead_local(study) == [0]  # trial 0's process is gone; trial 1's (this one) lives
    time.sleep(4)  # trial 1 stops beating: past the grace period
    fail_dead_local(study)  # also runs Optuna's fail_stale_trials
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "WAITING", "WAITING"]
    assert [t.params["lr"] for t in trials[2:]] == [trials[0].params["lr"], trials[1].params["lr"]]
    assert [t.system_attrs["retry_history"] for t in trials[2:]] == [[0], [1]]
    assert all("worker_pid" not in t.user_attrs for t in trials[2:])
    for number, why in ((0, f"its worker process (pid {dead.pid}) died"), (1, "no Optuna heartbeat for 3 s")):
        r = mlflow.get_run(runs[number])
        assert r.info.status == "KILLED" and why in r.data.tags["focusml.killed"], r.data.tags
    nxt = study.ask()  # the next trial is the first retry, with its params
    assert nxt.number == 2 and nxt.suggest_float("lr", 0.001, 0.01) == trials[0].params["lr"]
