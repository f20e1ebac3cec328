"""Health, readiness and Prometheus metrics: kept off the public host, honest when a dependency is
down, and summed over every gunicorn worker."""

from __future__ import annotations

import http.cookiejar
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import REDIS_URL, import_patients, make_app, make_config, patient_row, production_variables
from flask import Flask
from launch import Gunicorn, portal_environment
from live import server_environment
from prometheus_client.mmap_dict import MmapedDict
from test_faults import PrivateCluster, PrivateRedis, private_postgres, private_redis  # noqa: F401 (fixtures)

from portal.extensions import db
from portal.importer import import_codes
from portal.services import services

ROOT = Path(__file__).resolve().parent.parent
PERSON = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001"}


def test_healthz_answers_everyone(client: Any) -> None:
    client.environ_base["REMOTE_ADDR"] = "203.0.113.5"
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_data(as_text=True) == "ok\n"


def test_readyz_and_metrics_only_for_the_operators_host_or_network(database_url: str) -> None:
    app = make_app(database_url, OPS_HOSTS=["ops.internal"], OPS_NETWORKS=["10.8.0.0/16"])
    public = app.test_client()
    public.environ_base["REMOTE_ADDR"] = "203.0.113.5"
    for path in ("/readyz", "/metrics"):
        assert public.get(path).status_code == 404
        assert public.get(path, headers={"Host": "ops.internal"}).status_code in (200, 503)
    monitor = app.test_client()
    monitor.environ_base["REMOTE_ADDR"] = "10.8.3.4"
    assert monitor.get("/readyz").json == {"database": "ok", "limit_store": "ok"}
    assert b"portal_pool_codes" in monitor.get("/metrics").data
    # The default: loopback only; and an address that is none (a server on a unix socket) is no operator's.
    assert make_app(database_url).test_client().get("/readyz").status_code == 200
    assert make_app(database_url).test_client().get("/readyz", environ_base={"REMOTE_ADDR": ""}).status_code == 404


def test_readyz_names_a_database_that_cannot_be_opened(tmp_path: Path) -> None:
    """SQLite's counterpart of the PostgreSQL test below: the database file is gone, a directory in its place."""
    path = tmp_path / "portal.sqlite3"
    app = make_app(f"sqlite:///{path}")
    with app.app_context():
        db.engine.dispose()
    path.unlink()
    path.mkdir()
    response = app.test_client().get("/readyz")
    assert (response.status_code, response.json) == (503, {"database": "unavailable", "limit_store": "ok"})


@pytest.mark.parametrize(
    "proxies, forged, genuine",
    [
        # No proxy of ours: the header is the client's say-so; only the connection's address counts.
        (0, ("203.0.113.5", "127.0.0.1"), ("127.0.0.1", "203.0.113.5")),
        # One proxy: it appended the address it saw; what comes before is the client's say-so.
        (1, ("10.0.0.1", "127.0.0.1, 203.0.113.5"), ("10.0.0.1", "203.0.113.5, 127.0.0.1")),
    ],
    ids=["no-proxy", "one-proxy"],
)
def test_a_forged_forwarded_for_does_not_open_readyz_or_metrics(
    database_url: str, proxies: int, forged: tuple[str, str], genuine: tuple[str, str]
) -> None:
    """Only the address as PORTAL_TRUSTED_PROXIES resolves it is an operator's, never the header's first hop."""
    client = make_app(database_url, TRUSTED_PROXIES=proxies, TRUSTED_PROXY_NETWORKS=["10.0.0.0/8"]).test_client()
    for (remote, forwarded), status in ((forged, 404), (genuine, 200)):
        client.environ_base.update(REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
        assert [client.get(path).status_code for path in ("/readyz", "/metrics")] == [status] * 2, forwarded


@pytest.mark.postgres
def test_readyz_with_the_database_down(private_postgres: PrivateCluster) -> None:  # noqa: F811
    app = make_app(private_postgres.new_database())
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    private_postgres.stop()
    try:
        down = client.get("/readyz")
        assert down.status_code == 503 and down.json == {"database": "unavailable", "limit_store": "ok"}
        assert client.get("/healthz").status_code == 200  # alive: restarting the process would not help
    finally:
        private_postgres.start()
    assert client.get("/readyz").status_code == 200
    with app.app_context():
        db.engine.dispose()


@pytest.mark.redis
def test_readyz_with_redis_down(private_redis: PrivateRedis, database_url: str) -> None:  # noqa: F811
    client = make_app(database_url, RATELIMIT_STORAGE_URI=private_redis.url).test_client()
    assert client.get("/readyz").status_code == 200
    private_redis.kill()
    down = client.get("/readyz")
    assert down.status_code == 503 and down.json == {"database": "ok", "limit_store": "unavailable"}


# --- two gunicorn workers -------------------------------------------------------------------------


@contextmanager
def gunicorn(config: dict[str, Any], metrics_dir: Path, log: Path) -> Iterator[str]:
    """The portal under ``gunicorn -c python:portal.gunicorn_config`` with two workers of two threads,
    its metrics in ``metrics_dir``; ready as soon as one worker answers."""
    env = {**server_environment(config, workers=2, threads=2), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    server = Gunicorn("wsgi:app", log).start(env)
    try:
        server.wait_ready("/healthz", every_worker=False, timeout=30)
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop(grace=30)


class Visitor:
    """A browser of one: cookies, CSRF tokens, no redirects followed."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    def __init__(self, url: str) -> None:
        self.url = url
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), self._NoRedirect()
        )

    def send(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with self.opener.open(self.url + path, data=data, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def post(self, path: str, form: dict[str, str], page: str) -> int:
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', self.send(page)[1])
        assert token
        return self.send(path, {**form, "csrf_token": token.group(1)})[0]


def workers_that_served_the_landing_page(metrics_dir: Path) -> set[str]:
    """The worker processes whose own metric file counts a landing page."""
    return {
        path.stem.rsplit("_", 1)[-1]
        for path in metrics_dir.glob("histogram_*.db")
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path))
        if "public.index" in key and value > 0
    }


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


@pytest.mark.redis
def test_metrics_after_known_traffic_across_two_workers(tmp_path: Path) -> None:
    config = make_config(
        f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        RATELIMIT_STORAGE_URI=REDIS_URL,
        RATELIMIT_KEY_PREFIX=f"t{secrets.token_hex(4)}",
        VERIFY_LIMIT_PERSON="2 per hour",
        ALERT_CLIENT_FAILURES="2 per year",
    )
    app: Flask = make_app(config["DATABASE_URL"], **{k: v for k, v in config.items() if k != "DATABASE_URL"})
    second = patient_row(record_id="R-2", last_name="Okafor", date_of_birth="1961-02-03", zip="10002", ssn="219091001")
    assert import_patients(app, [patient_row(), second]) == []
    with app.app_context():
        codes = [{"code": f"OPS-{n:04d}", "enroll_by": (date.today() + timedelta(days=90)).isoformat()} for n in (1, 2)]
        import_codes(db.session, services().cipher, enumerate(codes, start=2), on_reject=pytest.fail)
        db.engine.dispose()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    with gunicorn(config, metrics_dir, tmp_path / "gunicorn.log") as url:
        # 40 landing pages at once, until both workers have answered some (their metric files say so;
        # the second worker may still be starting when the first answers).
        pages, deadline = 0, time.monotonic() + 90
        with ThreadPoolExecutor(8) as pool:
            while len(workers_that_served_the_landing_page(metrics_dir)) < 2:
                assert time.monotonic() < deadline, "one worker answered everything"
                assert set(pool.map(lambda _: Visitor(url).send("/")[0], range(40))) == {200}
                pages += 40
        # Two wrong guesses for one person, a third refused by the per-person limit (shared in Redis).
        wrong = {**PERSON, "ssn_last4": "0000", "reference": ""}
        assert [Visitor(url).post("/lookup", wrong, "/lookup") for _ in range(3)] == [200, 200, 429]
        visitor = Visitor(url)
        okafor = {"last_name": "Okafor", "date_of_birth": "1961-02-03", "zip_code": "10002", "ssn_last4": "1001"}
        assert visitor.post("/lookup", {**okafor, "reference": ""}, "/lookup") == 303
        assert visitor.post("/claim", {}, "/exposure") == 303
        figures, again = scrape(url), scrape(url)
        # Whichever worker answers a scrape, the same sums (the scrapes themselves aside).
        assert {k: v for k, v in figures.items() if "ops." not in k} == {
            k: v for k, v in again.items() if "ops." not in k
        }
        log = (tmp_path / "gunicorn.log").read_text()

    assert figures['portal_request_seconds_count{endpoint="public.index",status="200"}'] == pages
    assert figures['portal_request_seconds_bucket{endpoint="public.index",le="+Inf",status="200"}'] == pages
    assert figures['portal_request_seconds_count{endpoint="public.lookup",status="429"}'] == 1
    assert figures['portal_verifications_total{channel="public",outcome="failure"}'] == 2
    assert figures['portal_verifications_total{channel="public",outcome="throttled"}'] == 1
    assert figures['portal_verifications_total{channel="public",outcome="success"}'] == 1
    assert figures['portal_rate_limit_refusals_total{channel="public",limit="verify-person-public"}'] == 1
    assert figures['portal_claims_total{channel="public",outcome="success"}'] == 1
    assert figures['portal_alerts_total{channel="public",kind="client-failures"}'] == 1
    assert figures["portal_hash_slot_wait_seconds_count"] == 3  # the refused guess never hashed
    assert figures.get("portal_hash_busy_total", 0) == 0
    assert figures['portal_pool_codes{state="available"}'] == 1
    assert figures['portal_pool_codes{state="claimed"}'] == 1
    # Nothing about the person: only endpoint names, surfaces, outcomes and numbers.
    text = " ".join(figures)
    for value in ("Garc", "garc", "Okafor", "1980", "1961", "10001", "10002", "6789", "1001", "OPS-", "127.0.0.1"):
        assert value not in text
    assert "Traceback" not in log


LANDING_PAGES = 'portal_request_seconds_count{endpoint="public.index",status="200"}'


@pytest.mark.redis
def test_metrics_count_requests_under_the_systemd_unit_as_shipped(tmp_path: Path) -> None:
    """deploy/systemd/portal.service's command with its environment file's settings and nothing
    else: no PROMETHEUS_MULTIPROC_DIR beforehand (neither the unit nor portal.env.example sets one),
    two workers, a private /tmp. Both workers' requests are summed in /metrics."""
    unit = (ROOT / "deploy" / "systemd" / "portal.service").read_text(encoding="utf-8")
    command = re.search(r"^ExecStart=(.*)$", unit, re.MULTILINE)
    assert command and "PROMETHEUS" not in unit
    assert "PROMETHEUS" not in (ROOT / "deploy" / "portal.env.example").read_text(encoding="utf-8")
    program, *options, app_factory = command.group(1).split()
    assert program.endswith("/bin/gunicorn") and options == ["-c", "python:portal.gunicorn_config"]
    variables = production_variables(
        tmp_path, RATELIMIT_STORAGE_URI=REDIS_URL, RATELIMIT_KEY_PREFIX=f"t{secrets.token_hex(4)}",
        TRUSTED_HOSTS='["127.0.0.1"]', WORKERS="2",
    )  # fmt: skip
    with make_app(variables["PORTAL_DATABASE_URL"]).app_context():  # the schema, as `portal db upgrade` makes it
        db.engine.dispose()
    private_tmp = tmp_path / "tmp"  # PrivateTmp=yes: the directory gunicorn_config makes is found here
    private_tmp.mkdir()
    server = Gunicorn(app_factory, tmp_path / "gunicorn.log").start(
        {**portal_environment({}), **variables, "TMPDIR": str(private_tmp)}
    )
    try:
        server.wait_ready(timeout=60)
        url, pages, deadline = f"http://127.0.0.1:{server.port}", 0, time.monotonic() + 30
        before = scrape(url).get(LANDING_PAGES, 0)  # the readiness checks' pages
        with ThreadPoolExecutor(8) as pool:
            while len(served_by(private_tmp)) < 2 and time.monotonic() < deadline:
                assert set(pool.map(lambda _: Visitor(url).send("/")[0], range(40))) == {200}
                pages += 40
        figures, workers = scrape(url), served_by(private_tmp)
    finally:
        server.stop(grace=30)
    assert figures.get(LANDING_PAGES, 0) - before >= pages, figures  # a readiness check may land late
    assert len(workers) == 2, "one worker answered every page"


def served_by(folder: Path) -> set[str]:
    """The workers that counted a landing page in the metrics directories made under ``folder``."""
    directories = folder.glob("portal-metrics-*")
    return {worker for directory in directories for worker in workers_that_served_the_landing_page(directory)}
