"""The person's lookup form, shared by the patients' site and the console: bounds and checks every
field before anything is hashed.

Every problem is found at once and pinned to its field, as the GOV.UK Design System asks, so
that the page can list them all in its error summary. The date of birth arrives as three boxes
(month, day, year: the US order); a ``date_of_birth=YYYY-MM-DD`` field, as partners' tools post
it, still works when the boxes are absent. The console asks in its own words (``Wording``) and
reads the single box as agents type dates (``PersonForm.whole_date``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, NoReturn

from flask_babel import LazyString
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import Field, StringField
from wtforms.validators import InputRequired, Length, Optional, ValidationError

from portal.identity import (
    EARLIEST_BIRTH_DATE,
    IdentityClaim,
    InvalidIdentifier,
    normalise_last_name,
    normalise_reference,
    normalise_ssn_last4,
    normalise_zip,
    parse_birth_date,
)

Text = str | LazyString  # a message or label: plain (the console's English) or translated (the site's)

FIELD_MESSAGES = {
    "last_name": _l("Enter your last name as it appears on your letter."),
    "zip_code": _l("Enter the 5-digit ZIP code of the address on your letter."),
    "ssn_last4": _l("Enter the last 4 digits of your Social Security number, or the reference code from your letter."),
    "reference": _l("Enter the 24-character reference code printed on your letter."),
    "letter": _l("Enter the reference code printed on your letter to get your activation code."),
    "letter_mismatch": _l(
        "This is not the reference code on the letter we sent you. Check it against your letter, or call us."
    ),
}
TOO_LONG = {
    "last_name": _l("Your last name can be at most 100 characters long. Enter it as it appears on your letter."),
    "ssn_last4": _l("Enter only the last 4 digits of your Social Security number, never the full number."),
}
# The last-four box's length: room for a full number pasted with spaces around its dashes.
SSN_BOX_LENGTH = 20
DATE_PARTS = ("month", "day", "year")
DATE_MESSAGES = {
    "missing": _l("Enter your date of birth."),
    "month": _l("Your date of birth must include a month."),
    "day": _l("Your date of birth must include a day."),
    "year": _l("Your date of birth must include a year."),
    "year_digits": _l("Enter the year as 4 numbers, for example 1980."),
    "real": _l("Your date of birth must be a real date."),
    "future": _l("Your date of birth must be in the past."),
    "too_early": _l("Your date of birth must be in 1900 or later."),
}


def _strip(value: Any) -> str:
    """Surrounding blanks are forgiven; a field left out of the request altogether reads as empty."""
    return value.strip() if isinstance(value, str) else ""


class NeverEchoed(StringField):
    """A field whose value is never written back into a page: a form shown again with errors must
    not carry SSN digits or a letter reference (a shared screen, a cached page, a screenshot)."""

    def _value(self) -> str:
        return ""


class Normalised:
    """A field the domain must accept: its normaliser's refusal becomes the field's own message."""

    def __init__(self, normalise: Callable[[str], object], message: Text) -> None:
        self.normalise = normalise
        self.message = message

    def __call__(self, _form: FlaskForm, field: Field) -> None:
        try:
            self.normalise(field.data)
        except InvalidIdentifier as error:
            raise ValidationError(str(self.message)) from error


def _at_most_four_digits(message: Text) -> Callable[[FlaskForm, Field], None]:
    """Refuses a box holding more than the last four digits (a full SSN, with or without dashes)."""

    def check(_form: FlaskForm, field: Field) -> None:
        if sum(character.isdigit() for character in field.data) > 4:
            raise ValidationError(str(message))

    return check


def _date_part(label: Text, autocomplete: str) -> StringField:
    return StringField(label, filters=[_strip], render_kw={"autocomplete": autocomplete, "inputmode": "numeric"})


def _reference_field(label: Text, presence: Optional | InputRequired, message: Text) -> NeverEchoed:
    """The letter's reference: bounded, and accepted only in a shape ``normalise_reference`` takes."""
    return NeverEchoed(
        label,
        [presence, Length(max=40, message=message), Normalised(normalise_reference, message)],
        filters=[_strip],
        render_kw={"autocomplete": "off", "spellcheck": "false"},
    )


@dataclass(frozen=True)
class Wording:
    """What a lookup form says and to whom: the site speaks to the person ("your last name"), the
    console to the agent ("the caller's last name"). Same fields and checks, other words."""

    labels: Mapping[str, Text]  # last_name, date_of_birth, zip_code, ssn_last4, reference
    fields: Mapping[str, Text]  # keys of FIELD_MESSAGES
    too_long: Mapping[str, Text]  # keys of TOO_LONG
    dates: Mapping[str, Text]  # keys of DATE_MESSAGES

    def last_name_field(self) -> StringField:
        return StringField(
            self.labels["last_name"],
            [
                InputRequired(self.fields["last_name"]),
                Length(max=100, message=self.too_long["last_name"]),
                Normalised(normalise_last_name, self.fields["last_name"]),
            ],
            filters=[_strip],
            render_kw={"autocomplete": "family-name", "spellcheck": "false"},
        )

    def date_of_birth_field(self, hint: str = "") -> StringField:
        """The whole date in one box (its ``description`` is the hint a page may show under the label)."""
        return StringField(self.labels["date_of_birth"], description=hint, filters=[_strip])

    def zip_code_field(self) -> StringField:
        return StringField(
            self.labels["zip_code"],
            [
                InputRequired(self.fields["zip_code"]),
                Length(max=10, message=self.fields["zip_code"]),
                Normalised(normalise_zip, self.fields["zip_code"]),
            ],
            filters=[_strip],
            render_kw={"autocomplete": "postal-code", "inputmode": "numeric"},
        )

    def ssn_last4_field(self) -> NeverEchoed:
        """The box takes whatever is pasted into it (a browser's ``maxlength=4`` cut "123-45-6789" to
        "123-", whose message then missed the point); more than four digits get their own message.

        A full number is refused rather than cut to its last four: the site tells people, on every
        page, that it never asks for the full number, and taking one quietly would teach them that
        typing it here is fine (a look-alike site would thank us). The digits are never written
        back into the page (``NeverEchoed``), kept or logged (requests log their endpoint only).
        """
        return NeverEchoed(
            self.labels["ssn_last4"],
            [
                Optional(),
                Length(max=SSN_BOX_LENGTH, message=self.too_long["ssn_last4"]),
                _at_most_four_digits(self.too_long["ssn_last4"]),
                Normalised(normalise_ssn_last4, self.fields["ssn_last4"]),
            ],
            filters=[_strip],
            render_kw={"autocomplete": "off", "inputmode": "numeric"},
        )

    def reference_field(self) -> NeverEchoed:
        return _reference_field(self.labels["reference"], Optional(), self.fields["reference"])


PATIENT_WORDING = Wording(
    labels={
        "last_name": _l("Last name"),
        "date_of_birth": _l("Date of birth"),
        "zip_code": _l("ZIP code"),
        "ssn_last4": _l("Last 4 digits of your Social Security number"),
        "reference": _l("Or: reference code from your letter"),
    },
    fields=FIELD_MESSAGES,
    too_long=TOO_LONG,
    dates=DATE_MESSAGES,
)


class PersonForm(FlaskForm):
    """Last name, birth date and ZIP, bounded and checked: the part of every lookup."""

    class Meta:
        csrf = False  # CSRFProtect checks every POST before a view runs; the template carries the token

    wording = PATIENT_WORDING
    last_name = PATIENT_WORDING.last_name_field()
    date_of_birth_month = _date_part(_l("Month"), "bday-month")
    date_of_birth_day = _date_part(_l("Day"), "bday-day")
    date_of_birth_year = _date_part(_l("Year"), "bday-year")
    # The whole date as YYYY-MM-DD: what partners' tools post; filled from the boxes otherwise.
    date_of_birth = PATIENT_WORDING.date_of_birth_field()
    zip_code = PATIENT_WORDING.zip_code_field()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.date_parts_in_error: list[str] = []

    def whole_date(self, text: str) -> str:
        """The date typed in one box, as YYYY-MM-DD; here it must already be (partners' tools send it
        so). The console reads the ways agents type a date (``portal.agent.forms``)."""
        return text

    def validate_date_of_birth(self, field: Field) -> None:
        """Three boxes make one date; each way it can be wrong has its own message and boxes to mark."""
        parts = {part: getattr(self, f"date_of_birth_{part}").data for part in DATE_PARTS}
        if any(parts.values()):
            field.data = self._date_from_parts(parts)
        elif not field.data:
            self.date_parts_in_error = list(DATE_PARTS)
            raise ValidationError(str(self.wording.dates["missing"]))
        else:
            field.data = self.whole_date(field.data)
        try:
            born = date.fromisoformat(field.data) if len(field.data) == 10 else None
        except ValueError:
            born = None
        if born is not None and born > date.today():
            self._date_error("future", list(DATE_PARTS))
        if born is not None and born < EARLIEST_BIRTH_DATE:
            self._date_error("too_early", ["year"])
        try:
            parse_birth_date(field.data)
        except InvalidIdentifier as error:
            self.date_parts_in_error = list(DATE_PARTS)
            raise ValidationError(str(self.wording.dates["real"])) from error

    def _date_from_parts(self, parts: dict[str, str]) -> str:
        missing = [part for part in DATE_PARTS if not parts[part]]
        if missing:
            self._date_error(missing[0], missing)
        if not all(parts[part].isascii() and parts[part].isdigit() for part in DATE_PARTS):
            self._date_error("real", [part for part in DATE_PARTS if not parts[part].isdigit()])
        if len(parts["year"]) != 4:
            self._date_error("year_digits", ["year"])
        for part, highest in (("month", 12), ("day", 31)):
            if len(parts[part]) > 2 or not 1 <= int(parts[part]) <= highest:
                self._date_error("real", [part])
        return f"{parts['year']}-{parts['month']:0>2}-{parts['day']:0>2}"

    def _date_error(self, reason: str, parts: list[str]) -> NoReturn:
        self.date_parts_in_error = parts
        raise ValidationError(str(self.wording.dates[reason]))


class LookupForm(PersonForm):
    """The website's lookup (the console's too): the person, plus the SSN's last four or the reference."""

    ssn_last4 = PATIENT_WORDING.ssn_last4_field()
    reference = PATIENT_WORDING.reference_field()

    claim: IdentityClaim | None = None

    def validate(self, extra_validators: Any = None) -> bool:
        """Every field's own checks, then the one rule across two fields: the SSN digits or the reference."""
        valid = super().validate(extra_validators)
        factors = [self.ssn_last4, self.reference]
        if not any(f.errors for f in factors) and bool(self.ssn_last4.data) == bool(self.reference.data):
            self.ssn_last4.errors.append(str(self.wording.fields["ssn_last4"]))
            valid = False
        if not valid:
            return False
        self.claim = IdentityClaim.from_input(
            self.last_name.data, self.date_of_birth.data, self.zip_code.data, self.ssn_last4.data, self.reference.data
        )
        return True

    def problems(self) -> list[tuple[str, str]]:
        """(id of the box to go to, message) for each field in error, in the order of the page."""
        first_box = f"date_of_birth_{(self.date_parts_in_error or DATE_PARTS)[0]}"
        shown = (self.last_name, self.date_of_birth, self.zip_code, self.ssn_last4, self.reference)
        return [(first_box if f is self.date_of_birth else f.id, f.errors[0]) for f in shown if f.errors]


class LetterForm(FlaskForm):
    """The step-up before a claim: the reference printed on the person's letter, which the stolen
    records do not hold (``portal.verification.letter_required``)."""

    class Meta:
        csrf = False  # CSRFProtect checks every POST before a view runs; the template carries the token

    reference = _reference_field(
        _l("Reference code from your letter"), InputRequired(FIELD_MESSAGES["letter"]), FIELD_MESSAGES["reference"]
    )
