"""The patient's lookup form: bounds every field before anything is hashed."""

from __future__ import annotations

from typing import Any

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import InputRequired, Length, Optional
from wtforms.widgets import DateInput

from portal.identity import IdentityClaim, InvalidIdentifier

FIELD_MESSAGES = {
    "last_name": _l("Enter your last name as it appears on your letter."),
    "date_of_birth": _l("Enter your date of birth as YYYY-MM-DD, for example 1980-04-23."),
    "zip_code": _l("Enter the 5-digit ZIP code of the address on your letter."),
    "ssn_last4": _l("Enter the last 4 digits of your Social Security number, or the reference code from your letter."),
    "reference": _l("Enter the 24-character reference code printed on your letter."),
}
TOO_LONG = {
    "last_name": _l("Your last name can be at most 100 characters long. Enter it as it appears on your letter."),
    "ssn_last4": _l("Enter only the last 4 digits of your Social Security number, never the full number."),
}


def _strip(value: Any) -> str:
    """Surrounding blanks are forgiven; a field left out of the request altogether reads as empty."""
    return value.strip() if isinstance(value, str) else ""


class NeverEchoed(StringField):
    """A field whose value is never written back into a page: a form shown again with errors must
    not carry SSN digits or a letter reference (a shared screen, a cached page, a screenshot)."""

    def _value(self) -> str:
        return ""


class LookupForm(FlaskForm):
    class Meta:
        csrf = False  # CSRFProtect checks every POST before a view runs; the template carries the token

    # Required and length failures name the field too; surrounding blanks (pasted text) are forgiven.
    last_name = StringField(
        _l("Last name"),
        [InputRequired(FIELD_MESSAGES["last_name"]), Length(max=100, message=TOO_LONG["last_name"])],
        filters=[_strip],
        render_kw={"autocomplete": "family-name"},
    )
    date_of_birth = StringField(
        _l("Date of birth"),
        [InputRequired(FIELD_MESSAGES["date_of_birth"]), Length(max=10, message=FIELD_MESSAGES["date_of_birth"])],
        filters=[_strip],
        widget=DateInput(),
        render_kw={"autocomplete": "bday"},
    )
    zip_code = StringField(
        _l("ZIP code"),
        [InputRequired(FIELD_MESSAGES["zip_code"]), Length(max=10, message=FIELD_MESSAGES["zip_code"])],
        filters=[_strip],
        render_kw={"autocomplete": "postal-code", "inputmode": "numeric", "size": 10},
    )
    ssn_last4 = NeverEchoed(
        _l("Last 4 digits of your Social Security number"),
        [Optional(), Length(max=4, message=TOO_LONG["ssn_last4"])],
        filters=[_strip],
        render_kw={"autocomplete": "off", "inputmode": "numeric", "size": 4},
    )
    reference = NeverEchoed(
        _l("Or: reference code from your letter"),
        [Optional(), Length(max=40, message=FIELD_MESSAGES["reference"])],
        filters=[_strip],
        render_kw={"autocomplete": "off", "size": 30},
    )

    claim: IdentityClaim | None = None

    def validate(self, extra_validators: Any = None) -> bool:
        """Field bounds first, then the domain's normalisation; each failure is pinned to its field."""
        if not super().validate(extra_validators):
            return False
        if bool(self.ssn_last4.data.strip()) == bool(self.reference.data.strip()):
            self.ssn_last4.errors.append(FIELD_MESSAGES["ssn_last4"])
            return False
        try:
            self.claim = IdentityClaim.from_input(
                self.last_name.data,
                self.date_of_birth.data,
                self.zip_code.data,
                self.ssn_last4.data,
                self.reference.data,
            )
        except InvalidIdentifier as error:
            getattr(self, error.field).errors.append(FIELD_MESSAGES[error.field])
            return False
        return True
