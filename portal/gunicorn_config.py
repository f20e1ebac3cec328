"""Production gunicorn settings: ``gunicorn -c python:portal.gunicorn_config wsgi:app``.

One process per core, each with a few threads: Argon2id releases the GIL. The server has
``PORTAL_HASH_SLOTS`` hashing slots (default: one per core), created here in the master and
shared by all its workers, so no more hashes run than there are cores and Argon2 memory is
capped at cores x 19 MiB however many requests arrive, and a worker that holds most of the
connections still hashes on every core. Lookups beyond that wait a bounded time
(``PORTAL_HASH_WAIT_SECONDS``) and then get 503 with Retry-After; requests beyond the threads
wait in gunicorn's backlog. Pages that do not hash keep being served by the other threads.
"""

import glob
import multiprocessing
import os
import shutil
import sys
import tempfile
from typing import Any

from portal.hashing_slots import MAX_SERVER_WORKERS, share_hashing_slots

bind = os.environ.get("PORTAL_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("PORTAL_WORKERS", multiprocessing.cpu_count()))
# The app refuses per-process (memory://) limits when more than one worker serves
# (portal.config.check_limit_store), so it must know how many do: workers inherit this variable.
os.environ["PORTAL_WORKERS"] = str(workers)
worker_class = "gthread"
threads = int(os.environ.get("PORTAL_THREADS", 4))
backlog = 512
timeout = 30
graceful_timeout = 20
keepalive = 5
# No access log unless PORTAL_ACCESS_LOG names one ("-" for stderr): the TLS-terminating proxy in
# front keeps the access log, and the portal's security events record every verification and
# claim. Gunicorn's access logger formats all of a request's headers for each line, which cost a
# twentieth of a lookup's CPU. When on, it carries method, path, status and timing only: no query
# strings or bodies.
accesslog = os.environ.get("PORTAL_ACCESS_LOG") or None
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
errorlog = "-"

# No control socket (gunicorn 25+ opens one in $HOME by default): systemd's signals manage the
# server, several servers on one host would share its path, and a hardened unit has no home.
control_socket_disable = True


def nworkers_changed(server: Any, new_value: int, old_value: int | None) -> None:
    """Keep the workers' view of the counts true: gunicorn calls this with the final count before any
    worker starts (after command-line options such as ``-w`` or ``--threads``, and before
    ``--preload`` loads the app) and again when TTIN/TTOU signals change it, so a worker added later
    checks the new count. The threads size each worker's database pool (``portal.config``).
    More workers than the hashing slots' accounting tracks are refused: at start the server does
    not start; later (TTIN, or a reload) the count stays where it was, and the log says why."""
    if new_value > MAX_SERVER_WORKERS:
        refusal = f"{new_value} workers asked: one server runs at most {MAX_SERVER_WORKERS}"
        if old_value is None:
            raise SystemExit(refusal)
        server.log.error("%s; staying at %d", refusal, old_value)
        server.num_workers = old_value  # gunicorn calls this hook again, with a count in range
        return
    os.environ["PORTAL_WORKERS"] = str(new_value)
    os.environ["PORTAL_THREADS"] = str(server.cfg.threads)


hash_slots = share_hashing_slots(int(os.environ.get("PORTAL_HASH_SLOTS") or multiprocessing.cpu_count()))


def pre_fork(server: Any, worker: Any) -> None:
    """Give the worker about to be forked the lowest slot-accounting index no live worker has."""
    taken = {w.hash_slot_index for w in server.WORKERS.values()}
    worker.hash_slot_index = min(set(range(len(taken) + 1)) - taken)


def post_fork(_server: Any, worker: Any) -> None:
    hash_slots.bind(worker.hash_slot_index)


# Prometheus multiprocess mode: each worker writes its metrics to files in this directory and a
# scrape of /metrics, whichever worker answers it, adds every worker's up. A directory of our own
# unless PROMETHEUS_MULTIPROC_DIR names one; emptied at start, so a restart begins from zero.
# prometheus_client reads the variable once, when it is first imported: imported already (by
# portal/__init__.py, or by anything this file imports), every worker would count on its own and
# /metrics would show none of it, so the server refuses to start instead.
_own_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _own_metrics_dir and "prometheus_client" in sys.modules:
    raise SystemExit(
        "prometheus_client was imported before portal/gunicorn_config.py set PROMETHEUS_MULTIPROC_DIR: "
        "/metrics would count nothing. Keep portal/__init__.py free of imports, or set the variable "
        "to an empty directory before starting gunicorn."
    )
metrics_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="portal-metrics-"))


def on_starting(_server: object) -> None:
    for stale in glob.glob(os.path.join(metrics_dir, "*.db")):
        os.unlink(stale)


def child_exit(_server: object, worker: Any) -> None:
    """A worker gone (restarted, timed out, crashed): it gives back the hashing slots it held, and
    its live gauges stop counting while its counters stay summed."""
    from prometheus_client import multiprocess

    hash_slots.reclaim(worker.hash_slot_index)
    multiprocess.mark_process_dead(worker.pid)


def on_exit(_server: object) -> None:
    if _own_metrics_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)
