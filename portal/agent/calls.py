"""Serving a caller: verify them, read out their exposure and code, report a code someone else
used, and record how the call ended."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import wraps

from flask import abort, flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseValue
from flask_login import current_user

from portal import exposure, throttle
from portal.agent.auth import agent_required
from portal.agent.blueprint import CHANNEL, audit, bp, form_page
from portal.agent.forms import CallerForm
from portal.claims import NotHeld, PoolBusy, PoolEmpty, claim_code, code_of, reissue_code
from portal.errors import render_error
from portal.extensions import db
from portal.identity import IdentityClaim, end_verification, verified_patient
from portal.models import Patient
from portal.services import services
from portal.verification import verify

CALL_KEY = "agent_call"  # the verification token of the call in progress
CALL_MINOR_KEY = "agent_call_minor"  # whether the birth date the agent typed is a minor's (never the date)
CALL_OUTCOMES = {
    "resolved": "Caller's questions answered",
    "code-given": "Activation code read to the caller",
    "callback": "Caller will call back",
    "escalated": "Escalated to a supervisor",
    "not-verified": "Caller could not be verified",
}
NO_OUTCOME = "Choose how the call ended, then record it."


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
    form = CallerForm()
    if not form.validate_on_submit():
        return form_page("agent/call.html", form, outcomes=CALL_OUTCOMES)
    assert form.claim is not None
    # A new caller's verification ends the previous caller's: their page cannot be reopened by mistake.
    end_verification(db.session, session.pop(CALL_KEY, None))
    verified = verify(form.claim, verify_budgets(form.claim), CHANNEL, request.remote_addr)
    if verified is None:
        return render_template("agent/call.html", form=form, not_matched=True, outcomes=CALL_OUTCOMES), 200
    session[CALL_KEY] = verified.token
    session.pop(CALL_MINOR_KEY, None)
    if exposure.is_minor(form.claim.date_of_birth, services().programme.notice_date):
        session[CALL_MINOR_KEY] = True
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
        guidance=exposure.guidance(
            patient.exposed_fields, services().programme.exposed_fields, session.get(CALL_MINOR_KEY, False)
        ),
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
        return render_error(
            503,
            "No activation code could be given just now; nothing was changed. Tell the caller you will call "
            "back, record the outcome, and tell a supervisor.",
            retry_after=5,
        )
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
    """Record the outcome the agent chose (none is chosen for them) and end the caller's verification."""
    outcome = request.form.get("outcome", "")
    if not outcome:
        return render_error(400, NO_OUTCOME)
    if outcome not in CALL_OUTCOMES:
        abort(400)
    patient = verified_patient(db.session, session.get(CALL_KEY), CHANNEL)
    audit("call-outcome", outcome, patient.public_id if patient else None)
    end_verification(db.session, session.pop(CALL_KEY, None))
    session.pop(CALL_MINOR_KEY, None)
    flash("Call recorded. Ready for the next caller.")
    return redirect(url_for("agent.call"), 303)
