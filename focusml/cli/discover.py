"""`focusml discover RUN_ID`: propose the shortcuts a trained model reads, for yes/no answers in the mask tool."""

from __future__ import annotations

import click

from focusml.cli._common import echo_table, echo_ui_links


@click.command()
@click.argument("run_id")
@click.option("--out", default=None, help="proposals file (default: DATA_ROOT/proposals/RUN_ID.json for a folder "
                                          "dataset, else ./proposals-RUN_ID.json)")
@click.option("--splits", default="train,val", show_default=True, help="the splits whose images are grouped")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="k-means and donor seed")
@click.option("--experiment", default=None, help="MLflow experiment of the discover run (default: the run's)")
def discover(run_id, out, splits, seed, experiment):
    """Propose the shortcuts a trained model reads, for yes/no answers in the mask tool.

    Groups the images of the run's dataset by where the model's evidence sits, and proposes each
    group's region with a mask per member, ranked by how often swapping it flips a prediction per
    share of the image. The proposals (table, a figure each, the file) are logged as a new run;
    the file is what `focusml masks serve ROOT --proposals FILE` shows one at a time.

    \b
    Example:
      focusml discover 3f2a9c0d…                            # a run trained on --dataset folder
      focusml masks serve my-data --proposals my-data/proposals/3f2a9c0d….json
      focusml refine 3f2a9c0d…                              # from the masks you accepted
    """
    from focusml import FocusmlError, tracking  # MLflow and torch: imported when the command runs
    from focusml.tracking.discover import discover as run_discover

    parts = tuple(s.strip() for s in splits.split(",") if s.strip())
    if not parts:
        raise FocusmlError("--splits is empty; give split names such as train,val.")
    tracking.setup()
    found = run_discover(run_id, splits=parts, seed=seed, out=out or None, experiment=experiment or None)
    echo_table([{"id": q.id, "scope": q.scope, "images": len(q.members), "region": f"{100 * q.size:.0f}%",
                 "flip rate": round(q.flip_rate, 3)} for q in found.proposals])
    click.echo(f"proposals: {found.path}")
    click.echo(f"run_id: {found.run_id}")
    click.echo(f"Answer them: focusml masks serve DATA_ROOT --proposals {found.path}", err=True)
    echo_ui_links(found.run_id)
