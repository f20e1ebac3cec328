"""The console's pages. Thin: forms in, domain calls, templates out; access rules live in auth.py."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseValue
from flask_login import current_user

from portal import services
from portal import throttle_interim as throttle
from portal.agent.auth import agent_required, end_session, protect, start_session, supervisor_required
from portal.agent.forms import LoginForm, PasswordChangeForm
from portal.errors import render_error
from portal.events import Event, act_as, record
from portal.extensions import db
from portal.staff import authenticate, end_sessions, set_password

bp = Blueprint("agent", __name__)
protect(bp)

CHANNEL = "agent"
LOGIN_FAILED = "The username, password or code is not right, or the account is disabled."


def audit(action: str, outcome: str, record_ref: str | None = None) -> None:
    record(Event(action, outcome, CHANNEL, record_ref, request.remote_addr))


@bp.errorhandler(throttle.Throttled)
def throttled(error: throttle.Throttled) -> ResponseValue:
    return render_error(429, "Too many attempts. Please wait before trying again.", retry_after=error.retry_after)


@bp.errorhandler(throttle.LimitStoreDown)
def limit_store_down(error: throttle.LimitStoreDown) -> ResponseValue:
    return render_error(503, retry_after=error.retry_after)


def login_budgets(username: str) -> list[throttle.Budget]:
    return [
        throttle.Budget("staff-login-account", "STAFF_LOGIN_LIMIT_ACCOUNT", "staff:" + username.strip().lower()[:64]),
        throttle.Budget("staff-login-client", "STAFF_LOGIN_LIMIT_CLIENT", throttle.client_key(request.remote_addr)),
    ]


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseValue:
    form = LoginForm()
    if not form.validate_on_submit():
        status = 400 if request.method == "POST" else 200
        return render_template("agent/login.html", form=form, failed=request.method == "POST"), status
    with throttle.attempt(login_budgets(form.username.data), channel=CHANNEL) as attempt:
        staff = authenticate(db.session, services().totp, form.username.data, form.password.data, form.code.data)
        if staff is not None:
            attempt.succeeded()
    if staff is None:
        audit("staff-login", "failure")  # never the typed username: it may be a mistyped password
        return render_template("agent/login.html", form=LoginForm(formdata=None), failed=True), 200
    start_session(staff)
    act_as(f"staff:{staff.id}")
    audit("staff-login", "success")
    return redirect(url_for("agent.home"), 303)


@bp.post("/logout")
def logout() -> ResponseValue:
    audit("staff-logout", "success")
    end_sessions(db.session, current_user.staff)
    end_session()
    flash("You are signed out.")
    return redirect(url_for("agent.login"), 303)


@bp.route("/password", methods=["GET", "POST"])
def change_password() -> ResponseValue:
    form = PasswordChangeForm()
    if not form.validate_on_submit():
        return render_template("agent/password.html", form=form), 400 if request.method == "POST" else 200
    set_password(db.session, current_user.staff, form.password.data)
    audit("staff-password", "changed")
    return redirect(url_for("agent.home"), 303)


@bp.get("/")
@agent_required
def home() -> str:
    return render_template("agent/home.html")


@bp.get("/supervisor")
@supervisor_required
def supervisor() -> str:
    return render_template("agent/supervisor.html")
