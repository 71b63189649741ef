"""Optuna studies: study-file validation, tracked trials under a parent run, registration,
journal-file workers, pruning and resuming, against a real `mlflow server`."""

from __future__ import annotations

import copy

import mlflow
import optuna
import pytest
import yaml

from focusml import FocusmlError, tracking
from focusml.tune import choose, load_spec, open_storage, parse_spec, run_study

BASE = {
    "method": "baseline",
    "dataset": "decoy-digits",
    "fixed": {"epochs": 1, "batch_size": 64, "device": "cpu", "log_model": False},
    "search": {"lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
    "objectives": [{"metric": "acc/val", "direction": "maximize"}],
    "n_trials": 3,
    "sampler": "random",
    "pruner": "none",
    "seed": 0,
}


def spec_of(tmp_path, name="study", **changes):
    data = copy.deepcopy(BASE)
    data.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_spec(path)


def runs_of(parent_id: str):
    return mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


# ----------------------------------------------------------------------------- the study file


def _with(path: str, value):
    data = copy.deepcopy(BASE)
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return data


BAD = [
    (dict(BASE, trials=3), "key 'trials'"),
    (_with("search.lr", {"type": "floaty", "low": 0.1, "high": 1}), "search.lr.type is 'floaty'"),
    (_with("search.lr", {"type": "float", "low": 0.1, "high": 0.01}), "search.lr.high is 0.01"),
    (_with("search.lr", {"type": "float", "low": 0.0, "high": 0.1, "log": True}), "search.lr.low is 0.0"),
    (_with("search.lr", {"type": "categorical", "choices": []}), "search.lr.choices is []"),
    (_with("search.lamb", {"type": "float", "low": 0.1, "high": 1}), "search.lamb"),
    (_with("method", "pas") | {"search": {"lam": {"type": "float", "low": 0.1, "high": 1}, "keep_fraction":
                                          {"type": "float", "low": 0.5, "high": 1.5}}}, "search.keep_fraction value 1.5"),
    (_with("search.lam", {"type": "float", "low": 0.1, "high": 1}), "does not apply to method 'baseline'"),
    (_with("objectives", [{"metric": "acc/test", "direction": "maximize"}]), "objectives[0].metric is 'acc/test'"),
    (_with("objectives", [{"metric": "wr/val", "direction": "maximize"}]), "objectives[0].direction is 'maximize'"),
    (_with("objectives", ["acc/val", "wr/val"]) | {"pruner": "median"}, "pruner is 'median'"),
    (_with("sampler", "annealing"), "sampler is 'annealing'"),
    (_with("sampler", "grid"), "search.lr is 'a continuous float range'"),
    (_with("pruner", {"name": "median", "patience": 3}), "pruner 'median' refused"),
    (_with("n_trials", 0), "n_trials is 0"),
    (_with("fixed.epochs", -1), "--epochs is -1"),
    (_with("fixed.lr", 0.01), "search.lr is 'also in fixed'"),
    (_with("enqueue", [{"lam": 1.0}]), "enqueue[0].lam"),
]


@pytest.mark.parametrize("data,needle", BAD, ids=[n for _, n in BAD])
def test_bad_study_file_is_refused_naming_the_field(data, needle):
    with pytest.raises(FocusmlError) as e:
        parse_spec(data, source="s.yaml")
    assert needle in str(e.value)
    assert str(e.value).startswith("s.yaml")


def test_study_file_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- method: pas\n")
    with pytest.raises(FocusmlError, match="must be a mapping"):
        load_spec(path)


def test_shipped_studies_are_valid_and_tuned_alike():
    specs = {name: load_spec(f"studies/{name}.yaml") for name in ("pas", "pasa", "replacement", "rrr")}
    assert {s.method for s in specs.values()} == {"pas", "pasa", "random_crop", "rrr"}
    for s in specs.values():
        assert [o.metric for o in s.objectives] == ["acc/val_cf"]  # the shortcut-aware validation metric
        assert {"dilate", "jitter", "blur"} <= {p.name for p in s.search}
    # Tuned the same way: same procedure and augmentation space; λ on a log scale around each
    # method's own default (the λ scales differ), and trial 0 is the method's defaults.
    same = lambda s: (s.fixed, s.objectives, s.sampler, s.sampler_options, s.pruner, s.pruner_options, s.n_trials,  # noqa: E731
                      [(p.name, p.type, p.low, p.high, p.log) for p in s.search if p.name in ("dilate", "jitter", "blur")])
    assert same(specs["pas"]) == same(specs["pasa"]) == same(specs["rrr"])
    from focusml.core.methods import get

    for s in specs.values():
        defaults = {p.name: p.default for p in get(s.method).params}
        first = s.enqueue[0]
        for name, value in first.items():
            if name in defaults:
                assert value == defaults[name], (s.method, name)
        lam = [p for p in s.search if p.name == "lam"]
        if lam:
            assert lam[0].log and lam[0].low <= defaults["lam"] <= lam[0].high


def test_storage_choice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_storage(None)[0] == f"sqlite:///{tmp_path / 'optuna.db'}"
    journal, shown = open_storage(None, workers=2)
    assert isinstance(journal, optuna.storages.JournalStorage) and shown.endswith("optuna.journal")
    assert open_storage("postgresql://me:secret@db/optuna")[1] == "postgresql://me:***@db/optuna"
    with pytest.raises(FocusmlError, match="locks under 2 parallel writers"):
        open_storage("sqlite:///x.db", workers=2)
    with pytest.raises(FocusmlError, match="sqlite:///"):
        open_storage("optuna.db")


def test_multi_objective_choice_is_on_the_pareto_front():
    spec = parse_spec(_with("objectives", ["acc/val", "wr/val"]))
    study = optuna.create_study(directions=spec.directions)
    dist = {"lr": optuna.distributions.FloatDistribution(0.001, 0.01, log=True)}
    for acc, wr in [(0.9, 30.0), (0.95, 40.0), (0.95, 35.0), (0.5, 1.0), (0.4, 20.0)]:
        study.add_trial(optuna.trial.create_trial(params={"lr": 0.003}, distributions=dist, values=[acc, wr]))
    assert sorted(t.number for t in study.best_trials) == [0, 2, 3]  # (0.4, 20) and (0.95, 40) are dominated
    assert choose(study, spec).number == 2  # best acc/val on the front, ties broken by wr/val


# ----------------------------------------------------------------------------- tracked studies


@pytest.mark.slow
def test_tune_cli_tracks_trials_under_a_parent_and_registers_the_best(tracking_env, tmp_path, capsys):
    from focusml.cli import main

    data = copy.deepcopy(BASE)
    data.update(method="pas", study_name="cli-study",
                search={"lam": {"type": "float", "low": 0.01, "high": 10.0, "log": True},
                        "dilate": {"type": "int", "low": 0, "high": 1}})
    data["fixed"].update(log_model=False, epochs=1)  # overridden below: --set is what users type instead of editing
    path = tmp_path / "pas.yaml"
    path.write_text(yaml.safe_dump(data))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    # two epochs: one epoch of PAS can leave every trial at chance, and then there are no importances
    main(["tune", str(path), "--n-trials", "3", "--storage", storage, "--register", "tuned-pas",
          "--set", "epochs=2", "--set", "log_model=true"])
    out, err = capsys.readouterr()
    parent_id = out.split("parent_run_id: ")[1].split()[0]

    study = optuna.load_study(study_name="cli-study", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    children = {int(r.data.tags["optuna.trial_number"]): r for r in runs_of(parent_id)}
    assert sorted(children) == [0, 1, 2]
    assert study.metric_names == ["acc/val"]  # optuna-dashboard names the objective
    parent = mlflow.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "tune-cli-study"
    assert parent.data.tags["focusml.kind"] == "tune" and parent.data.params["overrides"] == "epochs=2 log_model=true"
    assert (f"See its trials in the UI (headline metrics, best acc/test first): open {tracking_env}/#/experiments/"
            f"{parent.info.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=focusml") in err
    assert parent.data.params["study_name"] == "cli-study" and parent.data.params["storage"] == storage
    for t in study.trials:
        run = children[t.number]
        assert run.info.status == "FINISHED" and t.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.info.experiment_id == parent.info.experiment_id
        assert float(run.data.params["lam"]) == pytest.approx(t.params["lam"])
        assert int(run.data.params["dilate"]) == t.params["dilate"]
        assert {"acc/val", "wr/val", "acc/test", "wr/test", "loss/train"} <= set(run.data.metrics)
        assert t.value == pytest.approx(run.data.metrics["acc/val"])  # the objective is validation accuracy

    best = study.best_trial
    assert float(parent.data.params["best.lam"]) == pytest.approx(best.params["lam"])
    assert parent.data.metrics["best/acc/val"] == pytest.approx(best.value)
    assert parent.data.tags["best.run_id"] == best.user_attrs["mlflow_run_id"]
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent_id, "figures")}
    assert {"figures/optimization_history_acc_val.png", "figures/param_importances_acc_val.png"} <= arts

    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("tuned-pas", "champion")
    assert champion.run_id == best.user_attrs["mlflow_run_id"]

    other = children[(best.number + 1) % 3].info.run_id
    main(["register", other, "--name", "tuned-pas", "--alias", "challenger"])
    assert client.get_model_version_by_alias("tuned-pas", "challenger").run_id == other
    assert client.get_model_version_by_alias("tuned-pas", "champion").run_id == best.user_attrs["mlflow_run_id"]


@pytest.mark.slow
def test_two_workers_on_a_journal_file_lose_and_duplicate_nothing(tracking_env, tmp_path):
    spec = spec_of(tmp_path, name="workers", objectives=["acc/val", "wr/val"])  # multi-objective: a Pareto front
    journal = str(tmp_path / "optuna.journal")
    result = run_study(spec, n_trials=4, workers=2, storage=journal)
    study = optuna.load_study(study_name="workers", storage=open_storage(journal)[0])
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["worker_pid"] for t in study.trials}) == 2  # both processes ran trials
    run_ids = [t.user_attrs["mlflow_run_id"] for t in study.trials]
    assert len(set(run_ids)) == 4
    children = runs_of(result.parent_run_id)
    assert sorted(r.info.run_id for r in children) == sorted(run_ids)
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == [0, 1, 2, 3]
    assert result.count("COMPLETE") == 4 and result.new_trials == 4
    front = {t.number for t in study.best_trials}
    assert {t.number for t in result.pareto} == front and result.best.number in front
    parent = mlflow.get_run(result.parent_run_id)
    assert parent.data.params["objectives"] == "acc/val:maximize,wr/val:minimize"
    assert parent.data.metrics["best/wr/val"] == pytest.approx(result.best.values[1])
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.parent_run_id, "figures")}
    assert "figures/pareto_front.png" in arts


@pytest.mark.slow
def test_pruner_stops_a_bad_trial_and_resuming_adds_trials(tracking_env, tmp_path):
    spec = spec_of(tmp_path, name="pruning", fixed={"epochs": 1, "batch_size": 8, "device": "cpu", "log_model": False},
                   search={"lr": [0.01, 1e-6]}, enqueue=[{"lr": 0.01}, {"lr": 1e-6}],  # 1e-6: cannot learn
                   pruner={"name": "median", "n_startup_trials": 1}, n_trials=2)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = run_study(spec, storage=storage)
    good, bad = result.trials
    assert (good.params["lr"], good.state) == (0.01, "COMPLETE")
    assert (bad.params["lr"], bad.state) == (1e-6, "PRUNED")
    bad_run, good_run = mlflow.get_run(bad.run_id), mlflow.get_run(good.run_id)
    assert bad_run.info.status == "KILLED" and bad_run.data.tags["optuna.pruned"] == "true"
    assert "acc/test" not in bad_run.data.metrics and "acc/val" in bad_run.data.metrics
    assert good_run.info.status == "FINISHED" and "optuna.pruned" not in good_run.data.tags
    assert mlflow.get_run(result.parent_run_id).data.metrics["trials/pruned"] == 1
    with pytest.raises(FocusmlError, match="no logged model"):
        tracking.register(bad.run_id, "pruned-model")

    again = run_study(spec, n_trials=1, storage=storage)  # same study name: resumed, enqueued trials not rerun
    assert [t.number for t in again.trials] == [0, 1, 2] and again.new_trials == 1
    assert again.parent_run_id != result.parent_run_id
    assert [r.info.run_id for r in runs_of(again.parent_run_id)] == [again.trials[2].run_id]
    assert mlflow.get_run(again.parent_run_id).data.params["trials_before"] == "2"
    with pytest.raises(FocusmlError, match="already exists with directions"):
        run_study(spec_of(tmp_path, name="pruning", objectives=["acc/val", "wr/val"]), n_trials=1, storage=storage)


@pytest.mark.slow
def test_a_trial_whose_run_warns_is_not_reported_as_best(tracking_env, tmp_path):
    """The trial that cannot learn (lr 1e-7: chance accuracy) keeps its run's warning and is not chosen, even
    on an objective a dead network does well on (flip/val: a constant prediction never flips); where it
    scored better, the study says it passed it over."""
    from focusml.tune.results import WARNING_ATTR

    spec = spec_of(tmp_path, name="unhealthy", fixed={"epochs": 1, "batch_size": 8, "device": "cpu", "log_model": False},
                   search={"lr": [0.01, 1e-7]}, enqueue=[{"lr": 0.01}, {"lr": 1e-7}], objectives=["flip/val"],
                   n_trials=2)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = run_study(spec, storage=storage)
    healthy, dead = optuna.load_study(study_name="unhealthy", storage=storage).trials
    assert "chance accuracy" in dead.user_attrs[WARNING_ATTR] and WARNING_ATTR not in healthy.user_attrs
    assert mlflow.get_run(dead.user_attrs["mlflow_run_id"]).data.tags["focusml.warning"] == dead.user_attrs[WARNING_ATTR]
    assert result.best.number == healthy.number and result.best.warning is None
    parent = mlflow.get_run(result.parent_run_id)
    assert parent.data.tags["best.run_id"] == healthy.user_attrs["mlflow_run_id"]
    if dead.value < healthy.value:  # the dead network scored better: passed over, and said so
        assert len(result.notes) == 1 and result.notes[0].startswith(f"trial #{dead.number} scored better")
        assert "passed over" in parent.data.tags["focusml.warning"]
    else:
        assert result.notes == [] and "focusml.warning" not in parent.data.tags


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_lost_on_another_machine_during_a_call_is_made_up_so_the_study_completes(
        tracking_env, tmp_path, make_folder, monkeypatch):
    """A call completing the study counts another machine's running trial as on its way. That machine dies during
    the call: the trial is failed at the next trial's start and its retry runs as one of this call's trials, so
    without a make-up trial the study ends one short of its `n_trials`."""
    import threading
    import time

    from focusml.tune.recovery import on_stale
    from focusml.tune.storage import with_heartbeat

    monkeypatch.setenv("FOCUSML_TUNE_HEARTBEAT_S", "1")  # grace: 3 s
    root = make_folder(tmp_path / "data", {"train": 16, "val": 8, "test": 8})
    spec = spec_of(tmp_path, name="remote", dataset="folder", fixed={
        "epochs": 1, "batch_size": 64, "device": "cpu", "log_model": False, "data_root": str(root),
        "select": "acc/val", "cam_every": 1000})
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="remote", storage=with_heartbeat(open_storage(storage)[0], on_stale),
                                direction="maximize")
    remote = study.ask()  # the other machine's trial: no pid to check here, only its heartbeat
    remote.suggest_float("lr", 0.001, 0.01, log=True)
    remote.set_user_attr("worker_host", "another-machine")
    remote.set_user_attr("worker_pid", 1)
    alive = threading.Event()
    alive.set()

    def beat():  # the other machine beats until this call's first trial has started, then dies
        while alive.is_set():
            study._storage.record_heartbeat(remote._trial_id)
            time.sleep(0.3)

    threading.Thread(target=beat, daemon=True).start()

    def first_trial_starts(trial):
        if alive.is_set():
            alive.clear()
            time.sleep(4)  # past the grace period: the next trial's start fails the remote trial
        return None

    planned = []
    result = run_study(spec, storage=storage, trial_callbacks=first_trial_starts, on_plan=planned.append)
    trials = optuna.load_study(study_name="remote", storage=storage).get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    assert states[0] == "FAIL" and states.count("COMPLETE") == 3, states  # the file's n_trials, not one short
    assert [t.number for t in trials if t.system_attrs.get("retry_history") == [0]] != []
    assert planned == [2, 3] and result.new_trials == 3
