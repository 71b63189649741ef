"""Several trials at once: K spawned worker processes sharing one Optuna storage.

`run_worker` is the target of each spawned process, so it must stay importable as
`focusml.tune.workers.run_worker` (spawn pickles functions by their module path).

Each worker gets its share of the cores: `cores // K` torch threads (intra- and inter-op, and
`OMP_NUM_THREADS`/`MKL_NUM_THREADS` for the libraries that read them at import), so K workers do
not fight over the same cores; its trials share one process, hence the imported stack and the
generated dataset (`run.keep_data`).

Faults: a worker killed by a signal (SIGKILL, the OOM killer) has its running trial failed and
queued again at once (`recovery.fail_dead_local`) and is replaced by a new worker that runs the
rest of its share, so the call still ends with exactly its trials. Ctrl-C or SIGTERM to the
parent stops every worker (SIGTERM), each ending its trial's run KILLED; a worker whose parent
died stops too.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from typing import Callable

import optuna

from focusml import FocusmlError, Terminated, environment
from focusml.core.run import keep_data
from focusml.tune.recovery import CALL_ATTR, fail_dead_local, on_stale
from focusml.tune.results import TrialRecord
from focusml.tune.storage import open_storage, with_heartbeat
from focusml.tune.trials import TrialContext, make_objective

MAX_REPLACEMENTS = 3  # per call and worker slot: a trial that kills every worker is not run for ever


def _stop_on_signals() -> None:
    """SIGINT raises KeyboardInterrupt, SIGTERM `Terminated`; once one has, both are ignored while the trial ends."""

    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _watch_parent(parent: int) -> None:
    """Stop this worker (SIGTERM to itself) when the parent process is gone."""

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="focusml-watch-parent", daemon=True).start()


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def share_threads(threads: int) -> None:
    """Use `threads` torch threads in this process (the inter-op pool only where it is not started yet)."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set, or parallel work already ran: it keeps its size
        pass


def _thread_env(threads: int):
    """OMP/MKL thread counts in the environment the spawned workers inherit (read when they import)."""
    return environment({k: str(threads) for k in THREAD_VARS})


def run_worker(ctx: TrialContext, storage: str, n_trials: int, seed_offset: int, uri: str, verbosity: int, errors,
               parent: int | None = None, threads: int | None = None) -> None:
    """One worker process: load the shared study and run its share of the trials on `threads` threads."""
    if threads:
        share_threads(threads)
    _stop_on_signals()
    if parent is not None:
        _watch_parent(parent)
    os.environ.pop("MLFLOW_RUN_ID", None)  # trials are children of the parent, never the env run
    os.environ["MLFLOW_TRACKING_URI"] = uri
    optuna.logging.set_verbosity(verbosity)
    try:
        store = with_heartbeat(open_storage(storage)[0], on_stale)  # explicit, already checked by the parent
        study = optuna.load_study(study_name=ctx.study_name, storage=store,
                                  sampler=ctx.spec.make_sampler(seed_offset), pruner=ctx.spec.make_pruner())
        with keep_data():
            study.optimize(make_objective(ctx), n_trials=n_trials)
    except BaseException as e:  # report to the parent process, which raises it
        errors.put(f"{type(e).__name__}: {e}")
        raise


def _finished_by(study: optuna.Study, pid: int, parent_run_id: str) -> int:
    """Trials finished by worker `pid` of this call (a pid alone may repeat on another machine)."""
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(t.user_attrs.get("worker_pid") == pid and t.user_attrs.get(CALL_ATTR) == parent_run_id
               for t in study.get_trials(deepcopy=False, states=done))


def run_workers(ctx: TrialContext, storage: str, study: optuna.Study, n: int, workers: int, seed_offset: int, uri: str,
                on_trial: Callable[[TrialRecord], None] | None) -> None:
    """K spawned processes, each running its share of n trials; report this call's finished trials as they land.

    Worker i's sampler seed is the study's plus `seed_offset + i` (a replacement's: further on), so
    no two workers draw the same random params."""
    mpc = mp.get_context("spawn")
    errors = mpc.Queue()
    shares = [n // workers + (i < n % workers) for i in range(workers)]
    verbosity = optuna.logging.get_verbosity()
    threads = max(1, cores() // workers)

    def spawn(i: int, share: int, offset: int):
        p = mpc.Process(target=run_worker, name=f"focusml-tune-{i}",
                        args=(ctx, storage, share, offset, uri, verbosity, errors, os.getpid(), threads))
        with _thread_env(threads):
            p.start()
        return p

    slots = {i: (spawn(i, share, seed_offset + i), share, 0) for i, share in enumerate(shares) if share}
    done: list[mp.Process] = []
    seen: set[int] = set()
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    try:
        while slots:
            for i, (p, share, replaced) in list(slots.items()):
                if p.is_alive():
                    continue
                del slots[i]
                if p.exitcode is not None and p.exitcode < 0 and replaced < MAX_REPLACEMENTS:
                    # killed by a signal: fail and requeue its trial now, run the rest of its share anew
                    fail_dead_local(study)
                    left = share - _finished_by(study, p.pid, ctx.parent_run_id)
                    if left > 0:
                        offset = seed_offset + workers * (replaced + 1) + i
                        slots[i] = (spawn(i, left, offset), left, replaced + 1)
                        continue
                done.append(p)
            for t in study.get_trials(deepcopy=False, states=finished):
                if t.number not in seen:
                    seen.add(t.number)
                    if on_trial and t.user_attrs.get(CALL_ATTR) == ctx.parent_run_id \
                            and t.state != optuna.trial.TrialState.FAIL:  # this call's, not another machine's
                        on_trial(TrialRecord.of(t))
            if slots:
                time.sleep(1.0)
    except BaseException:  # Ctrl-C or SIGTERM here: stop the workers too, each ends its trial's run KILLED
        alive = [p for p, _, _ in slots.values() if p.is_alive()]
        for p in alive:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in alive:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        raise
    failed = [p for p in done if p.exitcode != 0]
    if failed:
        msgs = []
        while not errors.empty():
            msgs.append(errors.get())
        codes = ", ".join(f"{p.name} exit {p.exitcode}" for p in failed)
        raise FocusmlError(f"{len(failed)} tune worker(s) failed ({codes}): {'; '.join(msgs) or 'no message'}")
