"""Pages every member of staff uses: sign in, sign out, change one's password, the console's home."""

from __future__ import annotations

import hashlib
import hmac

from flask import current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseValue
from flask_login import current_user

from portal import throttle
from portal.agent.auth import agent_required, end_session, start_session
from portal.agent.blueprint import CHANNEL, audit, bp, form_page
from portal.agent.forms import LoginForm, PasswordChangeForm
from portal.events import act_as
from portal.extensions import db
from portal.network import client_key
from portal.services import services
from portal.staff import (
    WeakPassword,
    WrongPassword,
    authenticate,
    change_password,
    end_sessions,
    pending_approvals,
)

# The same words for every failure, whatever failed (no oracle); the hint about a code used
# already is part of them, so it tells nothing about the password.
LOGIN_FAILED = (
    "The username, password or code is not right, or the account is disabled. Each code works once: "
    "if you have just used this one, wait for the next (codes change every 30 seconds)."
)
PASSWORD_CHANGED = "Your password is changed. Any other session of your account has ended."  # noqa: S105


def login_key(username: str) -> str:
    """The account budget's key: a keyed hash of the name as typed (folded), never the text itself,
    which may be a password typed into the wrong box and would otherwise sit in the limit store."""
    folded = username.strip().lower()[:64].encode()
    return hmac.new(current_app.secret_key.encode(), b"staff-login\x1f" + folded, hashlib.sha256).hexdigest()


def login_budgets(username: str) -> list[throttle.Budget]:
    """Failed logins per account and per address; a wrong current password on the change form
    counts in the same budgets, so a borrowed session cannot guess the password faster."""
    return [
        throttle.Budget("staff-login-account", "STAFF_LOGIN_LIMIT_ACCOUNT", login_key(username)),
        throttle.Budget("staff-login-client", "STAFF_LOGIN_LIMIT_CLIENT", client_key(request.remote_addr)),
    ]


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseValue:
    form = LoginForm()
    if not form.validate_on_submit():
        return form_page("agent/login.html", form)
    with throttle.attempt(login_budgets(form.username.data), CHANNEL, request.remote_addr) as attempt:
        staff = authenticate(db.session, services().totp, form.username.data, form.password.data, form.code.data)
        if staff is not None:
            attempt.succeeded()
    if staff is None:
        audit("staff-login", "failure")  # never the typed username: it may be a mistyped password
        return render_template("agent/login.html", form=LoginForm(formdata=None), failed=LOGIN_FAILED), 200
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


@bp.route("/password", methods=["GET", "POST"], endpoint="change_password")
def change_own_password() -> ResponseValue:
    """The current password, then a new one (``portal.staff.check_new_password``); every other
    session of the account ends, and this one goes on under the account's new session version."""
    form = PasswordChangeForm()
    if not form.validate_on_submit():
        return form_page("agent/password.html", form)
    staff = current_user.staff
    with throttle.attempt(login_budgets(staff.username), CHANNEL, request.remote_addr) as attempt:
        try:
            change_password(db.session, staff, form.current.data, form.password.data)
        except WrongPassword as error:
            form.current.errors.append(str(error))
        except WeakPassword as error:
            attempt.succeeded()  # the current password was right
            form.password.errors.append(str(error))
        else:
            attempt.succeeded()
    if form.current.errors or form.password.errors:
        audit("staff-password", "refused")
        return render_template("agent/password.html", form=form), 400
    start_session(staff)
    act_as(f"staff:{staff.id}")
    audit("staff-password", "changed")
    flash(PASSWORD_CHANGED)
    return redirect(url_for("agent.home"), 303)


@bp.get("/")
@agent_required
def home() -> str:
    """Where a session starts; a supervisor also sees the changes waiting for their approval."""
    me = current_user.staff
    waiting = []
    if me.role == "supervisor":
        waiting = [a for a in pending_approvals(db.session) if me.id not in (a.requested_by, a.target_id)]
    return render_template("agent/home.html", waiting=len(waiting))
