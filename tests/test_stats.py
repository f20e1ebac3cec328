"""Hourly counts and the programme figures read from them: exact under concurrency, right against a known history."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa
from conftest import import_patients, patient_row
from flask import Flask

from portal import stats
from portal.events import Event, record
from portal.extensions import db
from portal.importer import import_codes
from portal.models import ActivationCode, HourlyCount, Patient
from portal.services import services

TODAY = datetime.now(UTC).date()


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), UTC)


def test_concurrent_events_are_each_counted_once(app: Flask) -> None:
    """Eight threads, each with its own connection, raising the same event: one row per audit lane
    they were appended in (one only on SQLite), adding up to the exact total."""
    moment = at(TODAY, 9, 30)
    start = threading.Barrier(8)

    def raise_events() -> None:
        with app.app_context():
            start.wait()
            for _ in range(25):
                record(Event("verification", "failure", "public", at=moment))

    threads = [threading.Thread(target=raise_events) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with app.app_context():
        rows = db.session.scalars(sa.select(HourlyCount).where(HourlyCount.action == "verification")).all()
    assert {(r.hour, r.action, r.outcome, r.channel) for r in rows} == {
        (at(TODAY, 9), "verification", "failure", "public")
    }
    assert sum(r.count for r in rows) == 200 and len({r.lane for r in rows}) == len(rows)


def known_history(app: Flask) -> None:
    """Yesterday and today, on every surface; 30 codes of which 7 were handed out over the last week."""
    yesterday = TODAY - timedelta(days=1)
    events = [
        *[Event("verification", "success", "public", at=at(yesterday, 10))] * 5,
        *[Event("verification", "failure", "public", at=at(yesterday, 10, 5))] * 3,
        *[Event("verification", "throttled:verify-person-public", "public", at=at(yesterday, 11))] * 2,
        *[Event("claim", "success", "public", at=at(yesterday, 12))] * 4,
        *[Event("verification", "success", "agent", at=at(TODAY, 0, 30))] * 2,
        *[Event("claim", "success", "agent", at=at(TODAY, 0, 40))] * 2,
        *[Event("claim", "success", "api", at=at(TODAY, 1))] * 1,
        Event("claim", "pool-empty", "api", at=at(TODAY, 1)),
        *[Event("exposure", "viewed", "public", at=at(TODAY, 1, 10))] * 3,
        Event("sign-out", "success", "public", at=at(TODAY, 1)),
        # Callers who said someone else used their code: reissued, or the pool was empty (agent).
        Event("code-misuse", "reported", "agent", at=at(yesterday, 15)),
        Event("code-reissue", "success", "agent", at=at(yesterday, 15)),
        *[Event("code-misuse", "reported", "agent", at=at(TODAY, 2))] * 2,
        Event("code-reissue", "success", "agent", at=at(TODAY, 2)),
        Event("code-reissue", "pool-empty", "agent", at=at(TODAY, 2)),
        Event("alert", "failure-rate", "public", at=at(TODAY, 0)),
        Event("verification", "success", "public", at=at(TODAY - timedelta(days=20), 10)),  # outside the window
    ]
    with app.app_context():
        for event in events:
            record(event)
    assert import_patients(app, [patient_row(record_id=f"R-{n}", zip=f"1000{n}") for n in range(7)]) == []
    with app.app_context():
        codes = [{"code": f"STAT-{n:04d}", "enroll_by": (TODAY + timedelta(days=400)).isoformat()} for n in range(30)]
        import_codes(db.session, services().cipher, enumerate(codes, start=2), on_reject=lambda *_: None)
        patients = db.session.scalars(sa.select(Patient.id)).all()
        codes_held = db.session.scalars(sa.select(ActivationCode).limit(len(patients))).all()
        for n, (patient_id, code) in enumerate(zip(patients, codes_held, strict=True)):
            code.patient_id, code.claimed_at = patient_id, at(TODAY - timedelta(days=n), 8)
        db.session.commit()


def test_figures_per_day_per_hour_by_surface_and_the_run_out_day(app: Flask) -> None:
    known_history(app)
    with app.app_context():
        summary = stats.summarise(db.session, TODAY, days=2)
    yesterday, today = summary.days
    assert (yesterday.verified, yesterday.failed, yesterday.throttled, yesterday.claimed) == (5, 3, 2, 4)
    assert (today.verified, today.claimed, today.pool_empty, today.exposures_viewed) == (2, 3, 1, 3)
    assert [h.claimed for h in summary.hours[:3]] == [2, 1, 0] and len(summary.hours) == 24
    assert [(d.misuse_reported, d.reissued) for d in summary.days] == [(1, 1), (2, 1)]
    assert [(h.misuse_reported, h.reissued) for h in summary.hours[1:4]] == [(0, 0), (2, 1), (0, 0)]
    assert summary.claims_by_surface == {"public": 4, "agent": 2, "api": 1}
    # 7 codes handed out in the last 7 days: one a day, 23 left -> empty in 23 days.
    assert (summary.pool.available, summary.pool.claimed, summary.pool.claims_per_day) == (23, 7, 1.0)
    assert summary.pool.run_out == TODAY + timedelta(days=23)
    assert [(a.kind, a.channel, a.count) for a in summary.alerts] == [("failure-rate", "public", 1)]


def test_no_claims_this_week_means_no_run_out_day(app: Flask) -> None:
    with app.app_context():
        assert stats.summarise(db.session, TODAY).pool.run_out is None


def test_portal_stats_prints_the_same_figures(app: Flask) -> None:
    known_history(app)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["stats", "--days", "2", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["claims_by_surface"] == {"public": 4, "agent": 2, "api": 1}
    assert figures["pool"]["run_out"] == (TODAY + timedelta(days=23)).isoformat()
    assert [d["verified"] for d in figures["days"]] == [5, 2]
    assert [(d["misuse_reported"], d["reissued"]) for d in figures["days"]] == [(1, 1), (2, 1)]

    text = runner.invoke(args=["stats", "--days", "2"])
    assert text.exit_code == 0, text.output
    assert f"pool runs out: {(TODAY + timedelta(days=23)).isoformat()}" in text.output
    assert "claims by surface: public 4, agent 2, api 1" in text.output


def test_usual_rates_count_their_own_events_over_the_last_week(app: Flask) -> None:
    """Claims and failures each from their own rows, the week before this hour only."""
    now = at(TODAY, 10, 30)
    rows = [
        ("claim", "success", 2, 1680),  # one every six minutes through the week
        ("claim", "pool-empty", 2, 5000),
        ("claim", "success", 0, 999),  # this hour: not yet usual
        ("claim", "success", 24 * 7 + 1, 999),  # more than a week ago
        ("verification", "failure", 3, 10080),  # 1 a minute
        ("verification", "throttled:verify-person-public", 3, 10080),
        ("verification", "success", 3, 7777),
    ]
    with app.app_context():
        for action, outcome, hours_ago, count in rows:
            hour = stats.hour_of(now) - timedelta(hours=hours_ago)
            db.session.add(HourlyCount(hour=hour, action=action, outcome=outcome, channel="public", count=count))
        db.session.commit()
        assert stats.usual_claims_per_minute(db.session, now) == 1680 / (7 * 24 * 60)
        assert stats.usual_failures_per_minute(db.session, now) == 2 * 10080 / (7 * 24 * 60)
