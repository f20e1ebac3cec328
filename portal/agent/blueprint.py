"""The console's blueprint and what every page of it shares: the audit helper, form answers, the
refusals, and the top bar's navigation. The pages live by who uses them: ``account.py`` (signing
in, passwords), ``calls.py`` (serving a caller), ``lost_letters.py``, ``supervisor.py`` (pool, audit
trail), ``staff_accounts.py`` and ``dashboard.py``; access rules in ``auth.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, render_template, request
from flask.typing import ResponseValue
from flask_login import current_user
from flask_wtf import FlaskForm

from portal import throttle
from portal.agent.auth import protect
from portal.errors import render_error
from portal.events import Event, record

bp = Blueprint("agent", __name__)
protect(bp)

CHANNEL = "agent"


def audit(action: str, outcome: str, record_ref: str | None = None) -> None:
    record(Event(action, outcome, CHANNEL, record_ref, request.remote_addr))


def form_page(template: str, form: FlaskForm, **context: Any) -> tuple[str, int]:
    """A form shown blank (200), or sent back with what was wrong with it (400)."""
    status = 400 if request.method == "POST" else 200
    return render_template(template, form=form, **context), status


@bp.errorhandler(throttle.Throttled)
def throttled(error: throttle.Throttled) -> ResponseValue:
    return render_error(429, retry_after=error.retry_after)


@bp.errorhandler(throttle.LimitStoreDown)
def limit_store_down(error: throttle.LimitStoreDown) -> ResponseValue:
    return render_error(503, retry_after=error.retry_after)


@dataclass(frozen=True)
class NavItem:
    label: str
    endpoint: str
    section: frozenset[str]  # the endpoints of the pages it leads to, to mark the current one
    supervisors_only: bool = False


NAVIGATION = (
    NavItem("Serve a caller", "agent.call", frozenset({"agent.call", "agent.caller"})),
    NavItem("Lost letter", "agent.lost_letter", frozenset({"agent.lost_letter"})),
    NavItem("Dashboard", "agent.dashboard", frozenset({"agent.dashboard"}), supervisors_only=True),
    NavItem("Audit trail", "agent.audit_page", frozenset({"agent.audit_page"}), supervisors_only=True),
    NavItem(
        "Staff",
        "agent.staff_page",
        frozenset({"agent.staff_page", "agent.staff_action", "agent.enrolment", "agent.approval"}),
        supervisors_only=True,
    ),
    NavItem("Pool", "agent.pool", frozenset({"agent.pool"}), supervisors_only=True),
)


@bp.context_processor
def navigation() -> dict[str, Any]:
    """The top bar's links for who is signed in; none while a first password is still owed."""
    if not current_user.is_authenticated or current_user.staff.must_change_password:
        return {"console_nav": []}
    supervisor = current_user.role == "supervisor"
    items = [item for item in NAVIGATION if supervisor or not item.supervisors_only]
    return {"console_nav": [(item, request.endpoint in item.section) for item in items]}
