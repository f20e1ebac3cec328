"""The supervisor's dashboard on the console: charts of the programme's figures, the pool, alerts.

Everything shown comes from ``portal.stats`` (hourly counts without identifiers, and the pool)
and the audit trail (staff stopped by a failure limit, by username); the charts are SVG drawn on
the server (``portal.charts``), each with its figures as a table.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from flask import abort, current_app, render_template, request
from limits.errors import StorageError
from redis import RedisError

from portal import alerts, stats
from portal import audit as audit_trail
from portal.agent.auth import supervisor_required
from portal.agent.blueprint import bp
from portal.agent.supervisor import StaffNames, pool_concerns
from portal.charts import Chart, Series, bar_chart
from portal.extensions import db
from portal.models import utcnow

SURFACE_NAMES = {"public": "Web", "agent": "Call center", "api": "Partner API"}
MAX_DAYS = 92


def charts(summary: stats.Summary) -> list[Chart]:
    days = [f"{d.start:%Y-%m-%d}" for d in summary.days]
    hours = [f"{h.start:%H}:00" for h in summary.hours]
    day = f"{summary.last:%Y-%m-%d}"

    def verifications(periods: list[stats.Figures]) -> list[Series]:
        return [
            Series("Succeeded", [p.verified for p in periods]),
            Series("Failed", [p.failed for p in periods]),
            Series("Refused by a limit", [p.throttled for p in periods]),
        ]

    def claims(periods: list[stats.Figures]) -> list[Series]:
        return [
            Series("Exposures viewed", [p.exposures_viewed for p in periods]),
            Series("Codes claimed", [p.claimed for p in periods]),
            Series("Refused, pool empty", [p.pool_empty for p in periods]),
        ]

    def misuse(periods: list[stats.Figures]) -> list[Series]:
        return [
            Series("Reported used by someone else", [p.misuse_reported for p in periods]),
            Series("Revoked and reissued", [p.reissued for p in periods]),
        ]

    surfaces = list(summary.claims_by_surface)
    return [
        bar_chart("verifications-daily", "Verifications per day", days, verifications(summary.days), heading="Day"),
        bar_chart("claims-daily", "Exposures viewed and claims per day", days, claims(summary.days), heading="Day"),
        bar_chart("verifications-hourly", f"Verifications per hour on {day}", hours, verifications(summary.hours),
                  " (UTC)", heading="Hour (UTC)"),
        bar_chart("claims-hourly", f"Exposures viewed and claims per hour on {day}", hours, claims(summary.hours),
                  " (UTC)", heading="Hour (UTC)"),
        bar_chart("misuse-daily", "Codes reported used by someone else, and reissued, per day", days,
                  misuse(summary.days), heading="Day"),
        bar_chart("claims-surface", "Codes claimed by surface", [SURFACE_NAMES.get(s, s) for s in surfaces],
                  [Series("Codes claimed", [summary.claims_by_surface[s] for s in surfaces])], heading="Surface"),
    ]  # fmt: skip


FIRST_DAY = date(2000, 1, 1)


def step_up_now() -> bool | None:
    """Whether claims need the letter's reference now (a success-side alert); None when the shared
    store cannot say, which the page shows rather than failing."""
    detector: alerts.Detector = current_app.extensions["portal.detector"]
    try:
        return detector.step_up_active(utcnow())
    except (RedisError, StorageError, OSError):
        return None


def _day_argument(name: str, default: date) -> date:
    text = request.args.get(name)
    if text is None:
        return default
    try:
        day = date.fromisoformat(text)
    except ValueError:
        abort(400)
    if day < FIRST_DAY:  # and far enough from date.min for the days before it to be dates
        abort(400)
    return day


@bp.get("/dashboard")
@supervisor_required
def dashboard() -> str:
    """The last ``days`` days up to ``day`` (today by default), that day hour by hour."""
    today = datetime.now(UTC).date()
    day = min(_day_argument("day", today), today)
    days_text = request.args.get("days", "14")
    if not days_text.isdigit() or not 1 <= int(days_text) <= MAX_DAYS:
        abort(400)
    days = int(days_text)
    summary = stats.summarise(db.session, day, days)
    since = datetime.now(UTC) - timedelta(hours=24)
    with db.engine.connect() as connection:
        throttled = audit_trail.throttled_staff(connection, since)
    return render_template(
        "agent/dashboard.html",
        summary=summary,
        charts=charts(summary),
        concerns=pool_concerns(summary.pool),
        throttled=throttled,
        names=StaffNames.of(actor for actor, _ in throttled),
        recent_alerts=[a for a in summary.alerts if a.hour >= since.replace(minute=0, second=0, microsecond=0)],
        alert_kinds=alerts.KINDS,
        step_up=step_up_now(),
        surface_names=SURFACE_NAMES,
    )
