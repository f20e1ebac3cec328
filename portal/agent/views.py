"""The console's pages. Thin: forms in, domain calls, templates out; access rules live in auth.py."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseValue
from flask_login import current_user

from portal import exposure, services
from portal import throttle_interim as throttle
from portal.agent.auth import agent_required, end_session, protect, start_session, supervisor_required
from portal.agent.forms import LoginForm, PasswordChangeForm
from portal.claims import PoolBusy, PoolEmpty, claim_code, code_of
from portal.errors import render_error
from portal.events import Event, act_as, record
from portal.extensions import db
from portal.identity import IdentityClaim, end_verification, find_patient, start_verification, verified_patient
from portal.models import Patient
from portal.public.forms import LookupForm
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


# --- Serving a caller: verify, exposure, code, outcome ------------------------------------------

CALL_KEY = "agent_call"  # the verification token of the call in progress
CALL_OUTCOMES = {
    "resolved": "Caller's questions answered",
    "code-given": "Activation code read to the caller",
    "callback": "Caller will call back",
    "escalated": "Escalated to a supervisor",
    "not-verified": "Caller could not be verified",
}


def verify_budgets(claim: IdentityClaim) -> list[throttle.Budget]:
    """The console's own per-person budget (a person locked out on the website can still be
    served), and the agent's failures, which supervisors see when they trip."""
    return [
        throttle.person_budget(claim, CHANNEL, "AGENT_VERIFY_LIMIT_PERSON"),
        throttle.Budget("agent-failures", "AGENT_VERIFY_LIMIT_FAILURES", f"staff:{current_user.staff.id}"),
    ]


@bp.route("/call", methods=["GET", "POST"])
@agent_required
def call() -> ResponseValue:
    form = LookupForm()
    if not form.validate_on_submit():
        status = 400 if request.method == "POST" else 200
        return render_template("agent/call.html", form=form, outcomes=CALL_OUTCOMES), status
    assert form.claim is not None
    try:
        with throttle.attempt(verify_budgets(form.claim), channel=CHANNEL) as attempt:
            patient = find_patient(db.session, services().hasher, form.claim)
            if patient is not None:
                attempt.succeeded()
    except throttle.Throttled:
        audit("verification", "throttled")
        raise
    if patient is None:
        audit("verification", "failure")
        return render_template("agent/call.html", form=form, not_matched=True, outcomes=CALL_OUTCOMES), 200
    audit("verification", "success", patient.public_id)
    session[CALL_KEY] = start_verification(
        db.session, patient, CHANNEL, current_app.config["VERIFICATION_TTL_SECONDS"]
    )
    return redirect(url_for("agent.caller"), 303)


def in_call(view: Callable[[Patient], ResponseValue]) -> Callable[[], ResponseValue]:
    """Run ``view`` for the verified caller of this call; without one, back to a new call."""

    @wraps(view)
    def guarded() -> ResponseValue:
        patient = verified_patient(db.session, session.get(CALL_KEY))
        if patient is None:
            session.pop(CALL_KEY, None)
            return redirect(url_for("agent.call"), 303)
        return view(patient)

    return guarded


@bp.get("/call/caller")
@agent_required
@in_call
def caller(patient: Patient) -> str:
    held = code_of(db.session, services().cipher, patient)
    audit("exposure", "viewed", patient.public_id)
    if held is not None:
        audit("code", "re-read", patient.public_id)
    return render_template(
        "agent/caller.html",
        fields=exposure.fields_in(patient.exposed_fields),
        programme=services().programme,
        held=held,
        outcomes=CALL_OUTCOMES,
    )


@bp.post("/call/claim")
@agent_required
@in_call
def claim_for_caller(patient: Patient) -> ResponseValue:
    try:
        claim_code(db.session, services().cipher, patient)
    except (PoolEmpty, PoolBusy) as error:
        outcome = "pool-empty" if isinstance(error, PoolEmpty) else "busy"
        audit("claim", outcome, patient.public_id)
        return render_error(503, "No activation code could be given just now. Nothing was changed.", retry_after=5)
    audit("claim", "success", patient.public_id)
    return redirect(url_for("agent.caller"), 303)


@bp.post("/call/end")
@agent_required
def end_call() -> ResponseValue:
    outcome = request.form.get("outcome", "")
    if outcome not in CALL_OUTCOMES:
        abort(400)
    patient = verified_patient(db.session, session.get(CALL_KEY))
    audit("call-outcome", outcome, patient.public_id if patient else None)
    end_verification(db.session, session.pop(CALL_KEY, None))
    flash("Call recorded.")
    return redirect(url_for("agent.call"), 303)
