"""Several trials at once: K spawned worker processes sharing one Optuna storage.

`run_worker` is the target of each spawned process, so it must stay importable as
`focusml.tune.workers.run_worker` (spawn pickles functions by their module path).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Callable

import optuna

from focusml import FocusmlError
from focusml.tune.results import TrialRecord
from focusml.tune.storage import open_storage
from focusml.tune.trials import TrialContext, make_objective


def run_worker(ctx: TrialContext, storage: str, n_trials: int, seed_offset: int, uri: str, verbosity: int, errors) -> None:
    """One worker process: load the shared study and run its share of the trials."""
    os.environ.pop("MLFLOW_RUN_ID", None)  # trials are children of the parent, never the env run
    os.environ["MLFLOW_TRACKING_URI"] = uri
    optuna.logging.set_verbosity(verbosity)
    try:
        store, _ = open_storage(storage)  # explicit, already checked by the parent process
        study = optuna.load_study(study_name=ctx.study_name, storage=store,
                                  sampler=ctx.spec.make_sampler(seed_offset), pruner=ctx.spec.make_pruner())
        study.optimize(make_objective(ctx), n_trials=n_trials)
    except BaseException as e:  # report to the parent process, which raises it
        errors.put(f"{type(e).__name__}: {e}")
        raise



def run_workers(ctx: TrialContext, storage: str, study: optuna.Study, n: int, workers: int, n_before: int, uri: str,
                 on_trial: Callable[[TrialRecord], None] | None) -> None:
    """K spawned processes, each running its share of n trials; report finished trials as they land."""
    mpc = mp.get_context("spawn")
    errors = mpc.Queue()
    shares = [n // workers + (i < n % workers) for i in range(workers)]
    procs = [mpc.Process(target=run_worker, name=f"focusml-tune-{i}",
                         args=(ctx, storage, share, n_before + i, uri, optuna.logging.get_verbosity(), errors))
             for i, share in enumerate(shares) if share]
    for p in procs:
        p.start()
    seen: set[int] = set()
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    try:
        while True:
            alive = any(p.is_alive() for p in procs)
            for t in study.get_trials(deepcopy=False, states=finished):
                if t.number not in seen:
                    seen.add(t.number)
                    if on_trial and t.number >= n_before:
                        on_trial(TrialRecord.of(t))
            if not alive:
                break
            time.sleep(1.0)
    except BaseException:  # Ctrl-C reaches the workers too (same process group): let them end their runs
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        raise
    for p in procs:
        p.join()
    failed = [p for p in procs if p.exitcode != 0]
    if failed:
        msgs = []
        while not errors.empty():
            msgs.append(errors.get())
        raise FocusmlError(f"{len(failed)} of {len(procs)} tune workers failed: {'; '.join(msgs) or 'no message'}")
