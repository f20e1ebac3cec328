"""Who may use the console: default-deny, two roles, revocable sessions with two timeouts.

Every console request passes ``guard_console`` before its view: it answers 404 outside the
allowed networks, sends anyone not signed in to the login page (the only open endpoint), ends
sessions that were idle or open too long or were revoked, and holds a first login at the
password change. Views then state their role with ``agent_required`` or ``supervisor_required``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from ipaddress import ip_address, ip_network
from typing import Any, TypeVar, cast

from flask import Blueprint, Flask, abort, current_app, redirect, request, session, url_for
from flask_login import current_user, login_user, logout_user

from portal.events import act_as
from portal.extensions import db, login_manager
from portal.models import Staff
from portal.staff import ROLES

View = TypeVar("View", bound=Callable[..., Any])

# Endpoints reachable without a session. Everything else on the blueprint needs one.
OPEN_ENDPOINTS = frozenset({"agent.login", "agent.static"})
# Reachable while a new password is still owed.
PASSWORD_CHANGE_ENDPOINTS = frozenset({"agent.change_password", "agent.logout"})
LOGIN_AT = "staff_login_at"
SEEN_AT = "staff_seen_at"


class StaffUser:
    """Flask-Login's view of a staff row. The id carries the session version, so bumping the
    version in the database makes every older session cookie load no one."""

    is_active = True
    is_anonymous = False
    is_authenticated = True

    def __init__(self, staff: Staff) -> None:
        self.staff = staff

    def get_id(self) -> str:
        return f"{self.staff.id}:{self.staff.session_version}"

    @property
    def role(self) -> str:
        return self.staff.role


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    login_manager.login_view = "agent.login"
    login_manager.session_protection = None  # our own timeouts and versions; no IP pinning for call centres
    login_manager.user_loader(load_staff)
    app.config["REMEMBER_COOKIE_DURATION"] = 0


def load_staff(user_id: str) -> StaffUser | None:
    staff_id, _, version = user_id.partition(":")
    if not (staff_id.isdigit() and version.isdigit()):
        return None
    staff = db.session.get(Staff, int(staff_id))
    if staff is None or staff.disabled or staff.session_version != int(version):
        return None
    return StaffUser(staff)


def start_session(staff: Staff) -> None:
    """A fresh session: nothing from before the login survives (no fixation)."""
    session.clear()
    session.permanent = True
    login_user(StaffUser(staff), remember=False, fresh=True)
    now = int(time.time())
    session[LOGIN_AT] = session[SEEN_AT] = now


def end_session() -> None:
    logout_user()
    session.clear()


def allowed_network(address: str | None) -> bool:
    networks = current_app.config["AGENT_NETWORKS"]
    if not networks:
        return True
    try:
        client = ip_address(address or "")
    except ValueError:
        return False
    return any(client in ip_network(network, strict=False) for network in networks)


def _expired() -> bool:
    now = int(time.time())
    config = current_app.config
    idle = now - int(session.get(SEEN_AT, 0)) > config["STAFF_IDLE_TIMEOUT_SECONDS"]
    too_long = now - int(session.get(LOGIN_AT, 0)) > config["STAFF_SESSION_MAX_SECONDS"]
    return idle or too_long


def guard_console() -> Any:
    """The blueprint's before_request: default deny."""
    if not allowed_network(request.remote_addr):
        abort(404)
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    if not current_user.is_authenticated:
        return redirect(url_for("agent.login"), 303)
    if _expired():
        end_session()
        return redirect(url_for("agent.login"), 303)
    act_as(f"staff:{current_user.staff.id}")
    session[SEEN_AT] = int(time.time())
    if current_user.staff.must_change_password and request.endpoint not in PASSWORD_CHANGE_ENDPOINTS:
        return redirect(url_for("agent.change_password"), 303)
    return None


def _role_required(roles: tuple[str, ...]) -> Callable[[View], View]:
    def decorator(view: View) -> View:
        @wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated or current_user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        return cast(View, checked)

    return decorator


agent_required = _role_required(ROLES)
supervisor_required = _role_required(("supervisor",))


def protect(bp: Blueprint) -> None:
    bp.before_request(guard_console)
