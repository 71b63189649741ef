"""`focusml masks serve`: the mask tool's local web page over a folder dataset."""

from __future__ import annotations

import click



@click.group()
def masks():
    """Draw irrelevance masks on a folder dataset."""


@masks.command("serve")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--run", "run_id", default=None, help="MLflow run whose model's CAM is overlaid and suggested as a mask")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind; keep 127.0.0.1 unless you mean to share it")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port")
def serve(dataset_dir, run_id, host, port):
    """Serve the mask tool over DATASET_DIR (ROOT/images/<split>/<class>/<file>).

    Masks are saved as single-channel PNGs in DATASET_DIR/masks/ (non-zero = irrelevant).

    \b
    Examples:
      focusml datasets export decoy-digits digits-folder
      focusml masks serve digits-folder
      focusml masks serve digits-folder --run 3f2a... --port 8800
    """
    from focusml.masktool import DatasetTree, MaskToolApp, load_cam_model, make_server  # torch: not for --help
    from focusml.masktool.server import LOOPBACK

    tree = DatasetTree(dataset_dir)
    cam = None
    if run_id:
        click.echo(f"Loading the model of run {run_id}…", err=True)
        cam = load_cam_model(run_id, tree)
    server = make_server(MaskToolApp(tree.root, cam), host, port)
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
