"""Attack detection: a replayed guessing campaign raises each alert, a replayed quiet day raises none."""

from __future__ import annotations

import itertools
import json
import logging
import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import pytest
import sqlalchemy as sa
from conftest import import_patients, lookup, make_app, patient_row
from flask import Flask
from limits.storage import MemoryStorage

from portal import alerts, stats
from portal.extensions import db
from portal.models import HourlyCount
from portal.throttle import client_key, client_network

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
        yield Seen(at, "verification", "throttled:verify-person-public", "public", f"192.0.2.{rng.randint(1, 250)}", None)
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
            client_key,
            client_network,
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
    for _ in range(4):
        lookup(client, last_name="Nobody", date_of_birth="1970-01-01", zip_code="10001", ssn_last4="0000")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "portal.alerts"]
    assert [(line["alert"], line["subject"], line["count"]) for line in lines] == [("client-failures", "127.0.0.1", 3)]
    with app.app_context():
        counted = db.session.scalar(sa.select(HourlyCount.count).where(HourlyCount.action == "alert"))
    assert counted == 1
