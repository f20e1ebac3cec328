"""The partner API, v1: JSON in and out, bearer keys, the same verification and claims as the site.

Thin: parse and validate (``validation``), check the key (``auth``), call the domain, serialise.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template, request
from flask.typing import ResponseReturnValue

from portal import exposure, throttle, verification
from portal.api import errors, openapi
from portal.api.auth import current_key, partner_view, rate_limit_headers
from portal.api.validation import InvalidFields, claim_request, identity_claim, json_object
from portal.claims import ClaimedCode, PoolBusy, PoolEmpty, claim_code, code_of
from portal.events import Event, record
from portal.extensions import csrf, db
from portal.identity import give_letter_reference, live_verification
from portal.models import Patient
from portal.network import client_key
from portal.services import services

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)  # bearer keys, no cookies: nothing for a cross-site request to ride on
errors.init_blueprint(bp)
bp.after_request(rate_limit_headers)

CHANNEL = "api"


@bp.before_request
def bound_the_body() -> None:
    """Partner bodies are a few hundred bytes; a smaller cap than the site's forms."""
    request.max_content_length = current_app.config["API_MAX_CONTENT_LENGTH"]


def _record(action: str, outcome: str, patient_ref: str | None = None) -> None:
    record(Event(action, outcome, CHANNEL, patient_ref, request.remote_addr, actor=current_key().actor))


@bp.post("/verifications")
@partner_view("verify")
def verify() -> ResponseReturnValue:
    claim = identity_claim(json_object())
    key = current_key()
    budgets = [
        *throttle.person_budgets(claim, CHANNEL, "API_VERIFY_LIMIT_PERSON"),
        throttle.Budget("api-key-failures", "API_VERIFY_LIMIT_KEY", key.prefix),
        throttle.Budget("api-client", "API_VERIFY_LIMIT_CLIENT", client_key(request.remote_addr)),
        throttle.people_budget(errors.KEY_PEOPLE_SCOPE, "API_VERIFY_LIMIT_KEY_PEOPLE", key.prefix, claim),
        throttle.GLOBAL_BUDGET,
    ]
    verified = verification.verify(claim, budgets, CHANNEL, request.remote_addr, key.actor, key.id)
    if verified is None:
        # Unknown person or one wrong field: the same answer after the same work.
        return {"verified": False}
    return {
        "verified": True,
        "exposed_fields": [field.name for field in exposure.fields_in(verified.patient.exposed_fields)],
        "claim_token": verified.token,
        "expires_at": verified.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


@bp.post("/claims")
@partner_view("claim")
def claim() -> ResponseReturnValue:
    token, reference = claim_request(json_object())
    # Only a token this key made: one made on the website or with another partner's key is unknown here.
    verified = live_verification(db.session, token, CHANNEL, current_key().id)
    if verified is None:
        raise InvalidFields({"claim_token": "unknown or expired: verify again"})
    patient = db.session.get_one(Patient, verified.patient_id)
    cipher = services().cipher
    # While step-up is on, a code held already is no more shown without the letter than a new one.
    if verification.letter_required(verified):
        if not reference:
            raise errors.LetterRequired()
        if not give_letter_reference(db.session, services().hasher, verified, reference):
            _record("claim", "letter-mismatch", patient.public_id)
            raise InvalidFields({"reference": "is not the reference printed on this person's letter"})
    held = code_of(db.session, cipher, patient)
    if held is None:
        try:
            held = claim_code(db.session, cipher, patient)
        except (PoolEmpty, PoolBusy) as error:
            _record("claim", "pool-empty" if isinstance(error, PoolEmpty) else "busy", patient.public_id)
            raise
        _record("claim", "success", patient.public_id)
        return _code_body(held), 201
    _record("claim", "repeat", patient.public_id)
    return _code_body(held), 200


def _code_body(held: ClaimedCode) -> dict[str, Any]:
    programme = services().programme
    return {
        "activation_code": held.code,
        "product": held.product,
        "enroll_by": held.enroll_by.isoformat(),
        "coverage_months": programme.coverage_months,
        "enrollment_url": programme.enrolment_url,
    }


@bp.get("/program")
@partner_view()
def program() -> ResponseReturnValue:
    programme = services().programme
    return {
        "organisation": programme.organisation,
        "incident_summary": programme.incident_summary,
        "incident_discovered": programme.incident_discovered.isoformat(),
        "notice_date": programme.notice_date.isoformat(),
        "call_center_phone": programme.call_center_phone,
        "call_center_hours": programme.call_center_hours,
        "provider_name": programme.provider_name,
        "enrollment_url": programme.enrolment_url,
        "enroll_by": programme.enrol_by.isoformat(),
        "coverage_months": programme.coverage_months,
        "mailing_address": programme.mailing_address,
        "exposed_fields": [
            {
                "name": field.name,
                "label": str(field.label),
                "risk": str(field.risk),
                "steps": [
                    {"text": str(step.text), "link": step.link, "link_text": str(step.link_text or "") or None}
                    for step in field.steps
                ],
            }
            for field in exposure.FIELDS
        ],
    }


@bp.get("/openapi.json")
def openapi_document() -> ResponseReturnValue:
    return openapi.DOCUMENT


@bp.get("/docs")
def reference() -> str:
    """The contract as a page: rendered from the same document, no script, no CDN."""
    return render_template(
        "api/reference.html",
        doc=openapi.DOCUMENT,
        operations=openapi.reference_operations(),
        problems=errors.PROBLEMS,
        specific_problems=errors.SPECIFIC_PROBLEMS,
    )
