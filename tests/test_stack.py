"""End to end through the production topology (deploy/stack.py, what ``./dev.sh stack`` runs):
nginx with TLS in front of two gunicorn servers (2 workers x 4 threads each) on one PostgreSQL
schema and one Redis, production settings and Argon2 parameters.

Each test speaks from its own loopback address (127.0.0.0/8 is all local), so that the
per-client limit of one never throttles another. Runs when PORTAL_TEST_NGINX is set (`.ci/run`).
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from conftest import POSTGRES_URL, REDIS_URL
from limits import parse_many
from stack import HOST, Stack
from test_faults import PrivateRedis

from portal.config import DEFAULTS
from portal.network import recorded_client

pytestmark = [pytest.mark.nginx, pytest.mark.postgres, pytest.mark.redis]

CSRF_FIELD = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
CODE_ON_PAGE = re.compile(r"<code>([^<]+)</code>")


def first_refusal(*settings: str) -> int:
    """Attempts answered before a 429 when they come all at once: the smallest of the production limits."""
    return min(item.amount for setting in settings for item in parse_many(DEFAULTS[setting]))


PERSON_LIMIT = first_refusal("VERIFY_LIMIT_PERSON")
CLIENT_LIMIT = first_refusal("VERIFY_LIMIT_CLIENT", "VERIFY_LIMIT_CLIENT_ATTEMPTS")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(POSTGRES_URL, REDIS_URL, patients=40) as running:
        yield running


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: str


@dataclass
class Browser:
    """One visitor: a keep-alive connection from ``source``, its cookies, optional extra headers.

    Through nginx (``tls`` given) or straight to an app server, then saying what nginx would.
    """

    port: int
    source: str = "127.0.0.1"
    tls: ssl.SSLContext | None = None
    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.connection: http.client.HTTPConnection | None = None

    @classmethod
    def direct(cls, port: int, source: str) -> Browser:
        return cls(port, source, headers={"X-Forwarded-For": source, "X-Forwarded-Proto": "https"})

    def _connect(self) -> http.client.HTTPConnection:
        if self.connection is None:
            address = (self.source, 0)
            if self.tls:
                self.connection = http.client.HTTPSConnection(
                    "127.0.0.1", self.port, timeout=30, context=self.tls, source_address=address
                )
            else:
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30, source_address=address)
        return self.connection

    def send(self, method: str, path: str, form: dict[str, str] | None = None, **headers: str) -> Answer:
        sent = {"Host": f"{HOST}:{self.port}" if self.tls else HOST, **self.headers, **headers}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = urlencode(form) if form is not None else None
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
            sent.setdefault("Referer", f"https://{sent['Host']}/lookup")  # CSRF checks it over HTTPS
        for attempt in (1, 2):
            reused = self.connection is not None
            try:
                connection = self._connect()
                connection.request(method, path, body=body, headers=sent)
                response = connection.getresponse()
                answer = Answer(response.status, response.headers, response.read().decode(errors="replace"))
                break
            except (OSError, http.client.HTTPException):
                self.close()
                if not reused or attempt == 2:  # an idle connection the server had closed: once more
                    raise
        for cookie in answer.headers.get_all("Set-Cookie") or []:
            name, _, value = cookie.split(";")[0].partition("=")
            self.cookies[name] = value
        if answer.headers.get("Connection", "").lower() == "close":
            self.close()
        return answer

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def token(self, path: str = "/lookup") -> str:
        page = self.send("GET", path)
        match = CSRF_FIELD.search(page.body)
        assert page.status == 200 and match, f"GET {path}: {page.status}"
        return match.group(1)

    def lookup(self, person: dict[str, str], token: str, last4: str | None = None) -> Answer:
        return self.send("POST", "/lookup", lookup_form(person, token, last4))


def lookup_form(person: dict[str, str], token: str, last4: str | None = None) -> dict[str, str]:
    return {
        "csrf_token": token, "last_name": person["last_name"], "date_of_birth": person["date_of_birth"],
        "zip_code": person["zip"], "ssn_last4": last4 or person["ssn"][-4:], "reference": "",
    }  # fmt: skip


def via_nginx(stack: Stack, source: str) -> Browser:
    return Browser(stack.https_port, source, stack.tls)


def people_with_ssn(stack: Stack) -> Iterator[dict[str, str]]:
    return (person for person in stack.people if person["ssn"])


def person(stack: Stack, index: int) -> dict[str, str]:
    """A different person for each test, so no test inherits another's failures."""
    return list(people_with_ssn(stack))[index]


def wrong(last4: str, n: int = 1) -> str:
    return f"{(int(last4) + n) % 10_000:04d}"


def events_from(stack: Stack, client: str, outcome: str) -> list[int]:
    """How many verification events with this outcome from this client's network each app server logged."""
    wanted = {"action": "verification", "outcome": outcome, "channel": "public", "client": recorded_client(client)}
    return [
        sum(wanted.items() <= event.items() for event in json_lines(server.log_text())) for server in stack.app_servers
    ]


def json_lines(log: str) -> list[dict[str, Any]]:
    """The log's JSON lines (events and requests), parsed."""
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def claimed_codes(stack: Stack) -> int:
    engine = sa.create_engine(stack.database_url)
    try:
        with engine.connect() as connection:
            query = "SELECT count(*) FROM activation_codes WHERE patient_id IS NOT NULL"
            return int(connection.execute(sa.text(query)).scalar_one())
    finally:
        engine.dispose()


# --- the proxy -------------------------------------------------------------------------------------


def test_nginx_accepts_the_shipped_configuration(stack: Stack) -> None:
    checked = stack.check_nginx()
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


def test_cookies_and_hsts_over_https_and_plain_http_only_redirects(stack: Stack) -> None:
    browser = via_nginx(stack, "127.0.0.11")
    # A client claiming plain HTTP to the app gets nothing: nginx says what the scheme was.
    page = browser.send("GET", "/lookup", **{"X-Forwarded-Proto": "http"})
    assert page.status == 200
    cookie = page.headers["Set-Cookie"]
    attributes = [part.strip() for part in cookie.split(";")]
    assert attributes[0].startswith("__Host-portal=")
    assert {"Secure", "HttpOnly", "Path=/", "SameSite=Lax"} <= set(attributes)
    assert not any(part.lower().startswith("domain") for part in attributes)
    assert page.headers.get_all("Strict-Transport-Security") == ["max-age=31536000; includeSubDomains"]
    assert len(page.headers.get_all("Content-Security-Policy") or []) == 1  # from the app alone

    plain = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=10)
    plain.request("GET", "/lookup?x=1", headers={"Host": HOST, "X-Forwarded-Proto": "https"})
    redirect = plain.getresponse()
    assert redirect.status == 301
    assert redirect.headers["Location"] == f"{stack.url}/lookup?x=1"
    assert redirect.headers["Set-Cookie"] is None
    plain.close()


def test_static_files_internal_pages_and_body_size_are_the_proxys(stack: Stack) -> None:
    outside, inside = via_nginx(stack, "127.0.0.12"), via_nginx(stack, "127.0.0.1")
    css = outside.send("GET", "/static/portal.css")
    assert css.status == 200 and "text/css" in css.headers["Content-Type"]
    assert css.headers.get_all("Cache-Control") == ["public, max-age=604800"]
    assert css.headers["Content-Security-Policy"] is None  # served from disk by nginx, not by the app

    # /agent/ only from the internal networks (here 127.0.0.1 stands for them, 127.0.0.12 for the world).
    assert outside.send("GET", "/agent/").status == 403
    assert outside.send("GET", "/agent/", **{"X-Forwarded-For": "10.0.0.5"}).status == 403
    assert inside.send("GET", "/agent/").status != 403

    oversized = outside.send("POST", "/lookup", {"csrf_token": "x", "last_name": "a" * 20_000})
    assert oversized.status == 413


# --- limits shared by every process ---------------------------------------------------------------


def test_the_person_limit_holds_across_both_servers(stack: Stack) -> None:
    """Five failures in all, not five on each server: both servers count in the same Redis."""
    who, source = person(stack, 0), "127.0.1.1"
    browser = via_nginx(stack, source)
    token = browser.token()
    statuses = [browser.lookup(who, token, wrong(who["ssn"][-4:], n)).status for n in range(1, 8)]
    assert statuses == [200] * PERSON_LIMIT + [429] * 2
    assert browser.lookup(who, token).status == 429  # even the right digits, now
    failures = events_from(stack, source, "failure")
    assert sum(failures) == PERSON_LIMIT and all(failures), f"failures per server: {failures}"


def test_the_client_limit_takes_the_address_from_the_proxy_only(stack: Stack) -> None:
    """A forged X-Forwarded-For is overwritten by nginx: every guess lands in the same client budgets."""
    source = "127.0.2.1"
    browser = via_nginx(stack, source)
    token = browser.token()
    base = person(stack, 1)
    statuses = []
    for n in range(CLIENT_LIMIT + 2):
        stranger = {**base, "last_name": f"Nobody{chr(65 + n // 26)}{chr(65 + n % 26)}"}
        forged = {"X-Forwarded-For": f"198.51.100.{n + 1}", "X-Real-IP": f"203.0.113.{n + 1}"}
        statuses.append(browser.send("POST", "/lookup", lookup_form(stranger, token, "0000"), **forged).status)
    assert statuses == [200] * CLIENT_LIMIT + [429] * 2
    failures = events_from(stack, source, "failure")
    assert sum(failures) == CLIENT_LIMIT and all(failures), f"failures per server: {failures}"
    assert not any("client=198.51.100." in server.log_text() for server in stack.app_servers)


def guesses_before_429(outcomes: list[int]) -> int:
    assert set(outcomes) <= {200, 429}, outcomes
    return outcomes.count(200)


def test_twenty_wrong_guesses_in_a_row_against_one_two_worker_server(stack: Stack) -> None:
    """The issue's run: twenty wrong last-four guesses for one person, to one server with 2 workers."""
    who = person(stack, 2)
    browser = Browser.direct(stack.app_servers[0].port, "127.0.4.1")
    token = browser.token()
    outcomes = []
    for n in range(1, 21):
        browser.close()  # a connection each, as separate visitors: they spread over both workers
        outcomes.append(browser.lookup(who, token, wrong(who["ssn"][-4:], n)).status)
    assert outcomes == [200] * PERSON_LIMIT + [429] * (20 - PERSON_LIMIT)


def test_twenty_simultaneous_wrong_guesses_against_one_two_worker_server(stack: Stack) -> None:
    """The same twenty guesses at once (8 request threads): each is counted before it is hashed."""
    who = person(stack, 3)
    browsers = [Browser.direct(stack.app_servers[0].port, f"127.0.5.{n}") for n in range(1, 21)]
    tokens = [browser.token() for browser in browsers]
    start = threading.Barrier(len(browsers))
    outcomes: list[int] = []

    def guess(browser: Browser, token: str, n: int) -> None:
        start.wait()
        outcomes.append(browser.lookup(who, token, wrong(who["ssn"][-4:], n)).status)

    threads = [
        threading.Thread(target=guess, args=(b, t, n)) for n, (b, t) in enumerate(zip(browsers, tokens, strict=True), 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 20
    assert guesses_before_429(outcomes) <= PERSON_LIMIT


# --- one database, any server ----------------------------------------------------------------------


def test_a_verification_started_on_one_server_continues_on_the_other(stack: Stack) -> None:
    who = person(stack, 4)
    first = Browser.direct(stack.app_servers[0].port, "127.0.6.1")
    found = first.lookup(who, first.token())
    assert found.status == 303 and found.headers["Location"].endswith("/exposure")

    second = Browser.direct(stack.app_servers[1].port, "127.0.6.1")
    second.cookies = first.cookies
    exposure = second.send("GET", "/exposure")
    assert exposure.status == 200
    claimed = second.send("POST", "/claim", {"csrf_token": CSRF_FIELD.findall(exposure.body)[0]})
    assert claimed.status == 303
    code_on_first = CODE_ON_PAGE.findall(first.send("GET", "/code").body)
    code_on_second = CODE_ON_PAGE.findall(second.send("GET", "/code").body)
    assert code_on_first and code_on_first == code_on_second


def test_a_claim_race_across_both_servers_gives_one_code(stack: Stack) -> None:
    """The same person, verified twice (once on each server), claims eight times at once on both."""
    who = person(stack, 5)
    before = claimed_codes(stack)
    sessions = []
    for server in stack.app_servers:
        browser = Browser.direct(server.port, "127.0.7.1")
        assert browser.lookup(who, browser.token()).status == 303
        sessions.append((browser.cookies, CSRF_FIELD.findall(browser.send("GET", "/exposure").body)[0]))

    racers = [(Browser.direct(stack.app_servers[n % 2].port, "127.0.7.1"), *sessions[(n // 2) % 2]) for n in range(8)]
    start = threading.Barrier(len(racers))
    outcomes: list[int] = []

    def claim(browser: Browser, cookies: dict[str, str], token: str) -> None:
        browser.cookies = dict(cookies)
        start.wait()
        outcomes.append(browser.send("POST", "/claim", {"csrf_token": token}).status)

    threads = [threading.Thread(target=claim, args=racer) for racer in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(set(outcomes)) in ([303], [303, 503]), outcomes
    codes = {CODE_ON_PAGE.findall(browser.send("GET", "/code").body)[0] for browser, _, _ in racers}
    assert len(codes) == 1
    assert claimed_codes(stack) == before + 1


# --- losing Redis ------------------------------------------------------------------------------------


def test_losing_redis_refuses_verifications_on_every_server_until_it_returns() -> None:
    """No process counts on its own meanwhile: every server answers 503 with Retry-After, pages stay up."""
    private = PrivateRedis()
    private.start()
    try:
        with Stack(POSTGRES_URL, private.url, patients=10) as small:
            who, source = person(small, 0), "127.0.9.1"
            browser = via_nginx(small, source)
            token = browser.token()
            assert browser.lookup(who, token, wrong(who["ssn"][-4:])).status == 200
            private.kill()
            refused = [browser.lookup(who, token, wrong(who["ssn"][-4:], n)) for n in range(2, 6)]
            assert [(a.status, bool(a.headers["Retry-After"])) for a in refused] == [(503, True)] * 4
            assert all(events_from(small, source, "limit-store-down")), "both servers refused"
            assert browser.send("GET", "/").status == 200
            assert browser.lookup(who, token).status == 503  # the right digits too: nothing is tried

            private.start()  # an empty Redis (no persistence here): the budgets start again
            statuses = [browser.lookup(who, token, wrong(who["ssn"][-4:], n)).status for n in range(6, 12)]
            assert statuses == [200] * PERSON_LIMIT + [429]
    finally:
        private.kill()
        private.client.close()


# --- losing an app server ----------------------------------------------------------------------------


ROUNDS_AT_MOST = CLIENT_LIMIT // 2  # each round is an attempt from the visitor's address


@dataclass
class Visitor:
    """Verifies, claims, reads the code and signs out through nginx, over and over."""

    browser: Browser
    who: dict[str, str]
    codes: list[str] = field(default_factory=list)
    bad_gateway: int = 0
    failures: list[str] = field(default_factory=list)

    def step(self, method: str, path: str, want: int, form: dict[str, str] | None = None) -> Answer | None:
        """One request; None when nginx answered 502 (a request in flight on the server that died)."""
        answer = self.browser.send(method, path, form)
        if answer.status == 502:
            self.bad_gateway += 1
            return None
        if answer.status != want:
            raise AssertionError(f"{method} {path}: {answer.status}")
        return answer

    def round(self) -> None:
        form = self.step("GET", "/lookup", 200)
        if not form or not self.step("POST", "/lookup", 303, lookup_form(self.who, CSRF_FIELD.findall(form.body)[0])):
            return
        exposure = self.step("GET", "/exposure", 200)
        token = CSRF_FIELD.findall(exposure.body)[0] if exposure else None
        if token and self.step("POST", "/claim", 303, {"csrf_token": token}):
            page = self.step("GET", "/code", 200)
            if page:
                self.codes.extend(CODE_ON_PAGE.findall(page.body)[:1])
                self.step("POST", "/sign-out", 303, {"csrf_token": CSRF_FIELD.findall(page.body)[0]})

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set() and len(self.codes) < ROUNDS_AT_MOST:
                self.round()
        except Exception as error:  # reported by the test, with the others
            self.failures.append(repr(error))


def wait_until(condition: Any, visitors: list[Visitor], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition() and not any(v.failures for v in visitors):
        time.sleep(0.05)


def test_one_app_server_killed_mid_traffic(stack: Stack) -> None:
    """The other server keeps answering through nginx; no claim is lost or doubled."""
    before = claimed_codes(stack)
    visitors = [Visitor(via_nginx(stack, f"127.0.8.{n}"), person(stack, 6 + n)) for n in range(1, 5)]
    stop = threading.Event()
    threads = [threading.Thread(target=visitor.run, args=(stop,)) for visitor in visitors]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(v.codes for v in visitors), visitors)
        stack.kill_server(1)
        at_kill = [len(v.codes) for v in visitors]
        assert max(at_kill) + 3 <= ROUNDS_AT_MOST, f"rounds before the kill: {at_kill}"
        wait_until(lambda: all(len(v.codes) >= n + 3 for v, n in zip(visitors, at_kill, strict=True)), visitors)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        stack.restart_server(1)
    assert [v.failures for v in visitors] == [[]] * len(visitors)
    assert all(len(v.codes) >= n + 3 for v, n in zip(visitors, at_kill, strict=True)), (
        "the surviving server stopped answering"
    )
    assert sum(v.bad_gateway for v in visitors) <= len(visitors), "only requests in flight at the kill may fail"
    assert [len(set(v.codes)) for v in visitors] == [1] * len(visitors), "a person saw two codes"
    assert len({v.codes[0] for v in visitors}) == len(visitors), "two people got one code"
    assert claimed_codes(stack) == before + len(visitors)
