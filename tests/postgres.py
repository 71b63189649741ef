"""A throwaway PostgreSQL cluster for the tests: `initdb` + `pg_ctl` in a temp dir, trust auth, on
a free loopback port (and its socket in that dir), stopped and removed afterwards.

Used through the `postgres` fixture in conftest.py (tests never import this module). initdb and
postgres refuse to run as root: as root they run as the unprivileged `postgres` user (which the
Debian package creates), owning the cluster's dir. The Debian package keeps the binaries in
/usr/lib/postgresql/<version>/bin, off PATH; `find_bin` looks there too.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

MISSING_BINARIES = "PostgreSQL binaries not found (initdb/pg_ctl): apt-get install postgresql"
MISSING_DRIVER = "the PostgreSQL driver psycopg2 is not installed: pip install 'focusml[postgres]'"
SUPERUSER = "focusml"


def find_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    found = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")
             if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists()]
    return max(found, key=lambda d: [int(x) if x.isdigit() else 0 for x in d.parent.name.split(".")], default=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One running cluster; `url(db)` for a database in it, `createdb(name)` to add one."""

    def __init__(self, bindir: Path):
        self.bindir, self.port = bindir, _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="focusml-pg-"))  # under /tmp: reachable by the postgres user
        self.data = self.root / "data"
        self.user = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and no `postgres` user to run initdb as: "
                                   "apt-get install postgresql (creates it), or run the tests as a normal user") from None
            self.user = pw
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str) -> None:
        kw = dict(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[]) if self.user else {}
        res = subprocess.run([str(self.bindir / args[0]), *args[1:]], cwd=self.root, capture_output=True, text=True,
                             timeout=120, env=dict(os.environ, LC_ALL="C"), **kw)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({res.returncode}): {res.stderr[-2000:]}")

    def start(self) -> "Cluster":
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")
        # a test cluster: durability off (fsync) for speed; TCP on loopback only, the socket in our dir
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-o", opts, "-w", "-t", "60",
                  "start")
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{db}"

    def createdb(self, name: str) -> str:
        """Create database `name` (owned by the superuser) and return its URL."""
        import psycopg2

        con = psycopg2.connect(self.url())
        try:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            con.close()
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
