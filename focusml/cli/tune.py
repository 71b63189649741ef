"""`focusml tune`: an Optuna study, every trial an MLflow child run under one parent run.

Without `--n-trials`, a call completes the study to the file's `n_trials` (a killed call is
resumed by running the same command again); with it, it adds that many trials.
"""

from __future__ import annotations

import click

from focusml.cli._common import echo_table, interactive


@click.command()
@click.argument("study_file", metavar="STUDY.yaml", type=click.Path(dir_okay=False))
@click.option("--n-trials", type=int, default=None,
              help="trials to add in this call (default: complete the study to the file's n_trials)")
@click.option("--study-name", default=None, help="Optuna study name (default: the file's study_name, else its stem); "
                                                 "an existing name is resumed")
@click.option("--storage", default=None, help="Optuna storage: a database URL (sqlite:///optuna.db, postgresql://…) or a "
                                              "journal file path; default optuna.db here (optuna.journal with --workers > 1)")
@click.option("--workers", type=int, default=1, show_default=True, help="worker processes on this machine")
@click.option("--register", default=None, help="register the best trial's model under this name, alias `champion`")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override the study file: a run option (epochs=3, batch_size=64, lam=0.1 fixes a searched "
                   "option), method, dataset, n_trials, seed, sampler, pruner, or a dotted key "
                   "(sampler.n_startup_trials=4, search.lam.high=10); repeatable")
def tune(study_file, n_trials, study_name, storage, workers, register, overrides):
    """Search a method's λ and mask augmentation with Optuna; every trial is an MLflow child run.

    Objectives are validation metrics only (acc/val, wr/val); test metrics are logged for every
    trial and never used to choose.

    \b
    Examples:
      focusml tune studies/pas.yaml
      focusml tune studies/pas.yaml --n-trials 5 --study-name pas-a     # resumes pas-a if it exists
      focusml tune studies/pas.yaml --workers 2                        # 2 processes, optuna.journal
      focusml tune studies/pas.yaml --set epochs=3 --set dataset=symbols --n-trials 4
      focusml tune studies/rrr.yaml --storage postgresql://user:pw@db/optuna --register rrr-digits
    """
    import optuna  # Optuna, MLflow and torch: imported when the command runs, not for --help
    from tqdm.auto import tqdm

    from focusml import tracking
    from focusml.tune import load_spec, run_study
    from focusml.tune.storage import check_storage

    spec = load_spec(study_file, overrides)
    tracking.setup()  # these refuse a bad store, storage or name before the first line is printed
    check_storage(storage, workers)
    if register is not None:
        tracking.check_registry_names(register, "champion")
    n = spec.n_trials if n_trials is None else n_trials  # the bar's total until run_study says how many are missing
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the bar below replaces Optuna's per-trial lines
    click.echo(f"Study {study_name or spec.study_name}: {spec.method} on {spec.dataset}, {n} trials, "
               f"{spec.sampler} sampler, pruner {spec.pruner}, objectives "
               f"{', '.join(f'{o.metric} ({o.direction})' for o in spec.objectives)} → "
               f"{tracking.redact(tracking.tracking_uri())}", err=True)
    if overrides:
        click.echo(f"Overrides: {' '.join(overrides)}", err=True)
    bar = tqdm(total=n, desc="trials", unit="trial", dynamic_ncols=True) if interactive() else None
    done = [0]

    def on_trial(t):
        shown = "/".join(f"{v:.4g}" for v in t.values) if t.values else ""
        if t.state != "COMPLETE":
            shown = f"{t.state.lower()} {shown}".strip()
        done[0] += 1
        if bar is None:  # not a terminal: one plain line per trial
            click.echo(f"trial {done[0]}/{n}: #{t.number} {shown} {t.params}", err=True)
            return
        bar.update(1)
        bar.set_postfix_str(f"#{t.number} {shown}")

    def on_plan(count):
        nonlocal n
        n = count
        if bar is not None:
            bar.total = count
            bar.refresh()

    try:
        result = run_study(spec, n_trials=n_trials, study_name=study_name, storage=storage, workers=workers,
                           register=register, on_trial=on_trial, on_plan=on_plan)
    finally:
        if bar is not None:
            bar.close()
    if not result.parent_run_id:
        click.echo(f"{result.study_name} already has its {spec.n_trials} trials (the file's n_trials) in "
                   f"{result.storage}; nothing to do. Pass --n-trials N to add more.", err=True)
        return
    click.echo(f"{result.study_name}: {len(result.trials)} trials in the study ({result.new_trials} new, "
               f"{result.count('COMPLETE')} complete, {result.count('PRUNED')} pruned, {result.count('FAIL')} failed) "
               f"in {result.wall_s:.0f}s; storage {result.storage}", err=True)
    front = result.pareto if len(result.objectives) > 1 else ([result.best] if result.best else [])
    if len(result.objectives) > 1:
        click.echo("Pareto front (validation metrics):")
    rows = []
    for t in front:
        row = {"trial": t.number, **dict(zip(result.objectives, t.values)), **t.params, "run_id": t.run_id}
        if result.best and t.number == result.best.number and len(front) > 1:
            row["trial"] = f"{t.number} (chosen)"
        rows.append(row)
    echo_table(rows)
    for note in result.notes:  # a trial that warns is never reported as best without saying so
        click.secho(f"Warning: {note}", fg="yellow", err=True)
    if result.skipped:
        click.echo(f"figures skipped: {', '.join(f'{k} ({v})' for k, v in result.skipped.items())}", err=True)
    click.echo(f"parent_run_id: {result.parent_run_id}")
    trials = tracking.ui_link(experiment_id=tracking.run_experiment_id(result.parent_run_id))
    click.echo(f"See its trials in the UI (headline metrics, best acc/test first): {trials}", err=True)
    if result.best:
        click.echo(f"best_run_id: {result.best.run_id}")
    if result.registered:
        click.echo(f"registered: {result.registered}, alias champion")
    click.echo(f"See the study in optuna-dashboard (pip install optuna-dashboard): optuna-dashboard {result.storage}",
               err=True)
