"""Every hook reaches every callback through the tracked stacks (`focusml train`'s and a tune trial's):
one list, the logger first, `RunKeeper` around it; a hook added to `Callbacks` and not handed on fails here."""

from __future__ import annotations

from contextlib import contextmanager

import mlflow
import optuna
import pytest

from focusml import tracking
from focusml.core import methods
from focusml.core.callbacks import CallbackList, Callbacks, listed
from focusml.core.methods import Method
from focusml.tracking.keeper import RESUME_FILE, run_dir

HOOKS = {name for name, value in vars(Callbacks).items() if callable(value) and not name.startswith("_")}


class Probe(Method):
    """A method whose `prepare` uses every reporting hook a method has (progress, params, an artifact)."""

    name, family, summary, uses_masks = "probe", "reference", "reports through every prepare hook", False

    def prepare(self, ctx):
        ctx.progress("probe", 1, 1)
        ctx.log_params({"probe": 1})
        path = ctx.cache_dir / "probe.txt"
        path.write_text("probe\n")
        ctx.log_artifact(path, "probe")


class Everything(Callbacks):
    """Records, per hook, what the tracked run had done when the hook arrived."""

    def __init__(self):
        self.seen: dict = {}

    @contextmanager
    def run_scope(self, ctx):
        self.seen["run_scope"] = mlflow.active_run().info.run_id  # the logger opened the run first
        yield

    def log_artifact(self, path, artifact_path):
        self.seen["log_artifact"] = artifact_path

    def log_params(self, params):
        self.seen.setdefault("log_params", []).extend(params)

    def on_prepare(self, desc, step, steps):
        self.seen["on_prepare"] = desc

    def on_batch_end(self, epoch, step, steps, loss):
        self.seen["on_batch_end"] = epoch

    def on_checkpoint(self, epoch, state):
        run_id = mlflow.active_run().info.run_id
        self.seen["on_checkpoint"] = (epoch, (run_dir(run_id) / RESUME_FILE).is_file())  # saved before handed on

    def on_epoch_end(self, epoch, metrics, model):
        run_id = mlflow.active_run().info.run_id  # the epoch is logged before the caller's callbacks see it
        self.seen["on_epoch_end"] = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "acc/val")]

    def on_run_end(self, ctx, result):
        self.seen["on_run_end"] = result.run_id  # the logger filled it in first


@pytest.fixture
def probe(monkeypatch, tmp_path, make_folder, tiny_config):
    """The probe method registered, a SQLite tracking store, and the tiny config of a folder dataset."""
    monkeypatch.setitem(methods.METHODS, "probe", Probe)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    root = make_folder(tmp_path / "data", {"train": 6, "val": 4, "test": 4})
    return tiny_config(method="probe", dataset="folder", data_root=str(root), batch_size=4, experiment="hooks")


def test_every_hook_reaches_a_callers_callback_through_focusml_trains_stack(probe):
    seen = Everything()
    result = tracking.run(probe, callbacks=[Callbacks(), seen])  # what `focusml train` calls
    assert set(seen.seen) == HOOKS
    assert seen.seen["run_scope"] == seen.seen["on_run_end"] == result.run_id
    assert seen.seen["on_checkpoint"] == (0, True) and seen.seen["on_epoch_end"] == [1]
    assert seen.seen["log_artifact"] == "probe" and "probe" in seen.seen["log_params"]
    assert seen.seen["on_prepare"] == "probe" and seen.seen["on_batch_end"] == 0
    assert mlflow.get_run(result.run_id).data.params["probe"] == "1"  # logged too, not only handed on


def test_every_hook_reaches_a_callback_of_a_tune_trial(probe):
    from focusml.tune import parse_spec
    from focusml.tune.trials import TrialContext, make_objective

    spec = parse_spec({"method": "probe", "dataset": "folder", "n_trials": 1, "sampler": "random", "pruner": "none",
                       "fixed": {k: v for k, v in probe.to_params().items() if k in ("data_root", "epochs", "batch_size",
                                                                                     "device", "log_model")},
                       "search": {"seed": [0]}, "objectives": [{"metric": "acc/val", "direction": "maximize"}]})
    mlflow.set_experiment("hooks")
    with mlflow.start_run(run_name="parent") as parent:
        pass
    seen = Everything()
    objective = make_objective(TrialContext(spec, "hooks", parent.info.run_id, "hooks"), lambda trial: seen)
    optuna.create_study(direction="maximize").optimize(objective, n_trials=1)
    assert set(seen.seen) == HOOKS
    assert seen.seen["on_checkpoint"] == (0, False)  # a trial keeps no resume state: it is retried instead


def test_a_callback_list_hands_every_hook_to_each_callback_in_order():
    class Named(Callbacks):
        pass

    log = []
    first, second = Named(), Named()
    for cb in (first, second):
        for hook in HOOKS - {"run_scope"}:
            setattr(cb, hook, lambda *a, cb=cb, hook=hook: log.append((hook, cb)))
    together = CallbackList([first, second])
    for hook in sorted(HOOKS - {"run_scope"}):
        getattr(together, hook)(*[None] * (getattr(Callbacks, hook).__code__.co_argcount - 1))
    assert log == [(hook, cb) for hook in sorted(HOOKS - {"run_scope"}) for cb in (first, second)]
    assert listed(None) == [] and listed(first) == [first] and listed((first, second)) == [first, second]
