"""`focusml server`: the MLflow tracking server and UI on focusml's store."""

from __future__ import annotations

import os
import shutil
import socket
import sys

import click

from focusml import FocusmlError


def _own_name() -> str:
    """This machine's name as others would write it (the FQDN, else the host name)."""
    name = socket.getfqdn()
    return socket.gethostname() if name.startswith("localhost") else name


def _holder(port: int) -> str:
    """' (held by pid N: NAME)' for the process listening on `port`, when this user may see it; else ''."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f" (held by pid {conn.pid}: {psutil.Process(conn.pid).name()})"
    except Exception:  # no permission to list sockets or processes: the port alone is named
        pass
    return ""


def check_port_free(host: str, port: int) -> None:
    """Refuse (FocusmlError) a host:port that cannot be bound. MLflow would otherwise print this
    server's URL and exit 0 while another server (or another program) answers on that port."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise FocusmlError(f"--host {host}: no such interface or name ({e.strerror}); use e.g. 127.0.0.1.") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        try:
            s.bind(addr)
        except OSError as e:
            raise FocusmlError(f"port {port} on {host} is taken{_holder(port)} ({e.strerror}): stop that server, "
                               f"or start this one with another --port (e.g. --port {port + 1}).") from None


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind; keep 127.0.0.1 unless you mean to share it")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--backend-store-uri", default=None,
              help="a database URL (sqlite:///…, postgresql://user@host/db); default: MLFLOW_TRACKING_URI if it "
                   "is a database URI, else sqlite:///mlflow.db here")
@click.option("--artifacts-destination", default=None, help="default: ./mlartifacts here")
@click.option("--allowed-hosts", default=None,
              help="Host headers the server answers, comma-separated, wildcards allowed; replaces MLflow's default "
                   "(localhost and private IPs), so list every way it is reached: 'tracking-host:5000,localhost:*'")
@click.option("--workers", default=1, show_default=True, type=int, help="server worker processes (one is plenty for a local UI)")
def server(host, port, backend_store_uri, artifacts_destination, allowed_hosts, workers):
    """Start the MLflow tracking server and UI on focusml's store."""
    # MLflow: imported when the command runs, not for --help
    from focusml.tracking import check_connects, check_uri, default_uri, is_database, redact, with_driver

    env_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    store = backend_store_uri or (env_uri if env_uri and not env_uri.startswith("http") else default_uri())
    shown = redact(store)
    check_uri(store, "--backend-store-uri" if backend_store_uri else "MLFLOW_TRACKING_URI" if store == env_uri
              else "the default store")
    if is_database(store):  # a missing driver or an unreachable database: one line here, not MLflow's traceback
        store = with_driver(store, "--backend-store-uri")
        check_connects(store, "--backend-store-uri", shown=shown)
    check_port_free(host, port)
    mlflow_bin = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow")
    if mlflow_bin is None:
        raise FocusmlError("the `mlflow` command is not installed in this environment: pip install mlflow.")
    cmd = [mlflow_bin, "server", "--backend-store-uri", store, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    if artifacts_destination:
        cmd += ["--artifacts-destination", artifacts_destination]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    reach = _own_name() if host in ("0.0.0.0", "::") else host  # what other machines put in their URI
    click.echo(f"MLflow UI on http://{host}:{port}  (store: {shown}); Ctrl-C stops it.", err=True)
    click.echo(f"Log runs to it with: export MLFLOW_TRACKING_URI=http://{reach}:{port}", err=True)
    # MLflow answers requests addressed to localhost or a private IP only, unless --allowed-hosts says more
    if reach != host and not allowed_hosts and not reach.startswith("localhost"):
        click.echo(f"(or this machine's private IP; to reach it by name, add --allowed-hosts "
                   f"'{reach}:{port},localhost:*')", err=True)
    # MLflow's background job runner (GenAI jobs) is not used by focusml: leave it off unless asked for.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    sys.stderr.flush()
    os.execv(mlflow_bin, cmd)  # become the server: signals (Ctrl-C, SIGTERM) reach it directly
