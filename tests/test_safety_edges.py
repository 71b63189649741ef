"""Bad input at the edges and faults that must leave a truthful state (issues 22 and 26), through the CLI
in this process (`focusml.cli.main`: exit status 2 and one `Error:` line) on tiny data and a SQLite store:
short run ids, register's name and alias, `runs:/` paths, a taken port, dataset export, types in
configs and study files, a corrupt resume checkpoint, store and storage URIs, a tune call killed while it
closed a retried trial's run, an image size that cannot fit in memory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import pytest

from focusml import tracking
from focusml.core.callbacks import Callbacks
from helpers import as_in_a_terminal, run_cli
from test_folder import make_tree
from test_safety_runs import (_module_store, assert_refused, runs_in, sqlite_tracking, store, tiny,  # noqa: F401
                              tiny_data)


@pytest.fixture(scope="module")
def trained(_module_store, tmp_path_factory):
    """One finished 1-epoch run with its logged model in the module's store (the source for the tests here)."""
    root = make_tree(tmp_path_factory.mktemp("data") / "ds", per_class=8, size=(16, 16))
    mp = pytest.MonkeyPatch()
    uri = f"sqlite:///{_module_store}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        result = tracking.run(tiny(root, epochs=1, log_model=True, experiment="edges-source"))
    finally:
        mp.undo()
    return result.run_id, root


def _fabricated_run(experiment: str, run_id: str) -> str:
    """A run with a chosen id (MLflow draws ids with uuid4: the store's draw is replaced for one call)."""
    import mlflow.store.tracking.sqlalchemy_store as sql_store

    real = sql_store.uuid
    sql_store.uuid = type("U", (), {"uuid4": staticmethod(lambda: uuid.UUID(run_id))})
    try:
        exp = mlflow.get_experiment_by_name(experiment) or mlflow.get_experiment(mlflow.create_experiment(experiment))
        return mlflow.MlflowClient().create_run(exp.experiment_id).info.run_id
    finally:
        sql_store.uuid = real


# ---- A. short run ids ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_unique_prefix_is_accepted_wherever_a_run_id_is(trained, store, capsys, tmp_path):
    run_id, root = trained
    short = run_id[:8]
    code, out, err = run_cli(["register", short, "--name", "edges-short", "--alias", "champion"], capsys)
    assert code == 0, err
    version = mlflow.MlflowClient().get_model_version_by_alias("edges-short", "champion")
    assert version.tags["source_run_id"] == run_id

    for source in (short, f"runs:/{short}/checkpoints/last.pt"):
        code, out, err = run_cli(["train", "--dataset", "folder", "--data-root", str(root), "--epochs", "1",
                              "--batch-size", "8", "--device", "cpu", "--no-log-model", "--experiment", store,
                              "--init-from", source], capsys)
        assert code == 0, err
        new = next(line.split()[-1] for line in out.splitlines() if line.startswith("run_id:"))
        assert mlflow.get_run(new).data.tags["focusml.init_from"] == run_id

    code, out, err = run_cli(["filters", short[:6], "--no-log", "--out", str(tmp_path / "f"), "--figures", "1"], capsys)
    assert code == 0, err


def test_an_ambiguous_unknown_or_too_short_prefix_is_refused(store, capsys):
    a = _fabricated_run(store, "abcdef12" + "0" * 24)
    b = _fabricated_run(store, "abcdef34" + "0" * 24)
    code, out, err = run_cli(["register", "abcdef", "--name", "edges-amb"], capsys)
    line = assert_refused(code, out, err, "run id abcdef is ambiguous", a, b, "Give more characters")
    code, out, err = run_cli(["train", "--resume", "ABCDEF5"], capsys)
    assert_refused(code, out, err, "--resume ABCDEF5: no run id starts with abcdef5 in sqlite:///")
    code, out, err = run_cli(["train", "--init-from", "fedcba98", "--epochs", "1", "--device", "cpu"], capsys)
    assert_refused(code, out, err, "--init-from fedcba98: no run id starts with fedcba98 in sqlite:///")
    code, out, err = run_cli(["register", "abcde", "--name", "edges-amb"], capsys)
    assert_refused(code, out, err, "run id abcde is too short: give at least 6 characters")
    assert "edges-amb" not in [m.name for m in mlflow.MlflowClient().search_registered_models()], line


# ---- B. register: name and alias checked before a version exists ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("args, needles", [
    (["--name", "edges-reg", "--alias", "v1"], ["--alias 'v1' cannot be used", "Version alias name 'v1' is reserved"]),
    (["--name", "edges-reg", "--alias", "Latest"], ["--alias 'Latest' cannot be used", "reserved"]),
    (["--name", "edges-reg", "--alias", "my alias"], ["--alias 'my alias' cannot be used", "alphanumerics"]),
    (["--name", "a/b"], ["--name 'a/b' is not a valid registered model name", "cannot contain '/'"]),
    (["--name", ""], ["--name '' is not a valid registered model name"]),
])
def test_register_refuses_a_bad_name_or_alias_before_creating_a_version(trained, store, capsys, args, needles):
    run_id, _ = trained
    code, out, err = run_cli(["register", run_id, *args], capsys)
    assert_refused(code, out, err, *needles)
    client = mlflow.MlflowClient()
    assert not [m for m in client.search_registered_models() if m.name in ("edges-reg", "a/b")]


# ---- C. runs:/RUN/PATH stays inside the run's artifacts, and is honoured or refused ----------------------


@pytest.mark.slow
def test_a_runs_uri_path_is_confined_to_the_run_and_never_ignored(trained, store, capsys, tmp_path):
    run_id, root = trained
    train = ["train", "--dataset", "folder", "--data-root", str(root), "--epochs", "1", "--batch-size", "8",
             "--device", "cpu", "--no-log-model", "--experiment", store, "--init-from"]
    for path in ("../../../x.pt", "checkpoints/../../x.pt", "/etc/passwd"):
        code, out, err = run_cli([*train, f"runs:/{run_id}/{path}"], capsys)
        assert_refused(code, out, err, "must stay inside the run's artifacts (no '..', no absolute path)")
    code, out, err = run_cli([*train, f"runs:/{run_id}/last.pth"], capsys)
    assert_refused(code, out, err, f"run {run_id} has no artifact file last.pth (its files: ", "checkpoints/last.pt")
    assert mlflow.search_runs(experiment_names=[store], output_format="list") == []

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/last.pt", dst_path=str(tmp_path))
    (tmp_path / "last.pth").write_bytes(open(local, "rb").read())
    mlflow.MlflowClient().log_artifact(run_id, str(tmp_path / "last.pth"))
    code, out, err = run_cli([*train, f"runs:/{run_id[:8]}/last.pth"], capsys)
    assert code == 0, err
    (new,) = mlflow.search_runs(experiment_names=[store], output_format="list")
    assert new.data.tags["focusml.init_from_checkpoint"] == "last.pth"


# ---- D. a taken port, a port out of range --------------------------------------------------------------


@pytest.mark.server
@pytest.mark.slow
def test_server_refuses_a_taken_port_naming_it_and_its_holder(tmp_path, free_port):
    port = free_port()
    with socket.socket() as other:  # another program listening on the port
        other.bind(("127.0.0.1", port))
        other.listen()
        res = subprocess.run([sys.executable, "-m", "focusml", "server", "--port", str(port)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"Error: port {port} on 127.0.0.1 is taken (held by pid {os.getpid()}: "), line
    assert "another --port" in line and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("args", [["server", "--port", "70000"], ["server", "--port", "0"],
                                  ["masks", "serve", ".", "--port", "-1"], ["masks", "serve", ".", "--port", "70000"]])
def test_a_port_out_of_range_is_one_line(args, capsys):
    code, out, err = run_cli(args, capsys)
    assert_refused(code, out, err, "Invalid value for '--port'", "is not in the range")


# ---- E. dataset export: atomic, never over someone else's folder --------------------------------------


def test_export_refuses_a_foreign_folder_and_replaces_only_with_force(tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("my notes")
    export = ["datasets", "export", "folder", str(out), "--data-root", str(tiny_data)]
    code, o, err = run_cli(export, capsys)
    assert_refused(code, o, err, f"{out} is not empty: it holds files that are not a focusml export", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]

    code, o, err = run_cli([*export, "--force"], capsys)
    assert code == 0, err
    record = json.loads((out / ".focusml-export.json").read_text())
    assert record["dataset"] == "folder" and record["data_seed"] == 0 and len(record["fingerprint"]) == 16
    assert not (out / "mine.txt").exists() and (out / "masks" / "train").is_dir()
    code, o, err = run_cli(export, capsys)  # the same export again: accepted
    assert code == 0, err
    code, o, err = run_cli([*export, "--data-seed", "3"], capsys)
    assert_refused(code, o, err, "it holds an export of folder (data seed 0, fingerprint")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


@pytest.mark.slow
def test_ctrl_c_mid_export_leaves_no_half_written_folder(tmp_path):
    out = tmp_path / "digits"
    for _ in range(3):  # until the Ctrl-C lands while the export is still writing
        proc = subprocess.Popen([sys.executable, "-m", "focusml", "datasets", "export", "decoy-digits", str(out)],
                                cwd=tmp_path, stderr=subprocess.PIPE, text=True, preexec_fn=as_in_a_terminal)
        deadline = time.time() + 120
        while not any(tmp_path.glob(".digits.partial-*/images/*")):  # writing has begun
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else ""
            time.sleep(0.01)
        # Stopped at once, so the export cannot finish between here and the Ctrl-C (on a quiet machine it writes
        # its few thousand files faster than a polling loop notices them); the Ctrl-C is delivered on SIGCONT.
        proc.send_signal(signal.SIGSTOP)
        if any(tmp_path.glob(".digits.partial-*")):  # still writing (on a loaded machine it may already be done)
            break
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=60) == 0
        shutil.rmtree(out)
    assert proc.poll() is None, "the export finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    assert proc.wait(timeout=60) == 130
    assert proc.stderr.read().strip().splitlines()[-1] == "Aborted."
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary folder


# ---- F. types checked at the edge: config files, --set, study files ------------------------------------


@pytest.mark.parametrize("yaml_text, needle", [
    ("batch_size: 2.5", "--batch-size is 2.5; give a whole number."),
    ("lr: fast", "--lr is 'fast'; give a number."),
    ("seed: abc", "--seed is 'abc'; give a whole number."),
    ("epochs: true", "--epochs is true; give a whole number."),
    ("method: pas\ndilate: 1.5", "--dilate is 1.5; give a whole number."),
    ("method: pas\nlam: [1]", "--lam for method 'pas' is [1]; give a number."),
    ("log_model: 1", "--log-model is 1; give true or false."),
])
def test_a_config_value_of_the_wrong_type_is_refused_before_any_run(yaml_text, needle, sqlite_tracking, tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(yaml_text + "\n")
    code, out, err = run_cli(["train", "--config", str(tmp_path / "run.yaml"), "--device", "cpu"], capsys)
    assert_refused(code, out, err, needle)
    assert not sqlite_tracking.exists()


def test_a_seed_too_large_for_torch_is_refused(sqlite_tracking, capsys):
    code, out, err = run_cli(["train", "--seed", str(2**70), "--device", "cpu"], capsys)
    assert_refused(code, out, err, f"--seed is {2**70}; give a whole number from 0 to 4294967295.")
    assert not sqlite_tracking.exists()


@pytest.mark.parametrize("change, args, needle", [
    ({}, ["--set", "batch_size=2.5"], "fixed options do not make a valid run: --batch-size is 2.5; give a whole number."),
    ({"enqueue": [{"lam": "fast"}]}, [], "enqueue[0].lam is 'fast'; give a number."),
    ({"enqueue": [{"lam": 1e9}]}, [], "enqueue[0].lam is 1000000000.0; it must lie in search.lam's range"),
    ({"sampler": {"name": "tpe", "n_startup_trials": 2.5}}, [], "sampler.n_startup_trials is 2.5; give a whole number."),
    ({"sampler": {"name": "tpe", "multivariate": 1}}, [], "sampler.multivariate is 1; give true or false."),
    ({}, ["--register", "a/b"], "--name 'a/b' is not a valid registered model name"),
    ({}, ["--register", ""], "--name '' is not a valid registered model name"),
])
def test_a_study_value_of_the_wrong_type_is_refused_before_the_study(change, args, needle, sqlite_tracking, tmp_path,
                                                                      capsys, monkeypatch):
    import yaml

    study = yaml.safe_load(open(Path(__file__).parents[1] / "studies" / "pas.yaml"))
    study.update(change)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["tune", "s.yaml", "--n-trials", "1", *args], capsys)
    assert_refused(code, out, err, needle)
    assert not sqlite_tracking.exists() and not (tmp_path / "optuna.db").exists()


# ---- G. resume: a damaged local checkpoint, the end tags of a resumed run -------------------------------


class _StopAfterFirstEpoch(Callbacks):
    def on_epoch_end(self, epoch, metrics, model):
        raise KeyboardInterrupt


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_a_damaged_local_checkpoint_falls_back_to_the_uploaded_one(tiny_data, store, capsys, damage):
    with pytest.raises(KeyboardInterrupt):
        tracking.run(tiny(tiny_data, epochs=2, experiment=store), callbacks=_StopAfterFirstEpoch())
    (killed,) = [r for r in mlflow.search_runs(experiment_names=[store], output_format="list")
                 if r.info.status == "KILLED"]
    rid = killed.info.run_id
    local = tracking.run_dir(rid) / "resume.pt"
    data = local.read_bytes()
    local.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))

    code, out, err = run_cli(["train", "--resume", rid[:8]], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("Warning:") and "unreadable" in line]
    assert len(warnings) == 1, err
    warning = warnings[0]
    assert f"{local} is unreadable (" in warning and "resuming from the uploaded checkpoint instead (after epoch 1)" in warning
    run = mlflow.get_run(rid)
    assert run.info.status == "FINISHED" and run.data.tags["focusml.resumed"] == "after epoch 1"
    assert "focusml.killed" not in run.data.tags and "focusml.failure" not in run.data.tags
    assert run.data.tags["focusml.resumed_from"] == "KILLED: SIGINT"


# ---- H. stores and storages that cannot work: one line, nothing created -----------------------------------


@pytest.mark.parametrize("uri, needle", [
    ("foo://bar", "MLFLOW_TRACKING_URI is 'foo://bar': MLflow does not know the scheme 'foo://'"),
    ("{tmp}/runs", "MLFLOW_TRACKING_URI is '{tmp}/runs', a path: MLflow 3 keeps runs in a database or a server"),
    ("sqlite:///{tmp}/notes.txt", "{tmp}/notes.txt is not a SQLite database"),
    ("sqlite:///{tmp}", "{tmp} is a folder; give a database file"),
    ("sqlite:///{tmp}/missing/mlflow.db", "the folder {tmp}/missing does not exist; create it (mkdir -p {tmp}/missing)"),
])
@pytest.mark.parametrize("command", [["register", "abcdef12", "--name", "m"], ["train", "--epochs", "1", "--device", "cpu"]])
def test_a_tracking_uri_that_cannot_work_is_one_line(uri, needle, command, tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("not a database\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(tmp=tmp_path))
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run_cli(command, capsys)
    assert_refused(code, out, err, needle.format(tmp=tmp_path))
    assert sorted(tmp_path.rglob("*")) == before  # no folder, no database created


@pytest.mark.parametrize("storage, needle", [
    ("{tmp}", "--storage {tmp} is a folder; give a journal file, e.g. --storage {tmp}/optuna.journal"),
    ("{tmp}/missing/optuna.journal", "the folder {tmp}/missing does not exist"),
    ("sqlite:///{tmp}/missing/optuna.db", "the folder {tmp}/missing does not exist"),
    ("sqlite:///{tmp}/notes.txt", "{tmp}/notes.txt is not a SQLite database"),
])
def test_a_tune_storage_that_cannot_work_is_one_line(storage, needle, sqlite_tracking, tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("not a database\n")
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run_cli(["tune", str(Path(__file__).parents[1] / "studies" / "pas.yaml"), "--n-trials", "1",
                          "--storage", storage.format(tmp=tmp_path)], capsys)
    assert_refused(code, out, err, needle.format(tmp=tmp_path))
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.slow
def test_server_refuses_a_store_in_a_missing_folder(tmp_path, free_port):
    res = subprocess.run([sys.executable, "-m", "focusml", "server", "--port", str(free_port()), "--backend-store-uri",
                          f"sqlite:///{tmp_path}/missing/mlflow.db"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert f"--backend-store-uri sqlite:///{tmp_path}/missing/mlflow.db: the folder {tmp_path}/missing does not exist" in line
    assert list(tmp_path.iterdir()) == []


# ---- I. a tune call that died while it closed a retried trial's run -----------------------------------


def test_a_retried_trials_run_left_open_is_closed_saying_why_and_retried(tmp_path, store, free_port):
    """Issue 26, item 13. A `tune` call fails the trial of a dead worker, queues its retry, then closes the
    trial's MLflow run; killed (or the server away) between two of these writes, it leaves the run RUNNING,
    and perhaps no retry. The next call must finish the job: one retry per trial, the run closed as the
    trial's own stop ("worker process died; retried"), not as a generic stale child of the dead call — the
    state the flaky `test_tune_worker_and_whole_tune_sigkilled_then_the_study_resumes_exactly` hit.
    Trial 0: cut off after its retry was queued; trial 1: after it was failed, before its retry."""
    import optuna

    from focusml.tune.recovery import CALL_ATTR, HOST, PARENT, STOPPING, on_stale, recover, retry_trial
    from focusml.tune.storage import open_storage, with_heartbeat

    study = optuna.create_study(study_name="s13", storage=with_heartbeat(open_storage(str(tmp_path / "j"))[0], on_stale))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    why = f"its worker process (pid {dead.pid}) died"
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(store).experiment_id
    parent = client.create_run(experiment, tags={"focusml.kind": "tune", "optuna.study_name": "s13"}).info.run_id
    study.set_user_attr(PARENT + parent, {"host": HOST, "pid": dead.pid, "beat": time.time(), "done": False})
    trials, runs = [], []
    for number in (0, 1):
        trial = study.ask()
        trial.suggest_float("lr", 0.001, 0.01)
        for key, value in (("worker_pid", dead.pid), ("worker_host", HOST), (CALL_ATTR, parent)):
            trial.set_user_attr(key, value)
        trials.append(trial)
        runs.append(client.create_run(experiment, tags={"optuna.study_name": "s13", "optuna.trial_number": str(number),
                                                         "mlflow.parentRunId": parent}).info.run_id)
    for trial in trials:  # what `fail_dead_local` writes first
        study._storage.set_trial_system_attr(trial._trial_id, STOPPING, why)
        study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)

    # trial 0: its retry queued, then closing its run failed (the server away; a kill leaves the same)
    uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        with _no_http_retries(), pytest.warns(UserWarning, match="could not close"):
            retry_trial(study, study._storage.get_trial(trials[0]._trial_id), why)
    finally:
        mlflow.set_tracking_uri(uri)
    assert [client.get_run(r).info.status for r in runs] == ["RUNNING", "RUNNING"]

    recover(study)  # what the next `tune` call does first
    after = study.get_trials(deepcopy=False)
    assert [t.state.name for t in after] == ["FAIL", "FAIL", "WAITING", "WAITING"]  # each retried once
    assert [t.system_attrs["retry_history"] for t in after[2:]] == [[0], [1]]
    assert [t.params for t in after[2:]] == [after[0].params, after[1].params]
    for run_id in runs:
        run = client.get_run(run_id)
        assert run.info.status == "KILLED", run.info.status
        assert run.data.tags["focusml.killed"] == f"{why}; retried as a new trial with the same params"
    top = client.get_run(parent)
    assert top.info.status == "KILLED" and "the tune process stopped" in top.data.tags["focusml.killed"]
    recover(study)  # again: nothing more to do
    assert len(study.get_trials(deepcopy=False)) == 4


def _no_http_retries():
    from focusml import environment

    return environment({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"})


# ---- J. a run that cannot fit in memory: refused before anything is allocated ------------------------------


CAP = 6 * 2**30  # address space of the refused process: a regression fails at once instead of filling the machine


@pytest.mark.slow
def test_an_image_size_too_large_for_the_machine_is_refused_before_allocating(tmp_path, sqlite_tracking):
    """Issue 26, item 1: `--image-size 100000` grew to 22 GB until the OOM killer ended it (exit 137, no word).
    Refused now from the estimate (a batch of 32 such greyscale images alone is 1.2 TiB as float32), with the memory
    this machine has (no override): exit 2, one line naming the numbers and a size that fits, no run. The
    process runs under a 6 GiB address-space limit, so code that allocated would fail, not swap."""
    import resource

    root = make_tree(tmp_path / "ds", per_class=2, size=(16, 16))
    env = {k: v for k, v in os.environ.items() if k != "FOCUSML_MEMORY_AVAILABLE"}
    res = subprocess.run([sys.executable, "-m", "focusml", "train", "--dataset", "folder", "--data-root", str(root),
                          "--image-size", "100000", "--epochs", "1"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP)))
    assert res.returncode == 2, res.stderr[-3000:]
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("Error: --image-size 100000 needs at least ") and " TiB of memory (a batch of 32 images " \
        "100000×100000×1 as float32: 1.2 TiB; the network's activations for it: " in line, line  # greyscale
    assert "is available here: use --image-size " in line and line.endswith(" or less."), line
    assert runs_in(sqlite_tracking) == 0


@pytest.mark.slow
def test_the_memory_refusal_names_a_fix_that_works(tmp_path, sqlite_tracking, capsys, monkeypatch):
    """Issue 26, item 1, with the memory available set by FOCUSML_MEMORY_AVAILABLE: the size the refusal
    suggests is the largest that passes the estimate, and training at it succeeds; a dataset held in
    memory that is what does not fit gets `--data-loading stream`, and streaming it trains."""
    from focusml.core import memory

    root = make_tree(tmp_path / "ds", per_class=8, size=(16, 16))
    base = ["train", "--dataset", "folder", "--data-root", str(root), "--epochs", "1", "--batch-size", "8",
            "--device", "cpu", "--no-log-model", "--experiment", "memory"]
    monkeypatch.setenv("FOCUSML_MEMORY_AVAILABLE", "64M")
    code, out, err = run_cli([*base, "--image-size", "1024"], capsys)
    line = assert_refused(code, out, err, "--image-size 1024 needs at least", "but 64.0 MiB is available here: use "
                                                                              "--image-size ")
    best = int(line.rsplit("--image-size ", 1)[1].split()[0])
    code, out, err = run_cli([*base, "--image-size", str(best + 1)], capsys)  # the largest: one more is refused
    assert_refused(code, out, err, f"--image-size {best + 1} needs at least")
    assert runs_in(sqlite_tracking) == 0
    code, out, err = run_cli([*base, "--image-size", str(best)], capsys)
    assert code == 0, err

    # held in memory, the data is what does not fit: 48 greyscale images and their masks of 256×256 (6.3 MB)
    need = memory.needed("small", 1, 2, 256, 256, 8, 48 * 2 * 256 * 256)
    monkeypatch.setenv("FOCUSML_MEMORY_AVAILABLE", str(need.total - need.data // 2))
    code, out, err = run_cli([*base, "--image-size", "256", "--data-loading", "memory"], capsys)
    assert_refused(code, out, err, "256×256×1 as float32", "the decoded dataset: 6.0 MiB", "use --data-loading stream")
    code, out, err = run_cli([*base, "--image-size", "256", "--data-loading", "stream"], capsys)
    assert code == 0, err
