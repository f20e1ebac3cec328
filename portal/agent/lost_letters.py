"""Lost letters: a caller with no SSN on file, whose letter (and its reference) never arrived, is
identified by last name, birth date and ZIP, and a new letter is requested for them."""

from __future__ import annotations

from datetime import date, timedelta

from flask import current_app, render_template, request
from flask.typing import ResponseValue
from flask_login import current_user

from portal import throttle
from portal.agent.auth import agent_required
from portal.agent.blueprint import CHANNEL, audit, bp, form_page
from portal.agent.calls import CALL_OUTCOMES
from portal.agent.forms import LocateForm
from portal.extensions import db
from portal.identity import IdentityClaim
from portal.letters import LetterVault, request_reissue
from portal.services import services


@bp.route("/letter", methods=["GET", "POST"])
@agent_required
def lost_letter() -> ResponseValue:
    """Identify, and request a new letter; a repeat within ``LETTER_REISSUE_DAYS`` says when the
    first was requested, and both say when it should arrive (the programme's ``letter_delivery_days``)."""
    form = LocateForm()
    if not form.validate_on_submit():
        return form_page("agent/letter.html", form, outcomes=CALL_OUTCOMES)
    assert form.person is not None
    last_name, born, zip_code = form.person
    vault = LetterVault(services().hasher)
    again_after = timedelta(days=current_app.config["LETTER_REISSUE_DAYS"])
    with throttle.attempt(locate_budgets(last_name, born), CHANNEL, request.remote_addr) as attempt:
        found = request_reissue(db.session, vault, last_name, born, zip_code, again_after)
        if found is not None:
            attempt.succeeded()
    outcome = "not-identified" if found is None else "already-requested" if found.already_requested else "requested"
    audit("letter-reissue", outcome, found.public_id if found else None)
    dates = {}
    if found is not None:
        requested = found.requested_at.date()
        dates = {
            "requested": requested,
            "arrives_by": requested + timedelta(days=services().programme.letter_delivery_days),
            "again_after": requested + again_after,
        }
    return render_template("agent/letter.html", form=form, found=found, outcomes=CALL_OUTCOMES, **dates)


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
