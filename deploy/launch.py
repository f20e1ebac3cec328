"""The portal's app server started on this machine: for the production rehearsal (stack.py), the
tests that meet a real gunicorn, and the benchmarks in bench/.

It lives beside stack.py rather than in the ``portal`` package because no deployed server runs it:
it starts gunicorn from this checkout (``wsgi:app`` is at its top) and makes throw-away database
schemas, so the installed package stays what production needs. ``python deploy/stack.py`` finds it
beside itself, the tests have deploy/ on their path (setup.cfg) and bench/benchlib.py adds it.
It needs the standard library and SQLAlchemy, which the portal already requires; never a test tool.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).parent / "gunicorn")  # the venv's, beside the python running us
BOOTED = "Booting worker"  # gunicorn logs it once a worker is forked and about to load the app


def free_port() -> int:
    """A loopback port nobody listens on, for a server about to start."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def portal_environment(settings: Mapping[str, Any]) -> dict[str, str]:
    """This process's environment with ``settings`` (names without the prefix) as its only PORTAL_*
    variables: one inherited from a shell or a test run must not change the server started. Nor is
    a metrics directory inherited: each server makes its own unless the caller names one.
    Non-strings are written as JSON, which is how the portal reads them back; None leaves one out."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PORTAL_") and name != "PROMETHEUS_MULTIPROC_DIR"
    }
    for name, value in settings.items():
        if value is not None:
            env[f"PORTAL_{name}"] = value if isinstance(value, str) else json.dumps(value)
    return env


@contextlib.contextmanager
def private_schema(base_url: str, name: str, options: str = "") -> Iterator[str]:
    """A new schema ``name`` on the PostgreSQL of ``base_url``, dropped on exit, so that concurrent
    runs never see each other's tables. Yields a URL whose connections use it as search_path (with
    libpq ``options`` added) and carry its name as application_name: the drop first ends any of them
    an interrupted run left inside a transaction, which would otherwise hold the drop forever."""
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {name}"))
    query = {"options": f"-csearch_path={name} {options}".strip(), "application_name": name}
    try:
        yield sa.make_url(base_url).update_query_dict(query).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            connection.execute(sa.text("SET lock_timeout = '30s'"))
            connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
        admin.dispose()


def get_status(port: int, path: str = "/", host: str | None = None, tls: ssl.SSLContext | None = None) -> int:
    """The status of one GET to 127.0.0.1:``port``, 0 while nothing answers."""
    if tls:
        connection: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=tls)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host} if host else {})
        return connection.getresponse().status
    except OSError:
        return 0
    finally:
        connection.close()


def stop_group(process: subprocess.Popen[Any], stop_signal: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Stop a child started in a session of its own and everything it forked: ``stop_signal`` to its
    process group, then SIGKILL to whatever of that group is left after ``grace`` seconds."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, stop_signal)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the group's id is the child's pid: ours only
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


class ServerExited(RuntimeError):
    """gunicorn exited before it was ready (a setting it refuses, an app that does not load)."""

    def __init__(self, returncode: int, message: str) -> None:
        super().__init__(message)
        self.returncode = returncode


class Gunicorn:
    """``gunicorn -c python:portal.gunicorn_config APP`` on 127.0.0.1:``port`` (a free one unless
    given), its output appended to ``log``. It runs in a session of its own, so that a stop reaches
    its workers too and a Ctrl+C in the terminal is left to the program that started it to handle."""

    def __init__(
        self, app: str, log: Path, *, port: int | None = None, cwd: Path = ROOT, options: Sequence[str] = ()
    ) -> None:
        self.command = [GUNICORN, "-c", "python:portal.gunicorn_config", *options, app]
        self.log = log
        self.port = port or free_port()
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.workers = 0  # PORTAL_WORKERS of the last start
        self.booted_before = 0  # BOOTED lines already in the log then: a restart appends to it

    def start(self, env: Mapping[str, str]) -> Self:
        """Start with ``env`` and PORTAL_BIND set to our port (again after a stop: same port, same log)."""
        self.workers = int(env.get("PORTAL_WORKERS") or os.cpu_count() or 1)  # gunicorn_config's default
        self.booted_before = self.log_text().count(BOOTED) if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command, cwd=self.cwd, env={**env, "PORTAL_BIND": f"127.0.0.1:{self.port}"},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    def wait_ready(
        self, path: str = "/", *, host: str | None = None, every_worker: bool = True, timeout: float = 60.0
    ) -> Self:
        """Until ``path`` answers 200 (asked for ``host`` when given) and, with ``every_worker``, each
        of the workers has booted, so that a measurement or a race meets all of them. ServerExited if
        gunicorn exits first, RuntimeError after ``timeout`` seconds: both with the log's tail."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                message = f"gunicorn on port {self.port} exited {self.process.returncode}:\n{self.log_tail()}"
                raise ServerExited(self.process.returncode, message)
            booted = not every_worker or self.log_text().count(BOOTED) >= self.booted_before + self.workers
            if booted and get_status(self.port, path, host) == 200:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn on port {self.port} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, stop_signal: int = signal.SIGTERM, grace: float = 10.0) -> None:
        """The master and its workers: SIGTERM lets requests in progress finish, within ``grace``."""
        if self.process is not None:
            stop_group(self.process, stop_signal, grace)
