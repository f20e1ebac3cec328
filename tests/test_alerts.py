"""Attack detection: a replayed guessing campaign raises each alert, a replayed quiet day raises none."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import random
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

import pytest
import sqlalchemy as sa
from conftest import REDIS_URL, import_patients, lookup, make_app, patient_row
from flask import Flask
from flask.testing import FlaskClient
from limits.storage import MemoryStorage, storage_from_string
from test_dashboard import signed_in
from test_public import add_codes, post_with_token

from portal import alerts, stats
from portal.config import DEFAULTS
from portal.extensions import db
from portal.models import HourlyCount, Patient, utcnow
from portal.network import client_key, client_network

DAY = datetime(2026, 11, 24, tzinfo=UTC)
USUAL_FAILURES_PER_HOUR = 300  # 5 a minute: the week before the replayed day


class Seen(NamedTuple):
    """One event as the detector sees it."""

    at: datetime
    action: str
    outcome: str
    channel: str
    client: str | None
    actor: str | None
    patient_ref: str | None = None


History = Iterator[Seen]


def person(at: datetime, channel: str, client: str, actor: str | None, ref: str, claims: int = 1) -> list[Seen]:
    """Someone verified, then claiming their code ``claims`` times (again: the same code read again)."""
    verified = Seen(at, "verification", "success", channel, client, actor, ref)
    return [verified] + [verified._replace(action="claim")] * claims


def quiet_day(seed: int = 1) -> History:
    """A busy but honest day: a few thousand people an hour, most claiming their code, typos, a
    locked-out person now and then, households, a partner and twenty agents at their usual pace
    (about 60 calls each from 9 to 5). A minute's events come in any order, as people do."""
    rng = random.Random(seed)
    refs = (f"ref-{n}" for n in itertools.count())

    def address() -> str:
        if rng.random() < 0.6:
            return f"{rng.randint(11, 199)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        return f"2001:db8:{rng.randint(0, 0xBAC):x}:{rng.randint(0, 0xFFFF):x}::1"

    for minute in range(24 * 60):
        at = DAY + timedelta(minutes=minute)
        busy = 3 if 9 * 60 <= minute < 21 * 60 else 1
        events: list[Seen] = []
        for _ in range(rng.randint(5, 25) * busy):
            events += person(at, "public", address(), None, next(refs), claims=int(rng.random() < 0.8))
        if rng.random() < 0.05:  # a household: four people at one address, each claiming twice
            home = address()
            for _ in range(4):
                events += person(at, "public", home, None, next(refs), claims=2)
        for _ in range(rng.randint(0, 4) * busy):
            events.append(Seen(at, "verification", "failure", "public", address(), None))
        if rng.random() < 0.02:
            events.append(Seen(at, "verification", "throttled:verify-person-public", "public", address(), None))
        for _ in range(rng.randint(0, 5)):
            events.append(Seen(at, "verification", "failure", "api", "203.0.113.10", "partner-1"))
        for _ in range(rng.randint(0, 5)):
            events += person(at, "api", "203.0.113.10", "partner-1", next(refs))
        if minute % 10 == 0:
            events.append(Seen(at, "verification", "failure", "agent", "10.0.0.5", f"agent-{rng.randint(1, 20)}"))
        if 9 * 60 <= minute < 17 * 60:
            for agent in range(1, 21):
                if rng.random() < 1 / 8:
                    events += person(at, "agent", "10.0.0.5", f"agent-{agent}", next(refs))
        rng.shuffle(events)
        yield from events


def attack(seed: int = 2) -> History:
    """The quiet day with, from 10:00 to 10:10, a campaign: guesses from one IPv6 /64 and a botnet
    (about 150 a minute), a stolen partner key, and an agent account trying people one after another."""
    rng = random.Random(seed)
    for n, event in enumerate(quiet_day()):
        yield event
        at = event.at
        if not DAY.replace(hour=10) <= at < DAY.replace(hour=10, minute=10):
            continue
        for _ in range(3):
            yield Seen(at, "verification", "failure", "public", f"2001:db8:bad:1:{rng.randint(1, 9999):x}::1", None)
        yield Seen(
            at, "verification", "throttled:verify-person-public", "public", f"192.0.2.{rng.randint(1, 250)}", None
        )
        yield Seen(at, "verification", "failure", "api", "203.0.113.99", "partner-2")
        yield Seen(at, "verification", "failure", "api", "203.0.113.99", "partner-2")
        if n % 50 == 0:
            yield Seen(at, "verification", "failure", "agent", "10.0.0.6", "agent-7")


def replay(app: Flask, history: History) -> list[alerts.Alert]:
    """Each event through a detector with the app's thresholds, its own counters, and the usual
    rate read from a week of hourly counts before the day."""
    with app.app_context():
        for hour in range(7 * 24):
            db.session.add(
                HourlyCount(hour=DAY - timedelta(hours=hour + 1), action="verification", outcome="failure",
                            channel="public", count=USUAL_FAILURES_PER_HOUR)
            )  # fmt: skip
        db.session.commit()
        detector = alerts.Detector(
            alerts.Thresholds.from_config(app.config),
            MemoryStorage(),
            alerts.CachedRate(lambda at: stats.usual_failures_per_minute(db.session, at)),
            alerts.CachedRate(lambda at: stats.usual_claims_per_minute(db.session, at)),
            functools.lru_cache(4096)(client_key),  # (the replay is long: addresses parsed once)
            functools.lru_cache(4096)(client_network),
        )
        raised = []
        for event in history:
            raised += observe(detector, event._replace(at=event.at + timedelta(seconds=30)))
        return raised


def observe(detector: alerts.Detector, event: Seen) -> list[alerts.Alert]:
    return detector.observe(*event[1:6], event.at, event.patient_ref)


def test_a_quiet_day_raises_no_alert(app: Flask) -> None:
    assert replay(app, quiet_day()) == []


def test_a_guessing_campaign_raises_each_alert_once_a_window(app: Flask) -> None:
    raised = replay(app, attack())
    kinds = Counter(alert.kind for alert in raised)
    # Ten one-minute windows of the campaign: each site-wide signal once in each of them.
    assert kinds["failure-rate"] == 10 and kinds["person-limits"] == 10
    # Two addresses: the guessers' /64, and the server using the stolen partner key.
    assert kinds["client-failures"] == 20
    assert {a.subject for a in raised if a.kind == "client-failures"} == {"2001:db8:bad:1::/64", "203.0.113.99"}
    assert {a.subject for a in raised if a.kind == "partner-failures"} == {"partner-2"}
    assert {a.subject for a in raised if a.kind == "agent-failures"} == {"agent-7"}
    assert all(DAY.replace(hour=10) <= a.window_start < DAY.replace(hour=10, minute=10) for a in raised)
    # The site-wide threshold is the floor (60 a minute), as 10 x the usual 5 a minute is less.
    assert {a.count for a in raised if a.kind == "failure-rate"} == {60}


def test_thresholds_are_settings(database_url: str) -> None:
    app = make_app(database_url, ALERT_CLIENT_FAILURES="5000 per minute", ALERT_FAILURE_FLOOR="5000 per minute")
    kinds = {alert.kind for alert in replay(app, attack())}
    assert "client-failures" not in kinds and "failure-rate" not in kinds and "person-limits" in kinds


def test_a_live_alert_is_logged_counted_and_raised_once(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Through the site: the third failure from one address raises one alert (a window of a year,
    so that the four requests never straddle two)."""
    app = make_app(database_url, ALERT_CLIENT_FAILURES="3 per year")
    assert import_patients(app, [patient_row()]) == []
    caplog.set_level(logging.INFO, logger="portal")
    client = app.test_client()
    before = event_metrics(client)
    for _ in range(4):
        lookup(client, last_name="Nobody", date_of_birth="1970-01-01", zip_code="10001", ssn_last4="0000")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "portal.alerts"]
    assert [(line["alert"], line["subject"], line["count"]) for line in lines] == [("client-failures", "127.0.0.1", 3)]
    with app.app_context():
        counted = db.session.scalar(sa.select(HourlyCount.count).where(HourlyCount.action == "alert"))
    assert counted == 1
    after = event_metrics(client)  # (the counters are the process's: what these requests added)
    assert {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)} == {
        'portal_verifications_total{channel="public",outcome="failure"}': 4,
        'portal_alerts_total{channel="public",kind="client-failures"}': 1,
    }


def event_metrics(client: FlaskClient) -> dict[str, float]:
    """The events' and alerts' counters as /metrics shows them."""
    text = client.get("/metrics").get_data(as_text=True)
    found = re.findall(r"^(portal_(?:verifications|claims|alerts)_total\{.*\}) (\S+)$", text, re.MULTILINE)
    return {name: float(value) for name, value in found}


# --- Successes: the thief who holds the stolen records ----------------------------------------

STORES = [pytest.param("memory", id="memory"), pytest.param("redis", id="redis", marks=pytest.mark.redis)]
MakeDetector = Callable[..., alerts.Detector]
Curve = Callable[[datetime], float]  # the usual count a minute at a moment


def no_history(_: datetime) -> float:
    return 0.0


@pytest.fixture(params=STORES)
def make_detector(request: pytest.FixtureRequest) -> MakeDetector:
    """Detectors with the default settings but ``settings``, counting in one shared store, as the
    processes of a deployment do: the same memory, or each its own connection to the test Redis."""
    memory = MemoryStorage()
    prefix = f"test-{secrets.token_hex(6)}"  # a test's own keys on the shared Redis

    def make(usual_failures: Curve = no_history, usual_claims: Curve = no_history, **settings: Any) -> alerts.Detector:
        return alerts.Detector(
            alerts.Thresholds.from_config({**DEFAULTS, **settings}),
            memory if request.param == "memory" else storage_from_string(REDIS_URL),
            usual_failures,
            usual_claims,
            client_key,
            client_network,
            prefix,
        )

    return make


def kinds_raised(detector: alerts.Detector, history: Iterable[Seen]) -> list[tuple[int, str]]:
    """(the event's number, the kind) of each alert the history raises."""
    return [(n, alert.kind) for n, event in enumerate(history) for alert in observe(detector, event)]


# kind: its setting, the n-th event that counts towards it at a moment, and what the alert names.
SIGNALS: dict[str, tuple[str, Callable[[int, datetime], Seen], str | None]] = {
    "client-people": (
        "ALERT_CLIENT_PEOPLE",
        lambda n, at: Seen(at, "verification", "success", "public", f"192.0.2.{n % 250 + 1}", None, f"ref-{n}"),
        "192.0.2.0/24",
    ),
    "client-claims": (
        "ALERT_CLIENT_CLAIMS",
        lambda n, at: Seen(at, "claim", "success", "public", f"192.0.2.{n % 250 + 1}", None, f"ref-{n}"),
        "192.0.2.0/24",
    ),
    "partner-claims": (
        "ALERT_PARTNER_CLAIMS",
        lambda n, at: Seen(at, "claim", "success", "api", "203.0.113.5", "api-key:7", f"ref-{n}"),
        "api-key:7",
    ),
    "agent-people": (
        "ALERT_AGENT_PEOPLE",
        lambda n, at: Seen(at, "verification", "success", "agent", "10.0.0.5", "staff:3", f"ref-{n}"),
        "staff:3",
    ),
    "claim-rate": (
        "ALERT_CLAIM_FLOOR",
        lambda n, at: Seen(at, "claim", "success", "public", f"10.{n % 250}.0.1", None, f"ref-{n}"),
        None,
    ),
    "success-share": (
        "ALERT_SUCCESS_SHARE_MINIMUM",
        lambda n, at: Seen(at, "verification", "success", "public", f"10.{n % 250}.0.1", None, f"ref-{n}"),
        None,
    ),
}


def test_every_success_signal_is_a_kind_with_plain_words() -> None:
    assert set(SIGNALS) == alerts.SUCCESS_KINDS and alerts.SUCCESS_KINDS < set(alerts.KINDS)


@pytest.mark.parametrize("kind", SIGNALS)
def test_each_success_signal_fires_at_its_threshold_once_a_window(make_detector: MakeDetector, kind: str) -> None:
    setting, event, subject = SIGNALS[kind]
    detector = make_detector(**{setting: "5 per minute"})
    minute = DAY.replace(hour=10)

    def raised(start: datetime, count: int) -> list[alerts.Alert]:
        events = (event(n, start + timedelta(seconds=n)) for n in range(count))
        return [alert for e in events for alert in observe(detector, e) if alert.kind == kind]

    first = [event(n, minute + timedelta(seconds=n)) for n in range(12)]
    assert [n for n, k in kinds_raised(detector, first) if k == kind] == [4]  # the fifth, and only it
    assert not detector.step_up_active(minute - timedelta(seconds=1))
    assert raised(minute + timedelta(minutes=1), 5) == [
        alerts.Alert(kind, first[0].channel, 5, 60, minute + timedelta(minutes=1), subject)
    ]
    assert detector.step_up_active(minute + timedelta(minutes=2))


@pytest.mark.parametrize("kind", ["client-people", "agent-people"])
def test_the_same_person_verified_again_is_counted_once(make_detector: MakeDetector, kind: str) -> None:
    setting, event, _ = SIGNALS[kind]
    detector = make_detector(**{setting: "5 per hour"})
    again = [event(0, DAY + timedelta(seconds=s)) for s in range(30)]  # one person, thirty lookups
    others = [event(n, DAY + timedelta(minutes=1, seconds=n)) for n in range(1, 6)]
    assert kinds_raised(detector, again) == []
    assert kinds_raised(detector, others) == [(3, kind)]  # four others make five people
    alone = make_detector(**{setting: "1 per hour"})  # at a threshold of one, a repeat is still no second alert
    assert kinds_raised(alone, [event(0, DAY + timedelta(days=1, seconds=s)) for s in range(3)]) == [(0, kind)]


@pytest.mark.parametrize(("kind", "usual"), [("claim-rate", "claims"), ("failure-rate", "failures")])
def test_a_site_wide_rate_is_measured_against_its_usual_curve(
    make_detector: MakeDetector, kind: str, usual: str
) -> None:
    """1.5 a minute usually at this hour, 15 in a window of ten minutes: ten times that, not the
    floor of five (nor the usual of another hour), raises the alert."""
    setting, event, _ = {**SIGNALS, **FAILURES}[kind]
    detector = make_detector(**{f"usual_{usual}": lambda at: 1.5 if at.hour == 0 else 0.0, setting: "5 per 10 minutes"})
    events = [event(n, DAY + timedelta(seconds=n)) for n in range(200)]
    assert [n for n, k in kinds_raised(detector, events) if k == kind] == [149]


# --- Failures: someone guessing ------------------------------------------------------------------

# kind: its setting, the n-th event that counts towards it at a moment, and what the alert names.
FAILURES: dict[str, tuple[str, Callable[[int, datetime], Seen], str | None]] = {
    "failure-rate": (
        "ALERT_FAILURE_FLOOR",
        lambda n, at: Seen(at, "verification", "failure", "public", f"10.{n % 250}.0.1", None),
        None,
    ),
    "person-limits": (  # refused by the person's limit on one surface, or by the one they share
        "ALERT_PERSON_LIMITS",
        lambda n, at: Seen(
            at, "verification", "throttled:verify-person" + ("-public" if n % 2 else ""), "public", f"10.{n}.0.1", None
        ),
        None,
    ),
    "client-failures": (
        "ALERT_CLIENT_FAILURES",
        lambda n, at: Seen(at, "verification", "failure", "public", f"2001:db8:bad:1:{n + 1:x}::1", None),
        "2001:db8:bad:1::/64",
    ),
    "partner-failures": (
        "ALERT_PARTNER_FAILURES",
        lambda n, at: Seen(at, "verification", "failure", "api", f"203.0.113.{n + 1}", "api-key:7"),
        "api-key:7",
    ),
    "agent-failures": (
        "ALERT_AGENT_FAILURES",
        lambda n, at: Seen(at, "verification", "failure", "agent", "10.0.0.5", "staff:3"),
        "staff:3",
    ),
}


@pytest.mark.parametrize("kind", FAILURES)
def test_each_failure_signal_fires_at_its_threshold_once_a_window_and_starts_no_step_up(
    make_detector: MakeDetector, kind: str
) -> None:
    """Only its own signal: a partner's failures are no agent's (whose threshold is five in ten
    minutes by default), and a guesser, who holds nothing, is no reason to ask for the letter."""
    setting, event, subject = FAILURES[kind]
    detector = make_detector(**{setting: "5 per minute"})
    minute = DAY.replace(hour=10)
    assert kinds_raised(detector, [event(n, minute + timedelta(seconds=n)) for n in range(12)]) == [(4, kind)]
    later = [event(n, minute + timedelta(minutes=1, seconds=n)) for n in range(5)]
    assert [alert for e in later for alert in observe(detector, e)] == [
        alerts.Alert(kind, later[0].channel, 5, 60, minute + timedelta(minutes=1), subject)
    ]
    assert not detector.step_up_active(minute + timedelta(minutes=1))


def test_only_failed_and_refused_verifications_count_as_guessing(make_detector: MakeDetector) -> None:
    """A refusal by another limit is a failure, but not a person's limit; a claim that hands out
    nothing and any other event are no guessing, and nothing but a success counts a person."""
    detector = make_detector(
        ALERT_FAILURE_FLOOR="3 per minute",
        ALERT_PERSON_LIMITS="1 per minute",
        ALERT_CLIENT_FAILURES="3 per minute",
        ALERT_CLIENT_PEOPLE="1 per minute",
    )
    at = DAY.replace(hour=10)
    others = [("verification", "viewed"), ("exposure", "failure"), ("claim", "failure")]
    others += [("claim", outcome) for outcome in ("repeat", "pool-empty", "busy", "letter-mismatch")]
    events = [Seen(at, *other, "public", "192.0.2.9", None, f"ref-{n}") for n, other in enumerate(others * 3)]
    assert kinds_raised(detector, events) == []
    refused = [Seen(at, "verification", "throttled:verify-client", "public", "192.0.2.9", None, "ref-0")] * 3
    assert kinds_raised(detector, refused) == [(2, "failure-rate"), (2, "client-failures")]


def test_each_success_counts_for_its_own_channels_subject_only(make_detector: MakeDetector) -> None:
    """The network signals count the public site: a partner's server and the call center verify and
    claim for many people each, and are counted per key and per agent (an agent's claims not at all)."""
    each = "1 per hour"
    detector = make_detector(
        ALERT_CLIENT_PEOPLE=each, ALERT_CLIENT_CLAIMS=each, ALERT_PARTNER_CLAIMS=each, ALERT_AGENT_PEOPLE=each
    )
    successes = [
        e
        for n, (channel, actor) in enumerate([("api", "api-key:7"), ("agent", "staff:3"), ("public", None)])
        for e in person(DAY, channel, f"192.0.2.{n + 1}", actor, f"ref-{n}")
    ]
    raised = [(n, alert.kind, alert.subject) for n, e in enumerate(successes) for alert in observe(detector, e)]
    assert raised == [
        (1, "partner-claims", "api-key:7"),
        (2, "agent-people", "staff:3"),
        (4, "client-people", "192.0.2.0/24"),
        (5, "client-claims", "192.0.2.0/24"),
    ]


def test_a_partners_and_an_agents_failures_count_for_their_own_key_only(make_detector: MakeDetector) -> None:
    """Per key on its own channel: an agent's failures are no partner's, and a failure without a
    key (or on the public site) is counted for no key."""
    detector = make_detector(ALERT_PARTNER_FAILURES="1 per minute", ALERT_AGENT_FAILURES="1 per minute")
    at = DAY.replace(hour=10)
    failures = [("agent", "staff:3"), ("api", "api-key:7"), ("public", "x"), ("api", None), ("agent", None)]
    raised = [
        (n, alert.kind, alert.subject)
        for n, (channel, actor) in enumerate(failures)
        for alert in observe(detector, Seen(at, "verification", "failure", channel, "192.0.2.9", actor))
    ]
    assert raised == [(0, "agent-failures", "staff:3"), (1, "partner-failures", "api-key:7")]


def test_the_usual_rate_is_read_once_an_hour_unless_its_time_ran_out() -> None:
    """A process reads the week's counts again only for another hour (a replayed day sees its own
    past) or once its time-to-live is over; in between, every event gets the rate it read."""
    reads: list[datetime] = []

    def read(at: datetime) -> float:
        reads.append(at)
        return at.hour + at.minute / 100

    rate, ten = alerts.CachedRate(read), DAY.replace(hour=10)
    moments = [ten + timedelta(minutes=m, seconds=s, microseconds=m * s) for m in (0, 1, 59) for s in (0, 1, 59)]
    assert [rate(at) for at in moments] == [10.0] * 9 and reads == [ten]
    assert rate(ten + timedelta(hours=1)) == 11.0 and rate(ten + timedelta(minutes=30)) == 10.3
    assert reads == [ten, ten + timedelta(hours=1), ten + timedelta(minutes=30)]
    expired = alerts.CachedRate(read, ttl=0)
    assert [expired(ten), expired(ten + timedelta(minutes=1))] == [10.0, 10.01]


def stolen_claims(start: datetime, typos: bool) -> History:
    """300 people verified and claiming their code within five minutes (one a second), two from
    each of 150 /24s; with ``typos``, one failed verification for every two people, as people mistype."""
    for n in range(300):
        at = start + timedelta(seconds=n)
        client = f"198.18.{n // 2}.{10 + n % 2}"
        if typos and n % 2 == 0:
            yield Seen(at, "verification", "failure", "public", client, None)
        yield from person(at, "public", client, None, f"stolen-{n}")


BOUNDARY = DAY.replace(hour=10)  # a boundary of every window the defaults use


# Seconds of the five minutes before a 10-minute window's boundary, and the person whose
# verification raises the alert (150 of the later window when the earlier gets fewer).
@pytest.mark.parametrize(("before", "alerting"), [(0, 149), (60, 209), (150, 149), (240, 149), (299, 149)])
def test_300_claims_without_a_single_failure_alert_however_the_windows_fall(
    make_detector: MakeDetector, before: int, alerting: int
) -> None:
    """The day the letters go out (no history, the defaults): the thief's 300 claims alert, and
    step-up starts; the same 300 people typing as people do raise nothing."""
    start = BOUNDARY - timedelta(seconds=before)
    detector = make_detector()
    raised = kinds_raised(detector, stolen_claims(start, typos=False))
    assert {kind for _, kind in raised} == {"success-share"} and len(raised) <= 2  # once a window
    assert raised[0][0] == 2 * alerting  # the event number: each person is a verification and a claim
    assert detector.step_up_active(start + timedelta(minutes=5))

    honest = make_detector(ALERT_STEP_UP_SECONDS=7200)  # (its own step-up keys)
    assert kinds_raised(honest, stolen_claims(start + timedelta(days=1), typos=True)) == []
    assert not honest.step_up_active(start + timedelta(days=1, minutes=5))


def test_a_household_and_an_agents_day_raise_nothing(make_detector: MakeDetector) -> None:
    rng = random.Random(3)
    household = []
    for n in range(4):  # four people at one address, each mistyping once, claiming twice, coming back
        at = DAY.replace(hour=19) + timedelta(minutes=n)
        household.append(Seen(at, "verification", "failure", "public", "192.0.2.7", None))
        household += person(at, "public", "192.0.2.7", None, f"home-{n}", claims=2)
        household += person(at + timedelta(minutes=30), "public", "192.0.2.7", None, f"home-{n}")
    calls = sorted(DAY.replace(hour=9) + timedelta(seconds=rng.randrange(8 * 3600)) for _ in range(60))
    agent_day = [e for n, at in enumerate(calls) for e in person(at, "agent", "10.0.0.5", "staff:3", f"caller-{n}")]
    detector = make_detector()
    assert kinds_raised(detector, household) == [] and kinds_raised(detector, agent_day) == []
    assert max(sum(at.hour == hour for at in calls) for hour in range(9, 17)) >= 10  # the busiest hour


def test_step_up_lasts_from_a_success_alert_for_its_time(make_detector: MakeDetector) -> None:
    detector = make_detector(ALERT_CLIENT_CLAIMS="3 per hour", ALERT_CLIENT_FAILURES="3 per hour")
    at = DAY.replace(hour=10, minute=50)  # late in a step-up window: it still lasts an hour
    failures = [Seen(at, "verification", "failure", "public", "192.0.2.9", None)] * 3
    assert kinds_raised(detector, failures) == [(2, "client-failures")]
    assert not detector.step_up_active(at)  # a failure-side alert is not the thief's
    _, event, _ = SIGNALS["client-claims"]
    assert kinds_raised(detector, [event(n, at) for n in range(3)]) == [(2, "client-claims")]
    assert detector.step_up_active(at)
    assert detector.step_up_active(at + timedelta(seconds=3599))
    assert not detector.step_up_active(at + timedelta(hours=2))
    assert not detector.step_up_active(at - timedelta(hours=1))


def test_processes_share_the_counts_the_alerts_and_the_step_up(make_detector: MakeDetector) -> None:
    """Two processes (two detectors on one store): each person once whichever process saw them,
    one alert for the two, and the step-up the other raised."""
    one, two = make_detector(ALERT_CLIENT_PEOPLE="6 per hour"), make_detector(ALERT_CLIENT_PEOPLE="6 per hour")
    _, event, _ = SIGNALS["client-people"]
    raised = []
    for n in range(12):
        at = DAY + timedelta(seconds=n)
        raised += observe(one if n % 2 else two, event(n, at)) + observe(two if n % 2 else one, event(n, at))
    assert [(a.kind, a.count) for a in raised] == [("client-people", 6)]
    assert one.step_up_active(DAY + timedelta(minutes=1)) and two.step_up_active(DAY + timedelta(minutes=1))


def test_processes_raise_the_success_share_once_and_then_ask_the_store_no_more(make_detector: MakeDetector) -> None:
    """The share's alert is flagged in the store for the whole window, so the other process does not
    raise it again; each process asks for that flag once, and its later successes only count."""
    one, two = (make_detector(ALERT_SUCCESS_SHARE_MINIMUM="6 per hour") for _ in range(2))
    raised = []
    for n in range(12):
        at = DAY + timedelta(minutes=n)
        raised += observe(one if n % 2 else two, Seen(at, "verification", "success", "public", f"10.{n}.0.1", None))
    assert [(a.kind, a.count) for a in raised] == [("success-share", 6)]
    flag = f"{one.key_prefix}:success-share:-:{int(DAY.timestamp()) // 3600}:raised"
    assert one.counters.get(flag) == 2  # once by the process that raised it, once by the other
    assert one.counters.get_expiry(flag) > time.time() + 3600  # beyond any moment of its window


def test_the_success_share_alerts_only_above_its_share(make_detector: MakeDetector) -> None:
    """19 successes and a failure are 95 %, the default share, and not above it: the 20th success is."""
    detector = make_detector(ALERT_SUCCESS_SHARE_MINIMUM="19 per hour")
    verifications = [Seen(DAY, "verification", "failure", "public", "10.0.0.1", None)]
    verifications += [Seen(DAY, "verification", "success", "public", f"10.{n}.0.1", None) for n in range(20)]
    assert kinds_raised(detector, verifications) == [(20, "success-share")]


def test_portals_sharing_one_store_under_other_prefixes_count_apart() -> None:
    store = MemoryStorage()
    thresholds = alerts.Thresholds.from_config({**DEFAULTS, "ALERT_CLIENT_FAILURES": "2 per minute"})
    one, other = (
        alerts.Detector(thresholds, store, no_history, no_history, client_key, client_network, prefix)
        for prefix in ("one", "other")
    )
    failure = Seen(DAY, "verification", "failure", "public", "192.0.2.9", None)
    assert kinds_raised(one, [failure]) == kinds_raised(other, [failure]) == []
    assert kinds_raised(one, [failure]) == [(0, "client-failures")]


def test_a_thief_through_the_site_is_logged_counted_and_shown(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the real /lookup and /claim: claims and people from one network each raise their
    alert once, the hourly counts and the dashboard show them, and step-up is on."""
    app = make_app(database_url, ALERT_CLIENT_PEOPLE="3 per year", ALERT_CLIENT_CLAIMS="2 per year")
    assert import_patients(app, [patient_row(record_id=f"R-{n}", zip=f"1000{n}") for n in range(3)]) == []
    add_codes(app, {f"STEP-UP-{n}": date.today() + timedelta(days=30) for n in range(3)})
    supervisor = signed_in(app, "supervisor")
    assert "Not required now" in supervisor.get("/agent/dashboard").get_data(as_text=True)
    caplog.set_level(logging.INFO, logger="portal")
    for visit, n in enumerate([0, 0, 1, 2]):
        browser = app.test_client()
        fields = {"last_name": "García-López", "date_of_birth": "1980-04-23", "ssn_last4": "6789"}
        assert lookup(browser, **fields, zip_code=f"1000{n}").status_code == 303
        # The first person's second claim hands out nothing and counts as a repeat; the second
        # person's raised client-claims, and the demo programme's on-alert step-up then asks the
        # last claim for the letter's reference (400 with the field), as it would the thief.
        assert post_with_token(browser, "/claim").status_code == (303 if visit < 3 else 400)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "portal.alerts"]
    assert [(line["alert"], line["subject"], line["count"]) for line in lines] == [
        ("client-claims", "127.0.0.0/24", 2),  # the first person (their second claim a repeat), the second
        ("client-people", "127.0.0.0/24", 3),  # the third person: the first coming back is not a fourth
    ]
    with app.app_context():
        counted = dict(
            db.session.execute(
                sa.select(HourlyCount.outcome, HourlyCount.count).where(HourlyCount.action == "alert")
            ).all()
        )
        public_ids = db.session.scalars(sa.select(Patient.public_id)).all()
        assert app.extensions["portal.detector"].step_up_active(utcnow())
    assert counted == {"client-people": 1, "client-claims": 1}
    assert not any(public_id in json.dumps(line) for line in lines for public_id in public_ids)
    page = supervisor.get("/agent/dashboard").get_data(as_text=True)
    assert "Many people verified from one network" in page and "Many codes claimed from one network" in page
    assert "Required now" in page


@pytest.mark.redis
def test_an_events_counts_take_one_round_trip_to_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """A public success adds to three counters (the success share, the person's marker, the
    network's people): one script carries them all, so each verification waits for Redis once."""
    import redis

    detector = alerts.Detector(
        alerts.Thresholds.from_config(DEFAULTS),
        storage_from_string(REDIS_URL),
        lambda _: 0.0,
        lambda _: 0.0,
        client_key,
        client_network,
        f"test-{secrets.token_hex(6)}",
    )
    at = datetime(2026, 12, 1, 12, tzinfo=UTC)
    detector.observe("verification", "success", "public", "192.0.2.1", None, at, "ref-0")  # loads the script
    commands: list[object] = []
    send = redis.Redis.execute_command

    def counted(self: redis.Redis, *args: Any, **options: Any) -> Any:
        commands.append(args[0])
        return send(self, *args, **options)

    monkeypatch.setattr(redis.Redis, "execute_command", counted)
    assert detector.observe("verification", "success", "public", "192.0.2.2", None, at, "ref-1") == []
    assert commands == ["EVALSHA"]
    # Still counted: the same person again is not a new person on the network, a new one is.
    key = f"{detector.key_prefix}:client-people:192.0.2.0/24:{int(at.timestamp()) // 3600}"
    detector.observe("verification", "success", "public", "192.0.2.3", None, at, "ref-1")
    detector.observe("verification", "success", "public", "192.0.2.4", None, at, "ref-2")
    assert detector.counters.get(key) == 3
