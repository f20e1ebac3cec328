"""The production settings and deploy/ files: limits that hold whatever the number of processes,
and proxy, unit and environment files that agree with the portal they serve."""

from __future__ import annotations

import json
import logging
import os
import re
import runpy
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import production_variables
from gunicorn.arbiter import Arbiter
from launch import Gunicorn, ServerExited, portal_environment

from portal import hashing_slots
from portal.config import DEFAULTS, ConfigError, check_config
from portal.hashing_slots import MAX_SERVER_WORKERS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
GUNICORN_SETTINGS = {
    "BIND",
    "ACCESS_LOG",
    "HASH_SLOTS",
}  # read by portal/gunicorn_config.py, not in DEFAULTS


def production_config(**overrides: Any) -> dict[str, Any]:
    return {
        **DEFAULTS,
        "SECRET_KEY": secrets.token_urlsafe(32),
        "IDENTIFIER_KEY": secrets.token_urlsafe(32),
        "CODE_KEY": secrets.token_urlsafe(32),
        "AUDIT_KEY": secrets.token_urlsafe(32),
        "PROGRAMME_FILE": "/etc/portal/programme.toml",
        "TRUSTED_HOSTS": ["notice.example.org"],
        **overrides,
    }


# --- limits that hold whatever the number of processes --------------------------------------------


@pytest.mark.parametrize("workers", [None, 1, 2, 16])
def test_production_refuses_per_process_limits_unless_single_process_is_declared(workers: int | None) -> None:
    with pytest.raises(ConfigError, match="PORTAL_RATELIMIT_STORAGE_URI is memory://"):
        check_config(production_config(RATELIMIT_STORAGE_URI="memory://", WORKERS=workers))


@pytest.mark.parametrize("workers", [2, "16"])
def test_single_process_is_refused_when_gunicorn_runs_more_workers(workers: int | str) -> None:
    with pytest.raises(ConfigError, match=f"gunicorn runs {workers} workers"):
        check_config(production_config(RATELIMIT_STORAGE_URI="memory://", SINGLE_PROCESS=True, WORKERS=workers))


@pytest.mark.parametrize("workers", [None, 1])
def test_one_declared_process_may_count_in_memory(workers: int | None) -> None:
    check_config(production_config(RATELIMIT_STORAGE_URI="memory://", SINGLE_PROCESS=True, WORKERS=workers))


def test_a_shared_store_is_accepted_with_any_number_of_workers() -> None:
    check_config(production_config(RATELIMIT_STORAGE_URI="redis://redis.internal:6379/0", WORKERS=64))


def test_the_in_memory_fallback_is_refused_with_a_shared_store() -> None:
    with pytest.raises(ConfigError, match="PORTAL_RATELIMIT_IN_MEMORY_FALLBACK_ENABLED"):
        check_config(
            production_config(
                RATELIMIT_STORAGE_URI="redis://redis.internal:6379/0", RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True
            )
        )


@pytest.mark.parametrize("threads", [0, -1, "many"])
def test_a_thread_count_that_cannot_size_the_database_pool_is_refused(threads: Any) -> None:
    with pytest.raises(ConfigError, match="PORTAL_THREADS"):
        check_config(production_config(RATELIMIT_STORAGE_URI="redis://redis.internal:6379/0", THREADS=threads))


def test_development_may_count_in_memory() -> None:
    check_config(production_config(ENV="development", RATELIMIT_STORAGE_URI="memory://", WORKERS=4))


@pytest.fixture
def production_environment(tmp_path: Path) -> dict[str, str]:
    """PORTAL_* variables of a production server on SQLite with per-process limits."""
    variables = production_variables(tmp_path, RATELIMIT_STORAGE_URI="memory://", TRUSTED_HOSTS='["127.0.0.1"]')
    return {**portal_environment({}), **variables}


def serve(environment: dict[str, str], log: Path, *options: str) -> tuple[int | None, str]:
    """Start ``gunicorn -c python:portal.gunicorn_config`` as production does: (exit status or None if it
    served the landing page, its log). The server is stopped either way."""
    server = Gunicorn("portal.app:create_app()", log, options=options).start(environment)
    try:
        server.wait_ready(every_worker=False, timeout=30)
        return None, ""
    except ServerExited as exited:
        return exited.returncode, server.log_text()
    finally:
        server.stop(grace=30)


def test_gunicorn_with_several_workers_refuses_to_start_on_per_process_limits(
    production_environment: dict[str, str], tmp_path: Path
) -> None:
    """The issue's case: the README's production command on a 2-core server, limits left at memory://."""
    status, log = serve({**production_environment, "PORTAL_WORKERS": "2"}, tmp_path / "gunicorn.log")
    assert status not in (None, 0)
    assert "PORTAL_RATELIMIT_STORAGE_URI is memory://" in log


def test_gunicorn_tells_the_app_its_worker_count_even_when_given_on_the_command_line(
    production_environment: dict[str, str], tmp_path: Path
) -> None:
    single = {**production_environment, "PORTAL_SINGLE_PROCESS": "true", "PORTAL_WORKERS": "1"}
    status, log = serve(single, tmp_path / "three.log", "--workers", "3")
    assert status not in (None, 0)
    assert "gunicorn runs 3 workers" in log
    # The contrast: the same declared single process, really one worker, serves.
    assert serve(single, tmp_path / "one.log") == (None, "")


def test_gunicorn_refuses_more_workers_than_its_hashing_slots_track(
    production_environment: dict[str, str], tmp_path: Path
) -> None:
    """The slots' per-worker accounting has a fixed size: beyond it a worker would fail at fork."""
    status, log = serve(production_environment, tmp_path / "many.log", "--workers", str(MAX_SERVER_WORKERS + 1))
    assert status not in (None, 0)
    assert f"one server runs at most {MAX_SERVER_WORKERS}" in log


def test_a_server_started_from_a_test_or_a_shell_makes_its_own_metrics_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two servers sharing one would mix their metrics, and each one's start would empty it under
    the other (a start that read gunicorn_config.py in this process leaves its directory set here)."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/inherited")
    monkeypatch.setenv("PORTAL_ENV", "production")
    assert portal_environment({"WORKERS": 2}).keys() & {"PROMETHEUS_MULTIPROC_DIR", "PORTAL_ENV"} == set()
    assert portal_environment({"WORKERS": 2})["PORTAL_WORKERS"] == "2"


def test_gunicorn_config_refuses_to_start_once_prometheus_counts_per_process(tmp_path: Path) -> None:
    """prometheus_client picks per-process or shared values when it is first imported: imported
    before gunicorn_config.py sets PROMETHEUS_MULTIPROC_DIR (the old portal/__init__.py did it), no
    worker's count would reach /metrics. The server says so and does not start."""
    config = ROOT / "portal" / "gunicorn_config.py"
    load = f"import runpy; runpy.run_path({str(config)!r})"
    environment = {**portal_environment({}), "TMPDIR": str(tmp_path)}
    late = subprocess.run([sys.executable, "-c", load], env=environment, capture_output=True, text=True)
    assert late.returncode == 0, late.stderr
    early = subprocess.run(
        [sys.executable, "-c", "import prometheus_client; " + load], env=environment, capture_output=True, text=True
    )
    assert early.returncode == 1
    assert (
        "prometheus_client was imported before portal/gunicorn_config.py set PROMETHEUS_MULTIPROC_DIR" in early.stderr
    )


def test_a_worker_added_past_the_hashing_slots_accounting_is_refused_while_serving(
    gunicorn_settings: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """TTIN on a server already at the most its slots track: gunicorn's own handler, on an arbiter
    whose count the hook keeps, spawns nothing beyond it and the log says why."""
    arbiter = Arbiter.__new__(Arbiter)  # the real count property and TTIN handler, no server
    arbiter.cfg = SimpleNamespace(nworkers_changed=gunicorn_settings["nworkers_changed"], threads=7)
    arbiter.log = logging.getLogger("test.arbiter")
    arbiter._num_workers = MAX_SERVER_WORKERS
    spawned: list[int] = []
    arbiter.manage_workers = lambda: spawned.append(arbiter.num_workers)  # type: ignore[method-assign]

    arbiter.handle_ttin()

    assert spawned == [MAX_SERVER_WORKERS]
    assert os.environ["PORTAL_WORKERS"] == str(MAX_SERVER_WORKERS)
    assert os.environ["PORTAL_THREADS"] == "7"  # gunicorn's own count (--threads too) sizes the database pool
    assert f"one server runs at most {MAX_SERVER_WORKERS}; staying at {MAX_SERVER_WORKERS}" in caplog.text
    arbiter.handle_ttou()  # and the count still moves within range
    assert spawned[-1] == MAX_SERVER_WORKERS - 1 and os.environ["PORTAL_WORKERS"] == str(MAX_SERVER_WORKERS - 1)


# --- deploy/ ---------------------------------------------------------------------------------------


def env_template_names() -> list[str]:
    text = (DEPLOY / "portal.env.example").read_text(encoding="utf-8")
    return re.findall(r"^#? ?PORTAL_(\w+)=", text, flags=re.MULTILINE)


def test_the_environment_template_lists_every_setting() -> None:
    listed = env_template_names()
    assert set(DEFAULTS) - set(listed) == set(), "add the new setting to deploy/portal.env.example"
    assert set(listed) - set(DEFAULTS) - GUNICORN_SETTINGS == set(), "the template names a setting that does not exist"
    assert len(listed) == len(set(listed)), "a setting is listed twice"


def test_the_environment_template_is_safe_for_production() -> None:
    """Its non-secret values pass the production checks once the three keys are filled in."""
    text = (DEPLOY / "portal.env.example").read_text(encoding="utf-8")
    values = dict(re.findall(r"^PORTAL_(\w+)=(.*)$", text, flags=re.MULTILINE))
    assert values["RATELIMIT_STORAGE_URI"].startswith("redis://")
    assert values["TRUSTED_PROXIES"] == "1"
    check_config(
        production_config(
            RATELIMIT_STORAGE_URI=values["RATELIMIT_STORAGE_URI"],
            RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=values["RATELIMIT_IN_MEMORY_FALLBACK_ENABLED"] == "true",
            TRUSTED_PROXIES=int(values["TRUSTED_PROXIES"]),
            TRUSTED_PROXY_NETWORKS=json.loads(values["TRUSTED_PROXY_NETWORKS"].strip("'")),
        )
    )


@pytest.mark.parametrize(
    ("settings", "refusal"),
    [
        ({"TRUSTED_PROXIES": 1}, "PORTAL_TRUSTED_PROXY_NETWORKS names no proxy"),
        ({"TRUSTED_PROXIES": -1}, "PORTAL_TRUSTED_PROXIES is the number of proxies"),
        ({"TRUSTED_PROXIES": 1, "TRUSTED_PROXY_NETWORKS": ["nginx.internal"]}, "is not a network"),
        ({"TRUSTED_PROXY_NETWORKS": "10.0.1.10/32"}, "PORTAL_TRUSTED_PROXY_NETWORKS must be a JSON list"),
    ],
)
def test_forwarded_headers_believed_from_no_named_proxy_are_refused(settings: dict[str, Any], refusal: str) -> None:
    """A proxy count without the proxies' addresses would believe any client's X-Forwarded-For."""
    with pytest.raises(ConfigError, match=refusal):
        check_config(production_config(RATELIMIT_STORAGE_URI="redis://redis.internal:6379/0", **settings))


@pytest.fixture
def gunicorn_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """portal/gunicorn_config.py as gunicorn reads it. What it sets for the server's processes is
    restored afterwards: PORTAL_WORKERS and PORTAL_THREADS, the metrics directory (every server started later from
    this process would otherwise share it, and each one's start empties it under the others) and
    the server's hashing slots (which every hasher made later in this process would otherwise share)."""
    monkeypatch.setenv("PORTAL_WORKERS", "2")
    monkeypatch.delenv("PORTAL_THREADS", raising=False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(hashing_slots, "_server_slots", hashing_slots.server_hashing_slots())
    return runpy.run_path(str(ROOT / "portal" / "gunicorn_config.py"))


def nginx_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for name in ("portal.conf", "portal_proxy.conf"):
        for line in (DEPLOY / "nginx" / name).read_text(encoding="utf-8").splitlines():
            match = re.match(r"\s*(\w+)\s+([^#]*?);", line)
            if match:
                directives.setdefault(match.group(1), []).append(match.group(2))
    return directives


def seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)s", value)
    assert match, f"write nginx times in seconds: {value}"
    return int(match.group(1))


def test_nginx_limits_match_the_portals(gunicorn_settings: dict[str, Any]) -> None:
    nginx = nginx_directives()
    assert nginx["client_max_body_size"] == [f"{DEFAULTS['MAX_CONTENT_LENGTH'] // 1024}k"]
    # The proxy waits as long as gunicorn lets a request run, and no less than a lookup may queue.
    assert seconds(nginx["proxy_read_timeout"][0]) == gunicorn_settings["timeout"]
    assert seconds(nginx["proxy_send_timeout"][0]) == gunicorn_settings["timeout"]
    assert seconds(nginx["proxy_read_timeout"][0]) > DEFAULTS["HASH_WAIT_SECONDS"]
    # Pooled connections are closed by nginx before gunicorn would close them under a request.
    assert seconds(nginx["keepalive_timeout"][0]) < gunicorn_settings["keepalive"]


def test_nginx_sets_the_forwarding_headers_and_never_appends() -> None:
    headers = dict(value.split(None, 1) for value in nginx_directives()["proxy_set_header"])
    assert headers["X-Forwarded-For"] == "$remote_addr"  # not $proxy_add_x_forwarded_for
    assert headers["X-Forwarded-Proto"] == "$scheme"
    assert headers["X-Forwarded-Host"] == headers["Host"] == "$host:$server_port"
    assert headers["Forwarded"] == '""'
    assert headers["X-Request-ID"] == "$request_id"  # the only id the app keeps (portal/telemetry.py)
    assert not any("add_x_forwarded" in value for value in headers.values())


@pytest.mark.systemd
def test_the_gunicorn_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "portal.service").read_text(encoding="utf-8")
    assert "/srv/portal/venv/bin/gunicorn" in unit
    local = tmp_path / "portal.service"
    local.write_text(unit.replace("/srv/portal/venv/bin/gunicorn", str(BIN / "gunicorn")), encoding="utf-8")
    done = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")
    for hardening in (
        "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "ProtectHome=yes",
        "CapabilityBoundingSet=\n", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "MemoryDenyWriteExecute=yes",
    ):  # fmt: skip
        assert hardening in unit


@pytest.fixture
def no_write_execute_memory() -> Iterator[None]:
    """This kernel has prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) (Linux 6.3+): the refusal systemd's
    MemoryDenyWriteExecute= applies (as a seccomp filter on older kernels)."""
    probe = "import ctypes; raise SystemExit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0))"
    if subprocess.run([sys.executable, "-c", probe]).returncode != 0:
        pytest.skip("this kernel has no PR_SET_MDWE")
    yield


MDWE_RUNNER = """
import ctypes, mmap, sys
assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    pass
else:
    sys.exit("writable and executable memory was still allowed")
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def test_the_portal_runs_without_writable_executable_memory(no_write_execute_memory: None) -> None:
    """MemoryDenyWriteExecute=yes in the unit: the claim flow (Argon2 through cffi, AES-GCM through
    cryptography, PostgreSQL through psycopg when configured) under the kernel's same refusal."""
    tests = ["tests/test_public.py", "-k", "claim_flow or verified_person_sees", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run([sys.executable, "-c", MDWE_RUNNER, *tests], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"\b[2-9] passed", done.stdout)
