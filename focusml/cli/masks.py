"""`focusml masks serve`: the mask tool's local web page over a folder dataset."""

from __future__ import annotations

import click



@click.group()
def masks():
    """Draw irrelevance masks on a folder dataset."""


@masks.command("serve")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--run", "run_id", default=None, help="MLflow run whose model's CAM is overlaid and suggested as a mask")
@click.option("--proposals", "proposals", default=None, type=click.Path(dir_okay=False),
              help="a proposals file of `focusml discover` (inside DATASET_DIR) to answer yes / no; without it, "
                   "the one file of DATASET_DIR/proposals/ if there is exactly one")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind; keep 127.0.0.1 unless you mean to share it")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port")
def serve(dataset_dir, run_id, proposals, host, port):
    """Serve the mask tool over DATASET_DIR (ROOT/images/<split>/<class>/<file>).

    Masks are saved as single-channel PNGs in DATASET_DIR/masks/ (non-zero = irrelevant).

    \b
    Examples:
      focusml datasets export decoy-digits digits-folder
      focusml masks serve digits-folder
      focusml masks serve digits-folder --run 3f2a... --port 8800
      focusml masks serve digits-folder --proposals digits-folder/proposals/3f2a....json
    """
    from focusml.masktool import DatasetTree, MaskToolApp, load_cam_model, make_server  # torch: not for --help
    from focusml.masktool.server import LOOPBACK

    from focusml import FocusmlError

    tree = DatasetTree(dataset_dir)
    found = None
    if proposals is None:
        files = sorted(p for p in (tree.root / "proposals").glob("*.json") if not p.name.endswith(".answers.json"))
        found = files[0] if len(files) == 1 else None
    try:  # the proposals file is checked before the (slow) model loads
        app = MaskToolApp(tree.root, None, proposals if proposals is not None else found)
        if found is not None:
            click.echo(f"Proposals: {found} (the only file in {tree.root / 'proposals'}; --proposals picks another)",
                       err=True)
    except FocusmlError as e:
        if found is None:
            raise
        click.secho(f"Warning: not answering the proposals of {found}: {e}", fg="yellow", err=True)
        app = MaskToolApp(tree.root)
    if run_id:
        click.echo(f"Loading the model of run {run_id}…", err=True)
        app.cam_model = load_cam_model(run_id, tree)
    server = make_server(app, host, port)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"Mask tool for {tree.root} on http://{shown}:{server.server_address[1]}/  (Ctrl-C stops it)", err=True)
    if host not in LOOPBACK:
        click.secho(f"Warning: bound to {host}: anyone who can reach this machine can read and edit the masks.",
                    fg="yellow", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped.", err=True)
    finally:
        server.server_close()
