"""The public site: landing page, lookup, exposure, claim. Thin: validate, call the domain, render."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any

import icalendar
from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseValue
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_wtf.csrf import generate_csrf
from werkzeug.wrappers import Response

from portal import exposure, throttle
from portal.claims import PoolBusy, PoolEmpty, claim_code, code_of, holds_code
from portal.errors import render_error
from portal.events import Event, record
from portal.extensions import db
from portal.forms import FIELD_MESSAGES, LetterForm, LookupForm
from portal.identity import end_verification, give_letter_reference, live_verification
from portal.importer import DEFAULT_PRODUCT
from portal.models import Patient, Verification
from portal.services import services
from portal.verification import letter_required, verify

bp = Blueprint("public", __name__)

SESSION_KEY = "verification"
# Set (True) when the birth date typed at the lookup made the person a minor on the notice date: the
# one fact kept of it (the signed session holds no date), for the children's plan.
MINOR_KEY = "minor"
ENDED_KEY = "ended"  # why the last verification in this browser ended, said once on the next page that needs it
CHANNEL = "public"
CSRF_SLOT = "@@csrf-token@@"  # stands in for the visitor's token in the cached blank lookup form


def _record(action: str, outcome: str, public_id: str | None = None) -> None:
    record(Event(action, outcome, CHANNEL, public_id, request.remote_addr))


PAGE_VARIANTS_KEPT = 256  # pages kept a process (a few KiB each); beyond, a page is rendered each time


def rendered_once(template: str, context: Callable[[], dict[str, Any]], variant: Hashable = None) -> str:
    """A page that is identical for every visitor in a language (and ``variant``), rendered once and kept.

    Only for templates that show nothing of the visitor beyond what ``variant`` names: no form data
    and no flashed message. At most ``PAGE_VARIANTS_KEPT`` pages are kept: an import with every
    combination of exposed fields cannot make a process hold thousands of pages.
    """
    pages = current_app.extensions.setdefault("portal.pages", {})
    key = (template, str(get_locale()), variant)
    page = pages.get(key)
    if page is None:
        page = render_template(template, **context())
        if len(pages) < PAGE_VARIANTS_KEPT:
            pages[key] = page
    return page


@bp.get("/")
def index() -> str:
    """The most requested page: the same for everyone in a language (its template shows no flash)."""
    return rendered_once("public/index.html", dict)


@bp.get("/lookup")
def lookup_form() -> str:
    """The blank form differs between visitors only by its CSRF token: cached, and the token put in."""
    if "_flashes" in session:  # a message for this visitor only (their session ended)
        return render_template("public/lookup.html", form=LookupForm())
    blank = rendered_once("public/lookup.html", lambda: {"form": LookupForm(), "csrf_token": lambda: CSRF_SLOT})
    return blank.replace(CSRF_SLOT, generate_csrf())


@bp.post("/lookup")
def lookup() -> Response | tuple[str, int]:
    # Form-encoded bodies only: Flask-WTF would otherwise read a JSON body, whatever its shape.
    form = LookupForm(formdata=request.form)
    # Malformed input is refused before any limit is consulted: the answer cannot depend on
    # the state of anyone's budget, and nothing is counted.
    if not form.validate_on_submit():
        return render_template("public/lookup.html", form=form), 400
    assert form.claim is not None
    # A new lookup starts over: the previous verification ends (in this browser and on the server,
    # as on signing out), and the new attempt's events are not filed under it.
    end_verification(db.session, session.pop(SESSION_KEY, None))
    budgets = throttle.public_budgets(form.claim, request.remote_addr)
    verified = verify(form.claim, budgets, CHANNEL, request.remote_addr)
    if verified is None:
        # Unknown person or one wrong field: the same page, the same status, after the same work.
        return render_template("public/lookup.html", form=form, not_matched=True), 200
    session.clear()
    session.permanent = True
    session[SESSION_KEY] = verified.token
    if exposure.is_minor(form.claim.date_of_birth, services().programme.notice_date):
        session[MINOR_KEY] = True
    return redirect(url_for("public.exposure_page"), 303)


def verified_only(view: Callable[[Patient, Verification], ResponseValue]) -> Callable[[], ResponseValue]:
    """Run ``view`` for the patient of a live verification made on this site; otherwise back to the
    lookup form."""

    @wraps(view)
    def guarded() -> ResponseValue:
        verification = live_verification(db.session, session.get(SESSION_KEY), CHANNEL)
        if verification is not None:
            return view(db.session.get_one(Patient, verification.patient_id), verification)
        if SESSION_KEY in session:
            session.clear()
            flash(_("For your safety your session ended after 15 minutes. Please enter your details again."))
        elif session.pop(ENDED_KEY, None) == "signed-out":
            flash(_("Your session ended when you signed out. To see your page again, enter your details again."))
        return redirect(url_for("public.lookup_form"), 303)

    return guarded


@bp.get("/exposure")
@verified_only
def exposure_page(patient: Patient, verification: Verification) -> str:
    _record("exposure", "viewed", patient.public_id)
    return _exposure(patient, verification)


def _exposure(patient: Patient, verification: Verification, letter_form: LetterForm | None = None) -> str:
    """The exposure page; with the letter's reference asked for before a claim when step-up is on.

    Everyone with the same exposed fields, age group (adult or minor) and code held or not reads
    the same page but for its CSRF tokens: it is rendered once per such variant and language, and
    the visitor's token put in. A page showing a flashed message or a letter form with a visitor's
    input or errors is rendered for them alone."""
    held = holds_code(db.session, patient)
    if letter_form is None:
        asked = letter_required(verification)
        if "_flashes" not in session:
            variant = (patient.exposed_fields, session.get(MINOR_KEY, False), held, asked)
            page = rendered_once("public/exposure.html", lambda: _exposure_context(patient, held, asked), variant)
            return page.replace(CSRF_SLOT, generate_csrf())
        letter_form = LetterForm(formdata=None) if asked else None
    return render_template("public/exposure.html", guidance=_guidance(patient), held=held, letter_form=letter_form)


def _exposure_context(patient: Patient, held: bool, asked: bool) -> dict[str, Any]:
    """The exposure page's context for its cached variant: the blank letter form, a stand-in token."""
    letter_form = LetterForm(formdata=None) if asked else None
    return {"guidance": _guidance(patient), "held": held, "letter_form": letter_form, "csrf_token": lambda: CSRF_SLOT}


def _guidance(patient: Patient) -> exposure.Guidance:
    programme = services().programme
    return exposure.guidance(patient.exposed_fields, programme.exposed_fields, session.get(MINOR_KEY, False))


@bp.get("/plan")
@verified_only
def plan_page(patient: Patient, verification: Verification) -> str:
    """The summary and the plan, to print or save; with the code when the code page would show it."""
    held = code_of(db.session, services().cipher, patient)
    shown = held if held is not None and not letter_required(verification) else None
    _record("plan", "viewed", patient.public_id)
    return render_template("public/plan.html", guidance=_guidance(patient), held=shown)


REMINDER_DAYS = 14  # the calendar's alarm: time left to enrol once it rings


@bp.get("/plan.ics")
def reminder() -> Response:
    """The enrol-by date as a calendar event, in the visitor's language.

    Programme facts only, the same for everyone: no name and no activation code. Calendars are
    synced to other services, shared with family and shown on locked screens; a code seen there is
    one a thief can enrol with before its owner does. The event says where the code is instead.
    """
    programme = services().programme.in_language(str(get_locale()))
    enrol_by = programme.enrol_by
    event = icalendar.Event()
    event.add("uid", f"{uuid.uuid5(uuid.NAMESPACE_URL, f'{programme.enrolment_url}#enroll-by-{enrol_by}')}")
    event.add("dtstamp", datetime.now(UTC))
    event.add("dtstart", enrol_by)
    event.add("dtend", enrol_by + timedelta(days=1))
    event.add("transp", "TRANSPARENT")
    event.add("summary", _("Last day to enroll in %(provider)s", provider=programme.provider_name))
    event.add("description", _(
        "%(months)s months of %(provider)s, free, from %(organisation)s. Enroll at %(url)s with the activation "
        "code on the page you printed or saved, or sign in again to see it. Questions? Call %(phone)s.",
        months=programme.coverage_months, provider=programme.provider_name, organisation=programme.organisation,
        url=programme.enrolment_url, phone=programme.call_center_phone,
    ))  # fmt: skip
    event.add("url", programme.enrolment_url)
    alarm = icalendar.Alarm()
    alarm.add("action", "DISPLAY")
    alarm.add("description", event["summary"])
    alarm.add("trigger", timedelta(days=-REMINDER_DAYS))
    event.add_component(alarm)
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//affected-patient-portal//enroll-by reminder//EN")
    calendar.add("version", "2.0")
    calendar.add_component(event)
    return Response(
        calendar.to_ical(),
        mimetype="text/calendar",
        headers={"Content-Disposition": 'attachment; filename="enroll-by.ics"', "Content-Language": str(get_locale())},
    )


@bp.post("/claim")
@verified_only
def claim(patient: Patient, verification: Verification) -> ResponseValue:
    if letter_required(verification):
        letter_form = LetterForm(formdata=request.form)
        if not letter_form.validate():
            return _exposure(patient, verification, letter_form), 400
        if not give_letter_reference(db.session, services().hasher, verification, letter_form.reference.data):
            _record("claim", "letter-mismatch", patient.public_id)
            letter_form.reference.errors.append(str(FIELD_MESSAGES["letter_mismatch"]))
            return _exposure(patient, verification, letter_form), 400
    if code_of(db.session, services().cipher, patient) is not None:
        # Held already (a second tab, a reload): no code is handed out, so none is counted as claimed.
        _record("claim", "repeat", patient.public_id)
        return redirect(url_for("public.code_page"), 303)
    try:
        claim_code(db.session, services().cipher, patient)
    except PoolEmpty:
        _record("claim", "pool-empty", patient.public_id)
        return render_error(
            503,
            _(
                "All activation codes are handed out at the moment. Nothing was changed; more codes are on the way. "
                "Please try again tomorrow or call us."
            ),
        )
    except PoolBusy:
        _record("claim", "busy", patient.public_id)
        return render_error(503, retry_after=5)
    _record("claim", "success", patient.public_id)
    return redirect(url_for("public.code_page"), 303)


@bp.get("/code")
@verified_only
def code_page(patient: Patient, verification: Verification) -> ResponseValue:
    """The code, once claimed; while step-up is on, only after the letter's reference (the code is
    what a thief wants: shown to them, they would enrol with it before the person does)."""
    held = code_of(db.session, services().cipher, patient)
    if held is None or letter_required(verification):
        return redirect(url_for("public.exposure_page"), 303)
    _record("code", "viewed", patient.public_id)
    # The importer's default product name is English: said in the page's language instead.
    product = _("Identity protection, 24 months") if held.product == DEFAULT_PRODUCT else held.product
    return render_template("public/code.html", held=held, product=product)


@bp.post("/sign-out")
def sign_out() -> Response:
    """Ends the verification here and on the server; the browser keeps only the word that it was a
    sign-out (nothing about the person), so that a page reopened afterwards says why it is gone."""
    _record("sign-out", "success")
    end_verification(db.session, session.get(SESSION_KEY))
    session.clear()
    session[ENDED_KEY] = "signed-out"
    return redirect(url_for("public.signed_out"), 303)


@bp.get("/signed-out")
def signed_out() -> str:
    """The same for everyone (the template shows no flash)."""
    return rendered_once("public/signed_out.html", dict)
