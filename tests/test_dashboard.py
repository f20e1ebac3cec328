"""The supervisor dashboard: its charts, tables, pool banner and alerts against a known history,
for supervisors only, under the public pages' header rules."""

from __future__ import annotations

import html
import re
import urllib.parse
from datetime import UTC, date, datetime, timedelta

import pyotp
import pytest
import sqlalchemy as sa
from conftest import csrf_token
from flask import Flask
from flask.testing import FlaskClient
from test_public import _check_headers
from test_stats import TODAY, known_history

from portal import stats
from portal.agent.dashboard import charts
from portal.charts import Series, bar_chart, nice_ceiling
from portal.extensions import db
from portal.models import Staff
from portal.services import services
from portal.staff import create_staff


def signed_in(app: Flask, role: str) -> FlaskClient:
    """A staff member of ``role`` through the real login form (password and TOTP code)."""
    with app.app_context():
        enrolment = create_staff(db.session, services().totp, f"{role}1", role)
        db.session.execute(sa.update(Staff).where(Staff.username == f"{role}1").values(must_change_password=False))
        db.session.commit()
    secret = urllib.parse.parse_qs(urllib.parse.urlparse(enrolment.otpauth_uri).query)["secret"][0]
    client = app.test_client()
    form = {"username": f"{role}1", "password": enrolment.password, "code": pyotp.TOTP(secret).now()}
    response = client.post("/agent/login", data={**form, "csrf_token": csrf_token(client, "/agent/login")})
    assert response.status_code == 303, response.get_data(as_text=True)
    return client


def table_of(page: str, chart_id: str) -> list[list[str]]:
    """The rows of the table that follows a chart's SVG."""
    figure = re.search(rf'<figure class="chart" aria-labelledby="{chart_id}-caption">(.*?)</figure>', page, re.S)
    assert figure, chart_id
    body = re.search(r"<tbody>(.*?)</tbody>", figure.group(1), re.S)
    assert body
    return [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", body.group(1))]


def test_only_supervisors_see_the_dashboard(app: Flask) -> None:
    assert app.test_client().get("/agent/dashboard").status_code == 303  # to the login page
    assert signed_in(app, "agent").get("/agent/dashboard").status_code == 403
    assert signed_in(app, "supervisor").get("/agent/dashboard").status_code == 200


def test_the_dashboard_shows_a_known_history(app: Flask) -> None:
    known_history(app)
    app.config["POOL_LOW_THRESHOLD"] = 100
    client = signed_in(app, "supervisor")
    response = client.get("/agent/dashboard?days=2")
    _check_headers("/agent/dashboard", response)
    assert "no-store" in response.headers["Cache-Control"]
    page = html.unescape(response.get_data(as_text=True))

    yesterday = (TODAY - timedelta(days=1)).isoformat()
    assert table_of(page, "verifications-daily") == [[yesterday, "5", "3", "2"], [TODAY.isoformat(), "2", "0", "0"]]
    assert table_of(page, "claims-daily") == [[yesterday, "0", "4", "0"], [TODAY.isoformat(), "3", "3", "1"]]
    assert table_of(page, "claims-hourly")[:2] == [["00:00", "0", "2", "0"], ["01:00", "3", "1", "1"]]
    assert table_of(page, "claims-surface") == [["Web", "4"], ["Call center", "2"], ["Partner API", "1"]]
    assert table_of(page, "misuse-daily") == [[yesterday, "1", "1"], [TODAY.isoformat(), "2", "1"]]
    assert "Codes reported used by someone else (this period)</dt><dd>3</dd>" in page
    assert "Codes revoked and reissued (this period)</dt><dd>2</dd>" in page
    # Each chart is an image with a title and a description that a screen reader reads out.
    assert (
        len(re.findall(r'<svg class="chart-svg"[^>]*role="img"\s+aria-labelledby="[a-z-]+-title [a-z-]+-desc"', page))
        == 6
    )
    assert (
        f"Bar chart of verifications per day from {yesterday} to {TODAY.isoformat()}. "
        "In total: 7 succeeded, 3 failed, 2 refused by a limit. Busiest: " + yesterday
    ) in page
    assert "<title>Codes claimed, Web: 4</title>" in page
    # The pool: 23 left at one a day, under the threshold of 100 (test_console.py: before the enrol-by date or not).
    assert "Only 23 codes are left, fewer than the 100" in page and (TODAY + timedelta(days=23)).isoformat() in page
    assert "Failed verifications far above their usual rate" in page  # the alert of the history

    app.config["POOL_LOW_THRESHOLD"] = 5
    assert 'id="pool-below-threshold"' not in client.get("/agent/dashboard?days=2").get_data(as_text=True)


@pytest.mark.parametrize(
    "query", ["days=0", "days=1000", "days=x", "day=2026-13-01", "day=yesterday", "day=0001-01-01&days=14"]
)
def test_a_bad_period_is_a_400(app: Flask, query: str) -> None:
    assert signed_in(app, "supervisor").get(f"/agent/dashboard?{query}").status_code == 400


def test_the_dashboard_reaches_back_to_2000_01_01_and_92_days_and_no_further(app: Flask) -> None:
    client = signed_in(app, "supervisor")
    for query, status in (
        ("day=2000-01-01&days=1", 200),
        ("day=1999-12-31&days=1", 400),
        ("days=92", 200),
        ("days=93", 400),
    ):
        assert client.get(f"/agent/dashboard?{query}").status_code == status, query


def test_bar_geometry_follows_the_figures() -> None:
    assert [nice_ceiling(v) for v in (0, 1, 3, 10, 11, 240, 5001)] == [1, 1, 5, 10, 20, 500, 10000]
    chart = bar_chart("c", "Things per day", ["Mon", "Tue"], [Series("Good", [10, 5]), Series("Bad", [0, 2])])
    heights = {bar.label: bar.height for bar in chart.bars}
    plot = chart.height - 12 - 40
    assert heights == {"Good, Mon: 10": plot, "Good, Tue: 5": plot / 2, "Bad, Mon: 0": 0, "Bad, Tue: 2": plot / 5}
    assert all(bar.y + bar.height == pytest.approx(12 + plot) for bar in chart.bars)  # all stand on the axis
    assert [t.label for t in chart.ticks] == ["0", "2", "4", "6", "8", "10"]
    assert [t.label for t in bar_chart("d", "T", ["x"], [Series("S", [150])]).ticks] == ["0", "50", "100", "150", "200"]
    assert [t.label for t in bar_chart("e", "T", ["x"], [Series("S", [2])]).ticks] == ["0", "1", "2"]
    assert chart.rows == [["Mon", "10", "0"], ["Tue", "5", "2"]]
    assert chart.description == "Bar chart of things per day from Mon to Tue. In total: 15 good, 2 bad. Busiest: Mon."


def test_each_chart_is_titled_headed_and_filled_from_its_own_figures() -> None:
    """The dashboard's six charts, in order, each with its title, its table's header and each
    period's row read from the right figure: a series drawn from another figure, or mislabelled, fails."""
    last = datetime(2026, 11, 30, tzinfo=UTC)

    def figures(start: datetime, base: int) -> stats.Figures:  # verified = base + 1 … reissued = base + 8
        return stats.Figures(start, *(base + n for n in range(1, 9)))

    summary = stats.Summary(
        first=date(2026, 11, 29),
        last=last.date(),
        days=[figures(last - timedelta(days=1), 0), figures(last, 10)],
        hours=[figures(last + timedelta(hours=hour), 100 + 10 * hour) for hour in range(24)],
        claims_by_surface={"public": 7, "agent": 3, "api": 2, "kiosk": 1},
        pool=None,  # type: ignore[arg-type]  # not charted
    )
    drawn = {chart.id: chart for chart in charts(summary)}
    assert list(drawn) == [
        "verifications-daily", "claims-daily", "verifications-hourly", "claims-hourly", "misuse-daily", "claims-surface"
    ]  # fmt: skip
    table = {name: (chart.title, chart.columns, chart.rows) for name, chart in drawn.items()}
    verifications = ["Succeeded", "Failed", "Refused by a limit"]
    claims = ["Exposures viewed", "Codes claimed", "Refused, pool empty"]
    assert table["verifications-daily"] == (
        "Verifications per day",
        ["Day", *verifications],
        [["2026-11-29", "1", "2", "3"], ["2026-11-30", "11", "12", "13"]],
    )
    assert table["claims-daily"] == (
        "Exposures viewed and claims per day", ["Day", *claims],
        [["2026-11-29", "4", "5", "6"], ["2026-11-30", "14", "15", "16"]],
    )  # fmt: skip
    assert table["misuse-daily"] == (
        "Codes reported used by someone else, and reissued, per day",
        ["Day", "Reported used by someone else", "Revoked and reissued"],
        [["2026-11-29", "7", "8"], ["2026-11-30", "17", "18"]],
    )
    hourly = {"verifications-hourly": ("Verifications per hour on 2026-11-30", verifications, 1),
              "claims-hourly": ("Exposures viewed and claims per hour on 2026-11-30", claims, 4)}  # fmt: skip
    for name, (title, series, first_figure) in hourly.items():
        expected = [[f"{h:02}:00", *(str(100 + 10 * h + first_figure + n) for n in range(3))] for h in range(24)]
        assert table[name] == (title, ["Hour (UTC)", *series], expected)
        assert drawn[name].description.startswith(
            f"Bar chart of {title[0].lower()}{title[1:]} from 00:00 to 23:00 (UTC)."
        )
    assert "(UTC)" not in drawn["verifications-daily"].description
    assert table["claims-surface"] == (
        "Codes claimed by surface",
        ["Surface", "Codes claimed"],
        [["Web", "7"], ["Call center", "3"], ["Partner API", "2"], ["kiosk", "1"]],
    )
