"""The partner API, v1: JSON in and out, bearer keys, the same verification and claims as the site.

Thin: parse and validate (``validation``), check the key (``auth``), call the domain, serialise.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

from babel import negotiate_locale
from flask import Blueprint, Response, current_app, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from flask_babel import force_locale

from portal import exposure, throttle, verification
from portal.api import errors, openapi, reference
from portal.api.auth import current_key, partner_view, rate_limit_headers
from portal.api.validation import InvalidFields, claim_request, identity_claim, json_object
from portal.claims import ClaimedCode, PoolBusy, PoolEmpty, claim_code, code_of
from portal.events import Event, record
from portal.extensions import csrf, db
from portal.idempotency import Replay
from portal.identity import give_letter_reference, live_verification
from portal.models import Patient
from portal.network import client_key
from portal.services import services

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)  # bearer keys, no cookies: nothing for a cross-site request to ride on
errors.init_blueprint(bp)
bp.after_request(rate_limit_headers)

CHANNEL = "api"
Answer = tuple[dict[str, Any], int]


def _record(action: str, outcome: str, patient_ref: str | None = None) -> None:
    record(Event(action, outcome, CHANNEL, patient_ref, request.remote_addr, actor=current_key().actor))


def idempotent(data: dict[str, Any], answer: Callable[[], Answer]) -> ResponseReturnValue:
    """``answer()``, or with an ``Idempotency-Key`` the first answer to the same key and body (24 h).

    Only a success is kept: a refusal or an error removes the record, so that the retry is made
    afresh once whatever refused it has passed.
    """
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return answer()
    if not openapi.IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidFields({"Idempotency-Key": "must be 1 to 255 visible ASCII characters, such as a UUID"})
    store = services().idempotency
    held = store.begin(db.session, current_key().id, key, request.endpoint or "", data)
    if isinstance(held, Replay):
        response = jsonify(held.body)
        response.status_code = held.status
        response.headers["Idempotent-Replayed"] = "true"
        return response
    try:
        body, status = answer()
    except BaseException:
        store.abandon(db.session, held)
        raise
    store.finish(db.session, held, status, body)
    return body, status


@bp.post("/verifications")
@partner_view("verify")
def verify() -> ResponseReturnValue:
    data = json_object()
    claim = identity_claim(data)

    def answer() -> Answer:
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
            return {"verified": False}, 200
        return {
            "verified": True,
            "exposed_fields": [field.name for field in exposure.fields_in(verified.patient.exposed_fields)],
            "claim_token": verified.token,
            "expires_at": verified.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }, 200

    return idempotent(data, answer)


@bp.post("/claims")
@partner_view("claim")
def claim() -> ResponseReturnValue:
    data = json_object()
    token, letter = claim_request(data)
    return idempotent(data, lambda: _claim(token, letter))


def _claim(token: str, reference_text: str) -> Answer:
    # Only a token this key made: one made on the website or with another partner's key is unknown here.
    verified = live_verification(db.session, token, CHANNEL, current_key().id)
    if verified is None:
        raise InvalidFields({"claim_token": "unknown or expired: verify again"})
    patient = db.session.get_one(Patient, verified.patient_id)
    cipher = services().cipher
    # While step-up is on, a code held already is no more shown without the letter than a new one.
    if verification.letter_required(verified):
        if not reference_text:
            raise errors.LetterRequired()
        if not give_letter_reference(db.session, services().hasher, verified, reference_text):
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


def answer_language() -> str:
    """The best language ``Accept-Language`` asks for among those every text of the answer exists in
    (the exposure guidance is complete in every catalogue; the program file may not be); else the
    file's own. Never the ``lang`` cookie: a partner's answer does not depend on a visitor's pick."""
    default = current_app.config["BABEL_DEFAULT_LOCALE"]
    programme = services().programme
    complete = [code for code in current_app.config["LANGUAGES"] if code == default or programme.complete_in(code)]
    # Babel's negotiation, not werkzeug's best_match: "es-MX, en;q=0.5" is Spanish, not English.
    asked = [language.lower() for language, _quality in request.accept_languages]
    return negotiate_locale(asked, complete, sep="-") or default


@bp.get("/program")
@partner_view()
def program() -> ResponseReturnValue:
    language = answer_language()
    programme = services().programme.in_language(language)
    with force_locale(language):
        body = {
            "organization": programme.organisation,
            "organisation": programme.organisation,  # deprecated in 1.1.0 (CHANGELOG.md)
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
                        {
                            "text": str(step.text),
                            "link": step.link,
                            "link_text": str(step.link_text or "") or None,
                            "links": [{"url": link.url, "text": str(link.text)} for link in step.links],
                        }
                        for step in field.steps
                    ],
                }
                for field in exposure.FIELDS
            ],
        }
    response = jsonify(body)
    response.headers["Content-Language"] = language
    response.vary.add("Accept-Language")
    return response


@bp.get("/openapi.json")
def openapi_document() -> ResponseReturnValue:
    return openapi.document(date.today())


@bp.get("/docs")
def reference_page() -> Response:
    """The contract as a page of its own, rendered from the same document: no script, no CDN."""
    api_root = request.host_url + "api/v1"
    page = render_template(
        "api/reference.html", page=reference.build(openapi.document(date.today()), api_root), api_root=api_root
    )
    return Response(page, mimetype="text/html", headers={"Content-Language": "en"})
