"""Programme figures: hourly event counts, and what they say per day, per hour and about the pool.

The counts are kept in ``hourly_counts`` (UPSERTs from ``portal.events.record``, in
a row per audit lane that readers add up) without any identifier, so they survive the retention
purge. Nothing here knows about HTTP:
the console's dashboard and ``portal stats`` read the same functions.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Connection, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from portal.claims import pool_status
from portal.models import ActivationCode, HourlyCount

SURFACES = ("public", "agent", "api")
RUN_OUT_WINDOW_DAYS = 7  # the "current rate" of claims: the average of this many past days


def _upsert(dialect_insert: Any) -> Any:
    statement = dialect_insert(HourlyCount.__table__)
    return statement.on_conflict_do_update(
        index_elements=["hour", "action", "outcome", "channel", "lane"],
        set_={"count": HourlyCount.__table__.c.count + statement.excluded.count},
    )


# Built once per dialect: one runs for every event.
_UPSERTS = {"postgresql": _upsert(postgresql.insert), "sqlite": _upsert(sqlite.insert)}


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def add_counts(connection: Connection, lane: int, events: Iterable[tuple[datetime, str, str, str]]) -> None:
    """Add ``events`` (moment, action, outcome, channel) to their hours' counts in one audit lane:
    atomic UPSERTs, one per distinct count, exact with any number of processes, on rows only that
    lane's holder writes (``portal.audit``), so they never wait."""
    counts = Counter(
        (hour_of(moment), action[:32], outcome[:48], channel[:16]) for moment, action, outcome, channel in events
    )
    rows = [
        {"hour": hour, "action": action, "outcome": outcome, "channel": channel, "lane": lane, "count": count}
        for (hour, action, outcome, channel), count in counts.items()
    ]
    connection.execute(_UPSERTS[connection.dialect.name], rows)


@dataclass
class Figures:
    """What happened in one period (a day or an hour)."""

    start: datetime
    verified: int = 0
    failed: int = 0
    throttled: int = 0
    exposures_viewed: int = 0
    claimed: int = 0
    pool_empty: int = 0
    misuse_reported: int = 0  # callers who said someone else used their code
    reissued: int = 0  # codes revoked and replaced after such a report

    def add(self, action: str, outcome: str, count: int) -> None:
        name = _FIGURE.get((action, outcome.split(":", 1)[0]))
        if name:
            setattr(self, name, getattr(self, name) + count)


# (action, outcome without its detail) -> Figures field; other events are not charted.
_FIGURE = {
    ("verification", "success"): "verified",
    ("verification", "failure"): "failed",
    ("verification", "throttled"): "throttled",
    ("exposure", "viewed"): "exposures_viewed",
    ("claim", "success"): "claimed",
    ("claim", "pool-empty"): "pool_empty",
    ("code-misuse", "reported"): "misuse_reported",
    ("code-reissue", "success"): "reissued",
}


@dataclass(frozen=True)
class PoolOutlook:
    available: int
    claimed: int
    claims_per_day: float  # codes handed out per day over the last RUN_OUT_WINDOW_DAYS
    run_out: date | None  # the day the pool is empty at that rate; None when nothing is being claimed

    def concerns(self, enrol_by: date, threshold: int) -> list[str]:
        """Why supervisors should order codes, if they should: ``runs-out`` when the recent pace
        empties the pool before the enrol-by date (people could still enrol then, without a code),
        ``below-threshold`` when fewer than ``threshold`` codes are left; both may hold, or neither."""
        reasons = []
        if self.run_out is not None and self.run_out <= enrol_by:
            reasons.append("runs-out")
        if self.available < threshold:
            reasons.append("below-threshold")
        return reasons


@dataclass(frozen=True)
class Alerts:
    hour: datetime
    kind: str
    channel: str
    count: int


@dataclass
class Summary:
    """Everything the dashboard and ``portal stats`` show, for the days ``first`` to ``last``."""

    first: date
    last: date
    days: list[Figures]
    hours: list[Figures]  # the 24 hours of ``last``
    claims_by_surface: dict[str, int]
    pool: PoolOutlook
    alerts: list[Alerts] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, date):  # datetime is a date too
                return value.isoformat()
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list):
                return [plain(v) for v in value]
            return value

        return plain(asdict(self))


def _rows(session: Session, first: date, last: date) -> list[HourlyCount]:
    start = datetime.combine(first, time(), UTC)
    end = datetime.combine(last + timedelta(days=1), time(), UTC)
    return list(session.scalars(select(HourlyCount).where(HourlyCount.hour >= start, HourlyCount.hour < end)))


def summarise(session: Session, last: date, days: int = 14) -> Summary:
    """Figures for the ``days`` days ending with ``last`` (UTC), hour by hour for ``last`` itself."""
    first = last - timedelta(days=days - 1)
    per_day = {first + timedelta(days=n): Figures(datetime.combine(first + timedelta(days=n), time(), UTC))
               for n in range(days)}  # fmt: skip
    last_start = datetime.combine(last, time(), UTC)
    per_hour = [Figures(last_start + timedelta(hours=n)) for n in range(24)]
    by_surface: dict[str, int] = dict.fromkeys(SURFACES, 0)
    alerts: dict[tuple[datetime, str, str], int] = defaultdict(int)
    for row in _rows(session, first, last):
        per_day[row.hour.date()].add(row.action, row.outcome, row.count)
        if row.hour.date() == last:
            per_hour[row.hour.hour].add(row.action, row.outcome, row.count)
        if (row.action, row.outcome) == ("claim", "success"):
            by_surface[row.channel] = by_surface.get(row.channel, 0) + row.count
        elif row.action == "alert":
            alerts[(row.hour, row.outcome, row.channel)] += row.count
    return Summary(
        first=first,
        last=last,
        days=list(per_day.values()),
        hours=per_hour,
        claims_by_surface=by_surface,
        pool=pool_outlook(session, last),
        alerts=[Alerts(hour, kind, channel, n) for (hour, kind, channel), n in sorted(alerts.items(), reverse=True)],
    )


def pool_outlook(session: Session, today: date) -> PoolOutlook:
    """Codes left, and the day they run out if claims go on at the last week's pace.

    The pace is read from the pool itself (codes handed out), not from claim events, which
    also count a person asking again for the code they already hold.
    """
    status = pool_status(session, today)
    since = datetime.combine(today - timedelta(days=RUN_OUT_WINDOW_DAYS - 1), time(), UTC)
    until = datetime.combine(today + timedelta(days=1), time(), UTC)
    recent = session.scalar(
        select(func.count(ActivationCode.id)).where(
            ActivationCode.claimed_at >= since, ActivationCode.claimed_at < until
        )
    )
    per_day = (recent or 0) / RUN_OUT_WINDOW_DAYS
    run_out = today + timedelta(days=math.ceil(status.available / per_day)) if per_day else None
    return PoolOutlook(status.available, status.claimed, round(per_day, 1), run_out)


def usual_per_minute(
    connection: Session | Connection, now: datetime, action: str, outcomes: tuple[str, ...], days: int = 7
) -> float:
    """Events of ``action`` with one of ``outcomes`` (an outcome also covers its details, as
    ``throttled`` covers ``throttled:verify-person-public``) per minute on average, over the
    ``days`` before this hour: the usual rate an alert compares the current one with."""
    end = hour_of(now)
    matches = [(HourlyCount.outcome == outcome) | HourlyCount.outcome.startswith(f"{outcome}:") for outcome in outcomes]
    total = connection.scalar(
        select(func.coalesce(func.sum(HourlyCount.count), 0)).where(
            HourlyCount.action == action,
            or_(*matches),
            HourlyCount.hour >= end - timedelta(days=days),
            HourlyCount.hour < end,
        )
    )
    return float(total or 0) / (days * 24 * 60)


def usual_failures_per_minute(connection: Session | Connection, now: datetime, days: int = 7) -> float:
    """Failed and refused verifications per minute on average, over the ``days`` before this hour."""
    return usual_per_minute(connection, now, "verification", ("failure", "throttled"), days)


def usual_claims_per_minute(connection: Session | Connection, now: datetime, days: int = 7) -> float:
    """Codes claimed per minute on average, over the ``days`` before this hour."""
    return usual_per_minute(connection, now, "claim", ("success",), days)
