"""The console's pages. Thin: forms in, domain calls, templates out; access rules live in auth.py."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from functools import wraps
from typing import Any

import segno
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from flask.typing import ResponseValue
from flask_login import current_user
from flask_wtf import FlaskForm
from markupsafe import Markup

from portal import audit as audit_trail
from portal import exposure, throttle
from portal.agent.auth import agent_required, end_session, protect, start_session, supervisor_required
from portal.agent.forms import AuditFilterForm, CreateStaffForm, LocateForm, LoginForm, PasswordChangeForm
from portal.claims import NotHeld, PoolBusy, PoolEmpty, claim_code, code_of, pool_status, reissue_code
from portal.errors import render_error
from portal.events import Event, act_as, record
from portal.extensions import db
from portal.forms import LookupForm
from portal.identity import IdentityClaim, end_verification, verified_patient
from portal.letters import LetterVault, request_reissue
from portal.models import Patient, Staff
from portal.network import client_key
from portal.services import services
from portal.staff import (
    StaffError,
    authenticate,
    create_staff,
    disable_staff,
    end_sessions,
    list_staff,
    reset_mfa,
    set_password,
)
from portal.verification import verify

bp = Blueprint("agent", __name__)
protect(bp)

CHANNEL = "agent"
LOGIN_FAILED = "The username, password or code is not right, or the account is disabled."


def audit(action: str, outcome: str, record_ref: str | None = None) -> None:
    record(Event(action, outcome, CHANNEL, record_ref, request.remote_addr))


def form_page(template: str, form: FlaskForm, **context: Any) -> tuple[str, int]:
    """A form shown blank (200), or sent back with what was wrong with it (400)."""
    status = 400 if request.method == "POST" else 200
    return render_template(template, form=form, **context), status


@bp.errorhandler(throttle.Throttled)
def throttled(error: throttle.Throttled) -> ResponseValue:
    return render_error(429, "Too many attempts. Please wait before trying again.", retry_after=error.retry_after)


@bp.errorhandler(throttle.LimitStoreDown)
def limit_store_down(error: throttle.LimitStoreDown) -> ResponseValue:
    return render_error(503, retry_after=error.retry_after)


def login_key(username: str) -> str:
    """The account budget's key: a keyed hash of the name as typed (folded), never the text itself,
    which may be a password typed into the wrong box and would otherwise sit in the limit store."""
    folded = username.strip().lower()[:64].encode()
    return hmac.new(current_app.secret_key.encode(), b"staff-login\x1f" + folded, hashlib.sha256).hexdigest()


def login_budgets(username: str) -> list[throttle.Budget]:
    return [
        throttle.Budget("staff-login-account", "STAFF_LOGIN_LIMIT_ACCOUNT", login_key(username)),
        throttle.Budget("staff-login-client", "STAFF_LOGIN_LIMIT_CLIENT", client_key(request.remote_addr)),
    ]


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseValue:
    form = LoginForm()
    if not form.validate_on_submit():
        return form_page("agent/login.html", form, failed=request.method == "POST")
    with throttle.attempt(login_budgets(form.username.data), CHANNEL, request.remote_addr) as attempt:
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
        return form_page("agent/password.html", form)
    set_password(db.session, current_user.staff, form.password.data)
    audit("staff-password", "changed")
    return redirect(url_for("agent.home"), 303)


@bp.get("/")
@agent_required
def home() -> str:
    return render_template("agent/home.html")


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
    """The person's short window on the console and the day and year every surface shares; the
    agent's failures, which supervisors see when they trip; every verification the agent makes
    (an account used to verify person after person is not serving calls); and the whole portal's."""
    agent = f"staff:{current_user.staff.id}"
    return [
        *throttle.person_budgets(claim, CHANNEL, "AGENT_VERIFY_LIMIT_PERSON"),
        throttle.Budget("agent-failures", "AGENT_VERIFY_LIMIT_FAILURES", agent),
        throttle.Budget("agent-attempts", "AGENT_VERIFY_LIMIT_ATTEMPTS", agent, refund_on_success=False),
        throttle.GLOBAL_BUDGET,
    ]


@bp.route("/call", methods=["GET", "POST"])
@agent_required
def call() -> ResponseValue:
    form = LookupForm()
    if not form.validate_on_submit():
        return form_page("agent/call.html", form, outcomes=CALL_OUTCOMES)
    assert form.claim is not None
    # A new caller's verification ends the previous caller's: their page cannot be reopened by mistake.
    end_verification(db.session, session.pop(CALL_KEY, None))
    verified = verify(form.claim, verify_budgets(form.claim), CHANNEL, request.remote_addr)
    if verified is None:
        return render_template("agent/call.html", form=form, not_matched=True, outcomes=CALL_OUTCOMES), 200
    session[CALL_KEY] = verified.token
    return redirect(url_for("agent.caller"), 303)


def in_call(view: Callable[[Patient], ResponseValue]) -> Callable[[], ResponseValue]:
    """Run ``view`` for the verified caller of this call; without one, back to a new call."""

    @wraps(view)
    def guarded() -> ResponseValue:
        patient = verified_patient(db.session, session.get(CALL_KEY), CHANNEL)
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


# --- A caller says someone else used their code: report, revoke and reissue ---------------------

REPORTED_CODE = re.compile(r"[0-9]{1,9}")  # the reported code's row id, as the caller's page sent it
REISSUED = "The old code is revoked. Read the caller the new code below."
ALREADY_REPLACED = "That code had already been replaced. Read the caller the code below."


def reissue_budget() -> throttle.Budget:
    """Every reissue counts, done or not: a budget for what one agent may plausibly need in a shift."""
    staff = f"staff:{current_user.staff.id}"
    return throttle.Budget("agent-reissue", "AGENT_REISSUE_LIMIT", staff, refund_on_success=False)


@bp.post("/call/code-misuse")
@agent_required
@in_call
def report_code_misuse(patient: Patient) -> ResponseValue:
    """The caller says the provider called their code already used: revoke it and read them a new one.

    The agent decides, not a second person: the caller has just verified and is on the line, a
    human judges whether the story holds, and the audit trail keeps both steps ("code-misuse"
    reported, then "code-reissue") under the agent's name. What bounds a dishonest or fooled agent
    is ``AGENT_REISSUE_LIMIT``, counted per agent, and the supervisors' dashboard of reissues. The
    form names the code it reports (its row), so a double submit or a stale page never revokes the
    replacement: it finds the code already replaced and shows the live one.
    """
    reported = request.form.get("code", "")
    if not REPORTED_CODE.fullmatch(reported):
        abort(400)
    audit("code-misuse", "reported", patient.public_id)
    try:
        with throttle.attempt([reissue_budget()], CHANNEL, request.remote_addr):
            reissued = reissue_code(db.session, services().cipher, patient, int(reported))
    except throttle.Throttled:
        audit("code-reissue", "throttled", patient.public_id)
        raise
    except NotHeld:
        audit("code-reissue", "not-held", patient.public_id)
        return redirect(url_for("agent.caller"), 303)
    except (PoolEmpty, PoolBusy) as error:
        audit("code-reissue", "pool-empty" if isinstance(error, PoolEmpty) else "busy", patient.public_id)
        return render_error(503, "No new code could be given just now. Nothing was changed.", retry_after=5)
    audit("code-reissue", "success" if reissued.replaced else "already-replaced", patient.public_id)
    flash(REISSUED if reissued.replaced else ALREADY_REPLACED)
    return redirect(url_for("agent.caller"), 303)


@bp.post("/call/end")
@agent_required
def end_call() -> ResponseValue:
    outcome = request.form.get("outcome", "")
    if outcome not in CALL_OUTCOMES:
        abort(400)
    patient = verified_patient(db.session, session.get(CALL_KEY), CHANNEL)
    audit("call-outcome", outcome, patient.public_id if patient else None)
    end_verification(db.session, session.pop(CALL_KEY, None))
    flash("Call recorded.")
    return redirect(url_for("agent.call"), 303)


@bp.route("/letter", methods=["GET", "POST"])
@agent_required
def lost_letter() -> ResponseValue:
    """A caller with no SSN on file whose letter never arrived: identify, and request a new one."""
    form = LocateForm()
    if not form.validate_on_submit():
        return form_page("agent/letter.html", form, outcomes=CALL_OUTCOMES)
    assert form.person is not None
    last_name, born, zip_code = form.person
    vault = LetterVault(services().hasher)
    recent = timedelta(days=current_app.config["LETTER_REISSUE_DAYS"])
    with throttle.attempt(locate_budgets(last_name, born), CHANNEL, request.remote_addr) as attempt:
        found = request_reissue(db.session, vault, last_name, born, zip_code, recent)
        if found is not None:
            attempt.succeeded()
    outcome = "not-identified" if found is None else "already-requested" if found.already_requested else "requested"
    audit("letter-reissue", outcome, found.public_id if found else None)
    return render_template("agent/letter.html", form=form, found=found, outcomes=CALL_OUTCOMES)


def locate_budgets(last_name: str, born: date) -> list[throttle.Budget]:
    """The person's budgets, as a console verification's, and the agent's look-ups, found or not:
    each answer tells whether someone with no SSN on file is on the list."""
    # The person budget keys on last name and birth date only; the placeholder reference completes a claim.
    claim = IdentityClaim(last_name, born, "00000", reference="0" * 24)
    agent = f"staff:{current_user.staff.id}"
    return [
        *throttle.person_budgets(claim, CHANNEL, "AGENT_VERIFY_LIMIT_PERSON"),
        throttle.Budget("agent-locates", "AGENT_LOCATE_LIMIT", agent, refund_on_success=False),
    ]


# --- Supervisors: audit trail, staff, pool -------------------------------------------------------

AUDIT_PAGE_ROWS = 200


@bp.get("/supervisor")
@supervisor_required
def supervisor() -> str:
    with db.engine.connect() as connection:
        throttled = audit_trail.throttled_staff(connection, datetime.now(UTC) - timedelta(days=1))
    return render_template("agent/supervisor.html", pool=pool_status(db.session), throttled=throttled)


def audit_filter(form: AuditFilterForm) -> audit_trail.Filter:
    def midnight(day: date | None, days_after: int = 0) -> datetime | None:
        return datetime.combine(day, time(), UTC) + timedelta(days=days_after) if day else None

    return audit_trail.Filter(
        since=midnight(form.since.data),
        until=midnight(form.until.data, 1),
        actor=form.actor.data or None,
        action=form.action.data or None,
        record_ref=form.record_ref.data or None,
    )


@bp.get("/audit")
@supervisor_required
def audit_page() -> ResponseValue:
    form = AuditFilterForm(request.args)
    if not form.validate():
        return render_template("agent/audit.html", form=form, rows=[]), 400
    audit("audit-trail", "viewed")
    with db.engine.connect() as connection:
        rows = list(audit_trail.events(connection, audit_filter(form), AUDIT_PAGE_ROWS))
    return render_template("agent/audit.html", form=form, rows=rows, limit=AUDIT_PAGE_ROWS)


@bp.get("/audit/export.csv")
@supervisor_required
def audit_export() -> ResponseValue:
    form = AuditFilterForm(request.args)
    if not form.validate():
        abort(400)
    audit("audit-export", "success")
    where = audit_filter(form)

    def lines() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(audit_trail.COLUMNS)
        with db.engine.connect() as connection:
            for row in audit_trail.events(connection, where):
                writer.writerow([row[name] if row[name] is not None else "" for name in audit_trail.COLUMNS])
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    headers = {"Content-Disposition": "attachment; filename=audit.csv"}
    return Response(stream_with_context(lines()), mimetype="text/csv", headers=headers)


@bp.route("/staff", methods=["GET", "POST"])
@supervisor_required
def staff_page() -> ResponseValue:
    form = CreateStaffForm()
    enrolment = None
    status = 200
    if form.validate_on_submit():
        try:
            created = create_staff(db.session, services().totp, form.username.data, form.role.data)
        except StaffError as error:
            form.username.errors.append(str(error))
            status = 400
        else:
            audit("create-staff", f"staff:{created.staff.id}")
            enrolment = (created.staff.username, created.password, created.otpauth_uri)
    elif request.method == "POST":
        status = 400
    return render_enrolment(form, enrolment, status)


def render_enrolment(form: CreateStaffForm, enrolment: tuple[str, str, str] | None, status: int = 200) -> ResponseValue:
    """The staff list, with a new password and TOTP QR code shown once (never stored in clear)."""
    # segno writes the SVG from the URI alone (paths and presentation attributes, no script or style).
    qr = Markup(segno.make(enrolment[2], error="m").svg_inline(scale=4)) if enrolment else None  # noqa: S704
    page = render_template("agent/staff.html", form=form, staff=list_staff(db.session), enrolment=enrolment, qr=qr)
    return page, status


def staff_member(staff_id: int) -> Staff:
    staff = db.session.get(Staff, staff_id)
    if staff is None:
        abort(404)
    return staff


@bp.post("/staff/<int:staff_id>/disable")
@supervisor_required
def disable_staff_member(staff_id: int) -> ResponseValue:
    staff = staff_member(staff_id)
    disable_staff(db.session, staff)
    audit("disable-staff", f"staff:{staff.id}")
    flash(f"{staff.username} is disabled; their sessions have ended.")
    return redirect(url_for("agent.staff_page"), 303)


@bp.post("/staff/<int:staff_id>/reset-mfa")
@supervisor_required
def reset_staff_mfa(staff_id: int) -> ResponseValue:
    staff = staff_member(staff_id)
    password, uri = reset_mfa(db.session, services().totp, staff)
    audit("reset-staff-mfa", f"staff:{staff.id}")
    return render_enrolment(CreateStaffForm(formdata=None), (staff.username, password, uri))
