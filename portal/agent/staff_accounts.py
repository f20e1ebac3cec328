"""Supervisors manage staff accounts: create, disable, re-enable, reset password and authenticator.

Every change is confirmed on a page of its own and then posted, and every post answers with a
redirect (post/redirect/get): a reload never repeats it. A new password and QR code are kept,
sealed, in the supervisor's session for the one page that shows them. A change to a supervisor's
account waits for a second supervisor's approval (``portal.staff.request_approval``); nobody
changes their own account here.
"""

from __future__ import annotations

import json

import segno
from flask import abort, flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseValue
from flask_login import current_user
from markupsafe import Markup

from portal.agent.auth import supervisor_required
from portal.agent.blueprint import audit, bp
from portal.agent.forms import CreateStaffForm
from portal.extensions import db
from portal.models import Staff, StaffApproval
from portal.sealing import Sealer
from portal.services import services
from portal.staff import (
    STAFF_ACTIONS,
    Enrolment,
    StaffError,
    apply_action,
    approve,
    create_staff,
    list_staff,
    needs_approval,
    pending_approvals,
    request_approval,
)

# What each action is called in the audit trail (the command line's names too) and on the pages.
AUDIT_ACTIONS = {"disable": "disable-staff", "enable": "enable-staff", "reset-mfa": "reset-staff-mfa"}
VERBS = {"disable": "Disable", "enable": "Re-enable", "reset-mfa": "Reset the password and authenticator of"}
DONE = {
    "disable": "{name} is disabled; their sessions have ended.",
    "enable": "{name} can sign in again.",
}
# An action that the account's state makes pointless (a stale page, a second tab).
STATE_REFUSALS = {
    ("disable", True): "{name} is already disabled.",
    ("enable", False): "{name} is already active.",
    ("reset-mfa", True): "{name} is disabled: re-enable the account first.",
}
ENROLMENT_KEY = "staff_enrolment"  # the sealed password and TOTP URI, until the page shows them


def _enrolment_sealer() -> Sealer:
    return Sealer(services().totp.keyring, "staff-enrolment")


def _enrolment_context() -> bytes:
    """Bound to this supervisor's session: a sealed enrolment copied elsewhere does not open."""
    return f"staff-enrolment\x1f{current_user.get_id()}".encode()


def keep_enrolment(enrolment: Enrolment) -> None:
    text = json.dumps([enrolment.staff.username, enrolment.password, enrolment.otpauth_uri])
    session[ENROLMENT_KEY] = list(_enrolment_sealer().seal(text, _enrolment_context()))


def take_enrolment() -> tuple[str, str, str] | None:
    """The enrolment waiting to be shown, once: it leaves the session as it is read."""
    kept = session.pop(ENROLMENT_KEY, None)
    if not kept:
        return None
    username, password, uri = json.loads(_enrolment_sealer().open(kept[0], kept[1], _enrolment_context()))
    return username, password, uri


@bp.route("/staff", methods=["GET", "POST"])
@supervisor_required
def staff_page() -> ResponseValue:
    form = CreateStaffForm()
    if form.validate_on_submit():
        try:
            created = create_staff(db.session, services().totp, form.username.data, form.role.data)
        except StaffError as error:
            form.username.errors.append(f"{str(error).capitalize()}.")
        else:
            audit("create-staff", f"staff:{created.staff.id}")
            keep_enrolment(created)
            return redirect(url_for("agent.enrolment"), 303)
    status = 400 if request.method == "POST" else 200
    return render_staff(form), status


def render_staff(form: CreateStaffForm) -> str:
    approvals = pending_approvals(db.session)
    staff = list_staff(db.session)
    return render_template(
        "agent/staff.html",
        form=form,
        staff=staff,
        by_id={member.id: member for member in staff},
        approvals=approvals,
        verbs=VERBS,
    )


@bp.get("/staff/enrolment")
@supervisor_required
def enrolment() -> str:
    """The new password and QR code, shown this once (never stored in clear)."""
    shown = take_enrolment()
    # segno writes the SVG from the URI alone (paths and presentation attributes, no script or style).
    qr = Markup(segno.make(shown[2], error="m").svg_inline(scale=4)) if shown else None  # noqa: S704
    return render_template("agent/enrolment.html", enrolment=shown, qr=qr)


def staff_member(staff_id: int) -> Staff:
    staff = db.session.get(Staff, staff_id)
    if staff is None:
        abort(404)
    return staff


@bp.route("/staff/<int:staff_id>/<action>", methods=["GET", "POST"])
@supervisor_required
def staff_action(staff_id: int, action: str) -> ResponseValue:
    """GET: what the action will do, and a button to do it. POST: done (or, for a supervisor's
    account, requested from a second supervisor), then back to the staff list."""
    if action not in STAFF_ACTIONS:
        abort(404)
    target = staff_member(staff_id)
    me = current_user.staff
    if target.id == me.id:
        abort(403)  # one's own account: another supervisor, or the command line
    refusal = STATE_REFUSALS.get((action, target.disabled))
    if refusal:
        flash(refusal.format(name=target.username))
        return redirect(url_for("agent.staff_page"), 303)
    approval_needed = needs_approval(target)
    if request.method == "GET":
        return render_template(
            "agent/confirm.html",
            target=target,
            action=action,
            verb=VERBS[action],
            command=AUDIT_ACTIONS[action],
            approval_needed=approval_needed,
        )
    if approval_needed:
        request_approval(db.session, action, target, me)
        audit("staff-approval-requested", f"{action}:staff:{target.id}")
        flash("Requested. Another supervisor must approve it on the Staff page within a day; then it is done.")
        return redirect(url_for("agent.staff_page"), 303)
    return carry_out(action, target)


def carry_out(action: str, target: Staff) -> ResponseValue:
    """Apply ``action`` to ``target`` and answer with a redirect: to the one-time enrolment page
    after a reset, else to the staff list."""
    enrolment = apply_action(db.session, services().totp, action, target)
    audit(AUDIT_ACTIONS[action], f"staff:{target.id}")
    if enrolment is not None:
        keep_enrolment(enrolment)
        return redirect(url_for("agent.enrolment"), 303)
    flash(DONE[action].format(name=target.username))
    return redirect(url_for("agent.staff_page"), 303)


def pending(approval_id: int) -> StaffApproval:
    approval = next((a for a in pending_approvals(db.session) if a.id == approval_id), None)
    if approval is None:
        flash("That request was already approved or has lapsed.")
        abort(redirect(url_for("agent.staff_page"), 303))
    return approval


@bp.route("/staff/approvals/<int:approval_id>", methods=["GET", "POST"])
@supervisor_required
def approval(approval_id: int) -> ResponseValue:
    """A second supervisor approves a change to a supervisor's account, which is then made."""
    waiting = pending(approval_id)
    target, requester = staff_member(waiting.target_id), staff_member(waiting.requested_by)
    if current_user.staff.id in (target.id, requester.id):
        abort(403)  # the second supervisor must be someone else
    if request.method == "GET":
        return render_template(
            "agent/approve.html", approval=waiting, target=target, requester=requester, verb=VERBS[waiting.action]
        )
    try:
        approved = approve(db.session, waiting.id, current_user.staff)
    except StaffError as error:
        flash(str(error))
        return redirect(url_for("agent.staff_page"), 303)
    audit("staff-approval-given", f"{approved.action}:staff:{target.id}")
    return carry_out(approved.action, target)
