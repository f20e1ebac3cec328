"""Guessing and enumeration: failures are limited per person, per client and overall, identically
whether or not the person exists; successes and malformed input are never counted."""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest
from conftest import REDIS_URL, create_api_key, import_patients, lookup, make_app, patient_row
from flask import Flask, request
from flask.testing import FlaskClient
from flask_limiter import Limiter
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

import portal.identity
from portal import throttle, verification
from portal.errors import RETRY_AFTER_SECONDS
from portal.extensions import db, limiter
from portal.models import AuditEvent, HourlyCount
from portal.network import client_key, client_network, recorded_client

KNOWN = {"last_name": "García-López", "date_of_birth": "1980-04-23", "zip_code": "10001"}
UNKNOWN = {"last_name": "Nobody", "date_of_birth": "1975-01-02", "zip_code": "10001"}
RIGHT_LAST4 = "6789"


def client_at(app: Flask, address: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def throttled_app(database_url: str, **limits: str) -> Flask:
    app = make_app(database_url, RATELIMIT_KEY_PREFIX=secrets.token_hex(4), **limits)
    assert import_patients(app, [patient_row()]) == []
    return app


def attempt(app: Flask, person: dict[str, str], last4: str, address: str) -> tuple[int, str, str | None]:
    response = lookup(client_at(app, address), **person, ssn_last4=last4)
    return response.status_code, response.get_data(as_text=True), response.headers.get("Retry-After")


def test_guessing_the_last_four_from_many_addresses_is_stopped(database_url: str) -> None:
    app = throttled_app(database_url, VERIFY_LIMIT_PERSON="5 per 15 minutes; 100 per year")
    outcomes = []
    for n, last4 in enumerate(f"{i:04d}" for i in range(10_000)):
        status, body, retry_after = attempt(app, KNOWN, last4, f"10.0.{n // 250}.{n % 250 + 1}")
        outcomes.append(status)
        if status == 429:
            assert retry_after and int(retry_after) > 0
            assert "Call 1-800-555-0142, Monday to Friday" in body  # the call center, from the programme file
            break
    assert outcomes == [200] * 5 + [429]
    # Once throttled, even the right answer is refused: a guesser cannot tell when they hit it.
    assert attempt(app, KNOWN, RIGHT_LAST4, "10.9.9.9")[0] == 429


# One person, typed eight ways: the bucket is keyed on the name as it is hashed, not as it was typed.
SPELLINGS_OF_OBRIEN = [
    "O'Brien",
    "obrien",
    "OBRIEN",
    " O\u2019Brien ",  # typographic apostrophe, surrounding blanks
    "O-B-R-I-E-N",
    "O'Brien" + " " * 80 + ".",  # padded towards the field's 100 characters
    "O\u200bBrien\u200b",  # zero-width spaces
    "\uff2f\uff42\uff52\uff49\uff45\uff4e",  # fullwidth letters
]


def test_every_spelling_of_one_name_shares_one_failure_budget(database_url: str) -> None:
    """A guesser who retypes the name differently must not get a fresh budget each time."""
    budget = len(SPELLINGS_OF_OBRIEN) - 1
    app = throttled_app(database_url, VERIFY_LIMIT_PERSON=f"{budget} per 15 minutes")
    obrien = {"date_of_birth": "1955-12-24", "zip_code": "80202"}
    assert (
        import_patients(
            app,
            [
                patient_row(
                    record_id="R-2",
                    last_name="O'Brien",
                    ssn="987-65-4321",
                    **{"zip": "80202", "date_of_birth": "1955-12-24"},
                )
            ],
        )
        == []
    )
    statuses = [
        attempt(app, {**obrien, "last_name": typed}, "0000", f"10.5.0.{n}")[0]
        for n, typed in enumerate(SPELLINGS_OF_OBRIEN, start=1)
    ]
    assert statuses == [200] * budget + [429]
    # The budget is spent for every spelling, even with the right digits ...
    for n, typed in enumerate(SPELLINGS_OF_OBRIEN, start=20):
        assert attempt(app, {**obrien, "last_name": typed}, "4321", f"10.5.0.{n}")[0] == 429
    # ... and only for this person: another birth date, or another name, is untouched.
    assert attempt(app, {**obrien, "date_of_birth": "1955-12-25", "last_name": "O'Brien"}, "0000", "10.5.1.1")[0] == 200
    assert attempt(app, {**obrien, "last_name": "O'Briens"}, "0000", "10.5.1.2")[0] == 200


def test_throttling_looks_the_same_for_unknown_people(database_url: str) -> None:
    app = throttled_app(database_url, VERIFY_LIMIT_PERSON="3 per 15 minutes")
    known = [attempt(app, KNOWN, "0000", f"10.1.0.{i}") for i in range(1, 6)]
    unknown = [attempt(app, UNKNOWN, "0000", f"10.2.0.{i}") for i in range(1, 6)]
    assert [s for s, _, _ in known] == [s for s, _, _ in unknown] == [200, 200, 200, 429, 429]
    strip = lambda body: body.replace("García-López", "X").replace("Nobody", "X")  # noqa: E731
    assert [strip(b) for s, b, _ in known if s == 429] == [strip(b) for s, b, _ in unknown if s == 429]


def test_answers_do_not_reveal_how_often_others_failed(database_url: str) -> None:
    """No rate-limit counters on the lookup's answers: the person bucket's count would tell whoever
    types a name and birth date how often others failed with them. A refusal says when to retry."""
    app = throttled_app(database_url, VERIFY_LIMIT_PERSON="2 per 15 minutes")
    answers = [lookup(client_at(app, f"10.3.0.{i}"), **KNOWN, ssn_last4="0000") for i in range(1, 4)]
    answers.append(lookup(client_at(app, "10.3.0.9"), **UNKNOWN, ssn_last4="0000"))
    assert [a.status_code for a in answers] == [200, 200, 429, 200]
    for answer in answers:
        assert not [name for name in answer.headers.keys() if name.lower().startswith("x-ratelimit")]
    assert 15 * 60 - 60 < int(answers[2].headers["Retry-After"]) <= 15 * 60 + 1
    assert "Retry-After" not in answers[0].headers


def test_a_limit_store_lost_while_counting_refuses_the_attempt_and_keeps_none_of_its_units(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading when a spent budget resets needs the limit store; without it, nothing is answered,
    the trail says why, and the units the attempt was seen to take are given back, as for any
    refusal: a store that fails now and then must not spend a person's budget."""
    app = throttled_app(database_url, VERIFY_LIMIT_CLIENT="1 per 15 minutes", VERIFY_LIMIT_PERSON="2 per hour")
    assert attempt(app, KNOWN, "0000", "10.4.0.1")[0] == 200

    def store_gone(*_args: Any) -> float:
        raise ConnectionError("limit store lost")

    with app.app_context(), monkeypatch.context() as patched:
        patched.setattr(throttle.limit_store(), "get_expiry", store_gone)
        status, body, retry_after = attempt(app, KNOWN, RIGHT_LAST4, "10.4.0.1")
    assert (status, retry_after) == (503, str(RETRY_AFTER_SECONDS))
    assert "García" not in body
    assert [attempt(app, KNOWN, "0000", "10.4.0.2")[0] for _ in range(2)] == [200, 429]  # one failure of two left
    with app.app_context():
        outcomes = db.session.scalars(
            select(AuditEvent.outcome).where(AuditEvent.action == "verification").order_by(AuditEvent.position)
        ).all()
    assert outcomes == ["failure", "limit-store-down", "failure", "throttled:verify-person-public"]


def test_one_client_address_is_limited_across_people(database_url: str) -> None:
    app = throttled_app(database_url, VERIFY_LIMIT_CLIENT="3 per hour")
    people = [{**UNKNOWN, "last_name": f"Person{chr(65 + i)}"} for i in range(4)]
    assert [attempt(app, p, "1111", "192.0.2.7")[0] for p in people] == [200, 200, 200, 429]
    assert attempt(app, KNOWN, RIGHT_LAST4, "192.0.2.8")[0] == 303


def test_forged_forwarded_for_does_not_buy_a_new_bucket(database_url: str) -> None:
    app = throttled_app(database_url, VERIFY_LIMIT_CLIENT="2 per hour")
    statuses = []
    for i in range(3):
        client = client_at(app, "192.0.2.50")
        client.environ_base["HTTP_X_FORWARDED_FOR"] = f"203.0.113.{i}"
        statuses.append(lookup(client, **{**UNKNOWN, "last_name": f"Guess{chr(65 + i)}"}, ssn_last4="1111").status_code)
    assert statuses == [200, 200, 429]


def test_one_trusted_proxy_hop_is_honoured(database_url: str) -> None:
    app = throttled_app(
        database_url, VERIFY_LIMIT_CLIENT="2 per hour", TRUSTED_PROXIES=1, TRUSTED_PROXY_NETWORKS=["127.0.0.1/32"]
    )
    statuses = []
    for i in range(3):
        client = client_at(app, "127.0.0.1")  # the proxy
        client.environ_base["HTTP_X_FORWARDED_FOR"] = f"203.0.113.{i}"  # a different real client each time
        statuses.append(lookup(client, **{**UNKNOWN, "last_name": f"Guess{chr(65 + i)}"}, ssn_last4="1111").status_code)
    assert statuses == [200, 200, 200]


def test_the_whole_portal_has_a_ceiling(database_url: str) -> None:
    app = throttled_app(database_url, VERIFY_LIMIT_GLOBAL="4 per minute")
    statuses = [
        attempt(app, {**UNKNOWN, "last_name": f"Many{chr(65 + i)}"}, "2222", f"198.51.100.{i + 1}")[0] for i in range(5)
    ]
    assert statuses == [200, 200, 200, 200, 429]


def test_successes_are_not_counted(database_url: str) -> None:
    app = throttled_app(database_url, VERIFY_LIMIT_PERSON="2 per 15 minutes", VERIFY_LIMIT_CLIENT="2 per hour")
    assert [attempt(app, KNOWN, RIGHT_LAST4, "192.0.2.9")[0] for _ in range(6)] == [303] * 6


def test_malformed_input_is_refused_before_hashing_and_not_counted(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = throttled_app(database_url, VERIFY_LIMIT_PERSON="2 per 15 minutes", VERIFY_LIMIT_CLIENT="2 per hour")
    calls = []
    real_stretch = portal.identity.stretch
    monkeypatch.setattr(portal.identity, "stretch", lambda *a: calls.append(1) or real_stretch(*a))
    bad = [
        {**KNOWN, "last_name": "x" * 5000},
        {**KNOWN, "date_of_birth": "1980-02-30"},
        {**KNOWN, "zip_code": "1" * 400},
        {**KNOWN, "ssn_last4": "12345678"},
    ]
    for fields in bad * 2:
        response = lookup(client_at(app, "192.0.2.10"), **{"ssn_last4": "1234", **fields})
        assert response.status_code == 400
    assert calls == []
    assert attempt(app, KNOWN, RIGHT_LAST4, "192.0.2.10")[0] == 303


def _restart_after_three_failures(database_url: str, storage_uri: str) -> int:
    """Three failures on one app server, then the same person on a freshly started one."""
    shared = {
        "RATELIMIT_STORAGE_URI": storage_uri,
        "RATELIMIT_KEY_PREFIX": secrets.token_hex(4),
        "VERIFY_LIMIT_PERSON": "3 per 15 minutes",
    }
    first = make_app(database_url, **shared)
    assert import_patients(first, [patient_row()]) == []
    assert [attempt(first, KNOWN, "0000", f"10.3.0.{i}")[0] for i in range(3)] == [200] * 3
    same_keys = {name: first.config[name] for name in ("IDENTIFIER_KEY", "CODE_KEY", "SECRET_KEY")}
    second = make_app(database_url, **shared, **same_keys)  # a new process-level limiter storage
    return attempt(second, KNOWN, "0000", "10.3.0.9")[0]


@pytest.mark.redis
def test_limits_are_shared_between_app_servers_through_redis(tmp_path) -> None:
    assert _restart_after_three_failures(f"sqlite:///{tmp_path / 'a.sqlite3'}", REDIS_URL) == 429
    # The contrast that makes the test meaningful: per-process memory forgets across servers.
    assert _restart_after_three_failures(f"sqlite:///{tmp_path / 'b.sqlite3'}", "memory://") == 200


@pytest.mark.redis
def test_the_limit_store_reads_its_replies_with_the_c_parser(tmp_path) -> None:
    """hiredis is a declared dependency for speed: a lookup makes three round trips, an API call five,
    and redis-py's pure-Python reader costs measurably more of each (bench/README.md)."""
    from redis._parsers import _HiredisParser

    make_app(f"sqlite:///{tmp_path / 'portal.sqlite3'}", RATELIMIT_STORAGE_URI=REDIS_URL)
    connection = limiter.storage.storage.connection_pool.get_connection()  # type: ignore[attr-defined]
    assert isinstance(connection._parser, _HiredisParser), type(connection._parser)


def test_no_limit_relies_on_flask_limiters_before_request_pass(database_url: str) -> None:
    """The before-request pass of Flask-Limiter is dropped (portal.throttle.init_app): it is the only
    place default, application and blueprint limits are checked, so none may be declared."""
    app = make_app(database_url)
    manager = limiter.limit_manager
    assert manager.default_limits == [] and manager.application_limits == []
    assert not manager._blueprint_limits, "a blueprint limit would never be checked"
    assert limiter._check_request_limit not in app.before_request_funcs.get(None, [])


def test_only_marked_views_run_the_limiters_after_request_work(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flask-Limiter's after-request and teardown passes (headers, state reset) run for the views
    marked with_limiter_hooks, and for no other page (portal.throttle.init_app); the portal's own
    after-request work (the request id, the security headers) runs for every page."""
    seen: list[str] = []
    for name in ("_Limiter__inject_headers", "_Limiter__release_context"):
        original = getattr(Limiter, name)

        def spy(self: Limiter, value: Any, original: Any = original, name: str = name) -> Any:
            seen.append(f"{name.rsplit('__', 1)[1]} {request.method} {request.path}")
            return original(self, value)

        monkeypatch.setattr(Limiter, name, spy)
    app = throttled_app(database_url)

    @app.get("/limited")
    @throttle.with_limiter_hooks
    @limiter.limit("1 per minute")
    def limited() -> str:
        return "ok"

    client = app.test_client()
    answers = [client.get(path) for path in ("/", "/lookup", "/exposure", "/no-such-page")]
    answers.append(lookup(client, **UNKNOWN, ssn_last4="0000"))
    assert answers[-1].status_code == 200
    assert seen == []
    answers += [client.get("/limited") for _ in range(2)]
    assert [answer.status_code for answer in answers[-2:]] == [200, 429]
    assert seen == ["inject_headers GET /limited", "release_context GET /limited"] * 2
    assert all("X-Request-ID" in answer.headers and "Content-Security-Policy" in answer.headers for answer in answers)


def test_successes_count_against_the_clients_attempt_budget(database_url: str) -> None:
    """The attempt budget keeps a success (refund_on_success=False): one address cannot verify its
    own identity in a loop, while the failure budgets give a success back."""
    app = throttled_app(database_url, VERIFY_LIMIT_CLIENT_ATTEMPTS="3 per minute", VERIFY_LIMIT_PERSON="1 per minute")
    assert [attempt(app, KNOWN, RIGHT_LAST4, "192.0.2.60")[0] for _ in range(4)] == [303, 303, 303, 429]
    assert attempt(app, KNOWN, RIGHT_LAST4, "192.0.2.61")[0] == 303  # another address, and the person, are fine


def test_an_attempt_that_ends_in_an_error_gives_back_every_unit(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its caller learnt nothing (SECURITY.md): the failure, attempt and people budgets all give back."""
    app = throttled_app(
        database_url,
        VERIFY_LIMIT_PERSON="1 per 15 minutes",
        VERIFY_LIMIT_CLIENT="1 per hour",
        VERIFY_LIMIT_CLIENT_ATTEMPTS="1 per minute",
        VERIFY_LIMIT_CLIENT_PEOPLE="1 per day",
        VERIFY_LIMIT_GLOBAL="1 per minute",
    )

    def database_lost(*_args: Any) -> None:
        raise OperationalError("SELECT", {}, ConnectionError("database lost"))

    with monkeypatch.context() as patched:
        patched.setattr(verification, "find_patient", database_lost)
        assert [attempt(app, KNOWN, RIGHT_LAST4, "192.0.2.70")[0] for _ in range(3)] == [503] * 3
    assert attempt(app, KNOWN, RIGHT_LAST4, "192.0.2.70")[0] == 303


def test_every_attempt_is_recorded_with_who_made_it_and_from_where(database_url: str) -> None:
    """A success, a failure and the refusal after it each name the partner key that asked and the
    client's network: a campaign is traced to its key and network whatever its attempts' fate."""
    app = throttled_app(database_url, API_VERIFY_LIMIT_PERSON="1 per 15 minutes")
    key, client = create_api_key(app), client_at(app, "198.51.100.7")
    bodies = [{**KNOWN, "ssn_last4": RIGHT_LAST4}] + [{**KNOWN, "ssn_last4": "0000"}] * 2
    answers = [client.post("/api/v1/verifications", json=body, headers={"Authorization": f"Bearer {key}"})
               for body in bodies]  # fmt: skip
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    with app.app_context():
        rows = db.session.execute(
            select(AuditEvent.outcome, AuditEvent.channel, AuditEvent.actor, AuditEvent.client)
            .where(AuditEvent.action == "verification")
            .order_by(AuditEvent.at)
        ).all()
    assert [row.outcome for row in rows] == ["success", "failure", "throttled:verify-person-api"]
    assert rows[0].actor.startswith("api-key:")
    assert {(row.channel, row.actor, row.client) for row in rows} == {("api", rows[0].actor, "198.51.100.0/24")}


@pytest.mark.parametrize(
    "address, counted_as",
    [
        ("2001:db8:1:2::5", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("192.0.2.7", "192.0.2.7"),
        ("", "unknown"),
        (None, "unknown"),
        ("not an address", "unknown"),
    ],
)
def test_a_client_is_an_ipv4_address_or_an_ipv6_64(address: str | None, counted_as: str) -> None:
    assert client_key(address) == counted_as


@pytest.mark.parametrize(
    "address, people_counted_in, recorded_as",
    [
        ("192.0.2.7", "192.0.2.0/24", "192.0.2.0/24"),
        ("::ffff:192.0.2.7", "192.0.2.0/24", "192.0.2.0/24"),
        ("2001:db8:1:2::5", "2001:db8:1:2::/64", "2001:db8:1::/48"),
        ("", "unknown", None),
        (None, "unknown", None),
    ],
)
def test_people_are_counted_per_ipv4_24_or_ipv6_64_and_the_trail_keeps_a_24_or_48(
    address: str | None, people_counted_in: str, recorded_as: str | None
) -> None:
    assert client_network(address) == people_counted_in
    assert recorded_client(address) == recorded_as
    # An IPv6 zone names an interface of the sender's machine, nothing about a client.
    assert recorded_client("fe80::1%eth0") is None


OTHER = {"last_name": "O'Brien", "date_of_birth": "1955-12-24", "zip_code": "80202"}
OTHER_ROW = patient_row(
    record_id="R-2", last_name="O'Brien", ssn="987-65-4321", zip="80202", date_of_birth="1955-12-24"
)
STRANGER, THIRD = {**UNKNOWN, "last_name": "Other"}, {**UNKNOWN, "last_name": "Third"}
# Attempts (person, last four, address, status) against one budget set to one a day: the refusal,
# then someone the budget does not count (another person, address or network) is served.
ONE_PERSON = [(KNOWN, "0000", "10.6.0.1", 200), (KNOWN, "0000", "10.7.0.1", 429), (UNKNOWN, "0000", "10.8.0.1", 200)]
ONE_ADDRESS = [
    (UNKNOWN, "0000", "10.6.0.1", 200),
    (STRANGER, "0000", "10.6.0.1", 429),
    (THIRD, "0000", "10.6.0.2", 200),
]
# A failure and the same person again are not more people; a second person from the network is.
ONE_NETWORK = [
    (UNKNOWN, "0000", "10.6.0.1", 200),
    (KNOWN, RIGHT_LAST4, "10.6.0.3", 303),
    (KNOWN, RIGHT_LAST4, "10.6.0.4", 303),
    (OTHER, "4321", "10.6.0.2", 429),
    (OTHER, "4321", "10.7.0.1", 303),
]
EVERYONE = [(UNKNOWN, "0000", "10.6.0.1", 200), (STRANGER, "0000", "10.7.0.1", 429), (THIRD, "0000", "10.8.0.1", 429)]


@pytest.mark.parametrize(
    "setting, attempts, scope",
    [
        ("VERIFY_LIMIT_PERSON", ONE_PERSON, "verify-person-public"),
        ("VERIFY_LIMIT_PERSON_SHARED", ONE_PERSON, "verify-person"),
        ("VERIFY_LIMIT_CLIENT", ONE_ADDRESS, "verify-client"),
        ("VERIFY_LIMIT_CLIENT_ATTEMPTS", ONE_ADDRESS, "verify-client-attempts"),
        ("VERIFY_LIMIT_CLIENT_PEOPLE", ONE_NETWORK, "verify-client-people"),
        ("VERIFY_LIMIT_GLOBAL", EVERYONE, "verify-global"),
    ],
)
def test_each_budget_counts_its_own_and_its_refusal_is_recorded_under_its_name(
    database_url: str, setting: str, attempts: list[tuple[dict[str, str], str, str, int]], scope: str
) -> None:
    """A budget spends only for what it counts. The trail says which budget refused (the dashboard
    and an investigation read it), and only a network that verified many people is sent to the call
    center instead of being told to wait."""
    app = throttled_app(database_url, **{setting: "1 per day"})
    assert import_patients(app, [OTHER_ROW]) == []
    answers = [attempt(app, person, last4, address) for person, last4, address, _ in attempts]
    assert [status for status, _, _ in answers] == [status for *_, status in attempts]
    with app.app_context():
        outcomes = db.session.scalars(
            select(AuditEvent.outcome).where(AuditEvent.action == "verification").order_by(AuditEvent.position)
        ).all()
    refused = [status for status, _, _ in answers].index(429)
    assert outcomes[refused] == f"throttled:{scope}"
    sent_to_call_center = "Many different people have already been checked" in answers[refused][1]
    assert sent_to_call_center == (scope == throttle.PEOPLE_SCOPE)


def test_budgets_with_one_key_and_one_limit_count_apart(database_url: str) -> None:
    """The site's and the shared person budget, and the client's failure and attempt budgets, key on
    the same values: set to the same limit, each still counts its own (one unit an attempt)."""
    app = throttled_app(database_url, **{name: "3 per hour" for name in (
        "VERIFY_LIMIT_PERSON", "VERIFY_LIMIT_PERSON_SHARED", "VERIFY_LIMIT_CLIENT", "VERIFY_LIMIT_CLIENT_ATTEMPTS")})  # fmt: skip
    assert [attempt(app, KNOWN, "0000", "10.9.0.1")[0] for _ in range(4)] == [200, 200, 200, 429]


@pytest.mark.parametrize(
    "setting, attempts, retry_after",
    [
        ("VERIFY_LIMIT_CLIENT", ONE_ADDRESS[:2], (3000, 3001)),  # the rest of the window, rounded up
        ("VERIFY_LIMIT_PERSON", ONE_PERSON[:2], (3600, 3600)),  # strangers share it: the whole window
        ("VERIFY_LIMIT_PERSON_SHARED", ONE_PERSON[:2], (3600, 3600)),
    ],
)
def test_a_refusal_says_when_to_come_back_and_never_when_others_tried(
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    attempts: list[tuple[dict[str, str], str, str, int]],
    retry_after: tuple[int, int],
) -> None:
    """Retry-After on a client's budget: never before its window ends (a client that obeys is not
    refused again), at most a second after. On a person's, the whole window whenever it started:
    the seconds left would tell whoever types a name and birth date when someone last tried. The
    clock stands still but for the ten minutes between the two attempts."""
    app = throttled_app(database_url, **{setting: "1 per hour"})
    clock = [time.time()]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    (person, last4, address, _), (again, again_last4, again_address, _) = attempts
    assert attempt(app, person, last4, address)[0] == 200
    clock[0] += 600
    status, _, seconds = attempt(app, again, again_last4, again_address)
    assert status == 429 and seconds is not None and retry_after[0] <= int(seconds) <= retry_after[1]


@pytest.mark.redis
def test_portals_sharing_one_redis_under_other_prefixes_count_apart(tmp_path) -> None:
    """RATELIMIT_KEY_PREFIX keeps the budgets of portals (or test runs) that share one Redis apart."""
    limits = {"RATELIMIT_STORAGE_URI": REDIS_URL, "VERIFY_LIMIT_PERSON": "1 per 15 minutes"}
    first = make_app(f"sqlite:///{tmp_path / 'a.sqlite3'}", RATELIMIT_KEY_PREFIX=secrets.token_hex(4), **limits)
    keys = {name: first.config[name] for name in ("IDENTIFIER_KEY", "CODE_KEY", "SECRET_KEY")}
    second = make_app(
        f"sqlite:///{tmp_path / 'b.sqlite3'}", RATELIMIT_KEY_PREFIX=secrets.token_hex(4), **limits, **keys
    )
    assert [attempt(first, UNKNOWN, "0000", "10.3.0.1")[0] for _ in range(2)] == [200, 429]
    assert attempt(second, UNKNOWN, "0000", "10.3.0.2")[0] == 200


@pytest.mark.redis
def test_portals_sharing_one_redis_under_other_prefixes_raise_their_own_alerts(tmp_path) -> None:
    """Attack detection counts in the same store as the limits, under the same prefix: another
    portal's failures from an address never add up to an alert here."""
    settings = {"RATELIMIT_STORAGE_URI": REDIS_URL, "ALERT_CLIENT_FAILURES": "2 per year"}
    first = make_app(f"sqlite:///{tmp_path / 'a.sqlite3'}", RATELIMIT_KEY_PREFIX=secrets.token_hex(4), **settings)
    keys = {name: first.config[name] for name in ("IDENTIFIER_KEY", "CODE_KEY", "SECRET_KEY")}
    second = make_app(
        f"sqlite:///{tmp_path / 'b.sqlite3'}", RATELIMIT_KEY_PREFIX=secrets.token_hex(4), **settings, **keys
    )

    def counted_alerts(app: Flask) -> int:
        with app.app_context():
            return sum(db.session.scalars(select(HourlyCount.count).where(HourlyCount.action == "alert")))

    assert [attempt(app, UNKNOWN, "0000", "10.3.0.9")[0] for app in (first, second)] == [200, 200]
    assert (counted_alerts(first), counted_alerts(second)) == (0, 0)
    assert attempt(second, UNKNOWN, "0000", "10.3.0.9")[0] == 200
    assert (counted_alerts(first), counted_alerts(second)) == (0, 1)


def test_a_unit_given_back_after_its_window_ended_lends_the_next_window_nothing_after_a_second(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A success whose lookup outlived its window gives its unit back to a counter already gone: the
    counter made again below zero lends a failure for a second at most, never for the new window."""
    app = throttled_app(database_url, VERIFY_LIMIT_CLIENT="1 per hour")
    clock = [time.time()]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    find_patient = verification.find_patient

    def outlives_the_window(*args: Any) -> Any:
        clock[0] += 3600
        return find_patient(*args)

    with monkeypatch.context() as patched:
        patched.setattr(verification, "find_patient", outlives_the_window)
        assert attempt(app, KNOWN, RIGHT_LAST4, "192.0.2.80")[0] == 303
    clock[0] += 1.5
    assert [attempt(app, UNKNOWN, "0000", "192.0.2.80")[0] for _ in range(2)] == [200, 429]


def test_a_failure_leaves_no_trace_of_the_person_in_the_people_budget(database_url: str) -> None:
    """The people budget marks each person a network verified; a failure's mark is removed with it,
    so the store never says who was tried (in memory as on Redis: test_attacks.py)."""
    app = throttled_app(database_url)
    with app.app_context():
        member = throttle.person_key(portal.identity.IdentityClaim.from_input(**KNOWN, ssn_last4=RIGHT_LAST4))

    def marks() -> list[str]:
        with app.app_context():
            return [key for key in throttle.limit_store().storage if key.endswith(f"/{member}")]

    assert attempt(app, KNOWN, "0000", "192.0.2.90")[0] == 200
    assert marks() == []
    assert attempt(app, KNOWN, RIGHT_LAST4, "192.0.2.90")[0] == 303
    assert len(marks()) == 1


def test_a_limit_store_lost_while_adding_gives_nothing_back(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether a store lost while adding took the units is not known: none is given back, even once
    it answers again, since giving back units never taken would lend the next attempts some."""
    app = throttled_app(database_url, VERIFY_LIMIT_CLIENT="1 per hour")
    with app.app_context():
        store = throttle.limit_store()
    incr = store.incr

    def adding_lost(key: str, expiry: int, amount: int = 1) -> int:
        if amount > 0:
            raise ConnectionError("limit store lost")
        return incr(key, expiry, amount=amount)

    with monkeypatch.context() as patched:
        patched.setattr(store, "incr", adding_lost)
        assert attempt(app, UNKNOWN, "0000", "192.0.2.100")[0] == 503
    assert [attempt(app, UNKNOWN, "0000", "192.0.2.100")[0] for _ in range(2)] == [200, 429]
