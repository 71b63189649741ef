"""`focusml filters`: the filter explorer's HTML report, logged to the run."""

from __future__ import annotations

import click

from focusml.cli._common import echo_table


@click.command("filters")
@click.argument("run_id")
@click.option("--compare", "compare_id", default=None, help="a second run (e.g. after refinement) shown beside RUN_ID")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="folder for the report (default: ./filters-RUNID8)")
@click.option("--split", default="val", show_default=True, help="split whose images and masks are analysed")
@click.option("--max-images", default=500, show_default=True, type=int, help="seeded subset of the split (0 = all)")
@click.option("--top", default=6, show_default=True, type=int, help="top-activating crops per filter")
@click.option("--figures", default=20, show_default=True, type=int, help="filters drawn as figures (table lists all)")
@click.option("--match", type=click.Choice(["auto", "index", "activation"]), default="auto", show_default=True,
              help="pair compared filters by index or by activation; auto = index when the compared run "
                   "was initialised from weights (--init-from, --pretrained), else activation")
@click.option("--log/--no-log", default=True, show_default=True, help="log the report to RUN_ID's artifacts")
@click.option("--rows", default=10, show_default=True, type=int, help="table rows printed here")
def filters(run_id, compare_id, out_dir, split, max_images, top, figures, match, log, rows):
    """Rank the last conv layer's filters of RUN_ID by the share of their activation inside the masks.

    \b
    Examples:
      focusml filters 3f2a...
      focusml filters BASELINE_RUN --compare REFINED_RUN --out report/
    """
    from focusml.analysis.filters import explore  # torch and MLflow: imported when the command runs, not for --help

    out_dir = out_dir or f"filters-{run_id[:8]}"
    click.echo(f"Analysing run {run_id}" + (f" against {compare_id}" if compare_id else "") + "…", err=True)
    report = explore(run_id, compare=compare_id, out_dir=out_dir, split=split, max_images=max_images or None,
                     top=top, figures=figures, match=match, log=log)
    for w in report.warnings:
        click.secho(f"Warning: {w}", fg="yellow", err=True)
    cols = ["rank", "filter", "share_in_mask", "lift", "mean_activation", "top_class"]
    if compare_id:
        cols += ["compare_filter", "compare_share_in_mask", "match_correlation"]
    a = report.analysis
    click.echo(f"{a.n_masked} of {a.n_images} {split} images have a mask; masks cover {100 * a.area_share:.1f}% "
               "of their area (the share of a filter firing everywhere).")
    echo_table(report.rows()[:rows], cols)
    click.echo(f"report: {report.out_dir / 'index.html'}")
    if report.artifact_path:
        click.echo(f"logged to run {run_id} under artifacts/{report.artifact_path}/")
