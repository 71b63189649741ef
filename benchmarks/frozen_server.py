"""How long a run takes to give up on a frozen tracking server (docs/operations.md, "The tracking server
goes away").

Starts a real `mlflow server` (SQLite backend, 127.0.0.1, a free port), a `focusml train` against it
(decoy-digits, 50 epochs, batch size 256, CPU, no model), waits for the first epoch's metrics, freezes
the server with SIGSTOP (it keeps accepting connections and never answers) and prints the seconds
from the SIGSTOP to the trainer's exit, its exit status (3) and `store.give_up_s()` for the HTTP
settings in effect (`KEY=VALUE` arguments set MLflow's, e.g. `MLFLOW_HTTP_REQUEST_TIMEOUT=4`). With
`--where`, the trainer samples its own stack every 4 s (faulthandler) into `tracebacks.txt` in the
work folder, which says where the time went. The server is resumed and stopped at the end.

Examples:
    python benchmarks/frozen_server.py                      # the defaults: 78 s + the rest of the epoch
    python benchmarks/frozen_server.py --where MLFLOW_HTTP_REQUEST_TIMEOUT=4 MLFLOW_HTTP_REQUEST_MAX_RETRIES=1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from local_server import free_port, wait_healthy

BIN = Path(sys.executable).parent
SAMPLER = """import faulthandler, sys
faulthandler.dump_traceback_later(4, repeat=True, file=open(sys.argv[1], "w"))
from focusml.cli import main
main(sys.argv[2:])
"""


def first_epoch_logged(url: str) -> bool:
    body = json.dumps({"experiment_ids": ["1"]}).encode()
    req = urllib.request.Request(url + "/api/2.0/mlflow/runs/search", data=body,
                                 headers={"Content-Type": "application/json"})
    runs = json.load(urllib.request.urlopen(req, timeout=5)).get("runs", [])
    return any(m["key"] == "acc/val" for r in runs for m in r["data"].get("metrics", []))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("settings", nargs="*", help="KEY=VALUE: MLflow HTTP settings for the trainer")
    ap.add_argument("--where", action="store_true", help="sample the trainer's stack every 4 s")
    ap.add_argument("--dir", help="work folder (default: a temporary one, kept)")
    args = ap.parse_args()
    settings = dict(a.split("=", 1) for a in args.settings)
    work = Path(args.dir or tempfile.mkdtemp(prefix="frozen-server-"))
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{work / 'server.db'}",
         "--artifacts-destination", str(work / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=open(work / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    try:
        wait_healthy(url)
        env = dict(os.environ, MLFLOW_TRACKING_URI=url, FOCUSML_CACHE=str(work / "cache"), **settings)
        train = ["train", "--epochs", "50", "--batch-size", "256", "--device", "cpu", "--no-log-model",
                 "--experiment", "frozen-server"]
        cmd = ([sys.executable, "-c", SAMPLER, str(work / "tracebacks.txt"), *train] if args.where
               else [str(BIN / "focusml"), *train])
        trainer = subprocess.Popen(cmd, env=env, cwd=work, stdout=open(work / "train.out", "w"),
                                   stderr=open(work / "train.err", "w"))
        while True:
            try:
                if first_epoch_logged(url):
                    break
            except OSError:
                pass
            if trainer.poll() is not None:
                raise SystemExit(f"the trainer ended (exit {trainer.returncode}) before its first epoch: {work}")
            time.sleep(0.3)
        os.killpg(server.pid, signal.SIGSTOP)
        frozen = time.time()
        code = trainer.wait()
        took = time.time() - frozen
        os.environ.update(settings)
        from focusml.tracking.store import give_up_s

        print(f"exit {code}, gave up {took:.1f} s after SIGSTOP; give_up_s() = {give_up_s():.1f} s after the call "
              f"that meets the frozen server (+ the rest of the epoch); settings {settings or 'default'}; files in {work}")
    finally:
        try:
            os.killpg(server.pid, signal.SIGCONT)
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
