"""Console forms: bounded fields, CSRF through CSRFProtect (the templates carry the token).

The caller's details are asked in the agent's words ("the caller's last name"), and the date of
birth is read the way agents type what a caller says: 06/12/1961, 6/12/61 or 1961-06-12.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from flask_wtf import FlaskForm
from wtforms import DateField, PasswordField, SelectField, StringField
from wtforms.validators import EqualTo, InputRequired, Length, Optional, ValidationError

from portal.forms import DATE_PARTS, LookupForm, PersonForm, Wording
from portal.identity import normalise_last_name, normalise_zip, parse_birth_date
from portal.staff import PASSWORD_MAX, ROLES


class StaffForm(FlaskForm):
    class Meta:
        csrf = False  # CSRFProtect checks every POST before a view runs


class LoginForm(StaffForm):
    username = StringField(
        "Username", [InputRequired("Enter your username."), Length(max=64)], render_kw={"autocomplete": "username"}
    )
    password = PasswordField(
        "Password",
        [InputRequired("Enter your password."), Length(max=PASSWORD_MAX)],
        render_kw={"autocomplete": "current-password"},
    )
    code = StringField(
        "6-digit code from your authenticator app",
        [
            InputRequired("Enter the 6-digit code your authenticator app shows now."),
            Length(min=6, max=6, message="The code has 6 digits: type all six as your app shows them."),
        ],
        filters=[lambda value: value.replace(" ", "") if isinstance(value, str) else value],
        render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"},
    )


class PasswordChangeForm(StaffForm):
    """Length and strength are checked by ``portal.staff.check_new_password``, with its own messages."""

    current = PasswordField(
        "Current password (at first sign-in: the one you were given)",
        [InputRequired("Enter your current password."), Length(max=PASSWORD_MAX)],
        render_kw={"autocomplete": "current-password"},
    )
    password = PasswordField(
        "New password",
        [InputRequired("Enter a new password.")],
        render_kw={"autocomplete": "new-password"},
    )
    confirm = PasswordField(
        "New password again",
        [InputRequired("Type the new password again."), EqualTo("password", "The two new passwords differ.")],
        render_kw={"autocomplete": "new-password"},
    )


def audit_day(_form: FlaskForm, field: DateField) -> None:
    """A day an audit trail can hold; past 9999-12-30 the end of the day would not be a date."""
    if field.data is not None and not date(2000, 1, 1) <= field.data <= date(9999, 12, 30):
        raise ValidationError("Enter a date from 2000-01-01 on.")


class AuditFilterForm(FlaskForm):
    """Read from the query string (a GET form: bookmarkable, nothing changes)."""

    class Meta:
        csrf = False

    since = DateField("From (UTC date)", [Optional(), audit_day])
    until = DateField("Until (UTC date, inclusive)", [Optional(), audit_day])
    actor = StringField("Who: a username, or staff:7, api-key:3, cli:name", [Optional(), Length(max=64)])
    action = StringField("Action", [Optional(), Length(max=40)])
    record_ref = StringField("Record reference", [Optional(), Length(max=32)])


class CreateStaffForm(StaffForm):
    username = StringField("Username", [InputRequired("Enter a username for the new account."), Length(max=64)])
    role = SelectField("Role", choices=list(ROLES))


AGENT_WORDING = Wording(
    labels={
        "last_name": "The caller's last name",
        "date_of_birth": "The caller's date of birth",
        "zip_code": "ZIP code the caller's letter was sent to",
        "ssn_last4": "Last 4 digits of the caller's SSN",
        "reference": "Or: the reference code on the caller's letter",
    },
    fields={
        "last_name": "Enter the caller's last name as it is on their letter.",
        "zip_code": "Enter the 5-digit ZIP code the caller's letter was sent to.",
        "ssn_last4": "Enter the last 4 digits of the caller's SSN or the reference code on their letter: one of them.",
        "reference": "Enter the 24-character reference code on the caller's letter.",
    },
    too_long={
        "last_name": "A last name has at most 100 characters.",
        "ssn_last4": "Enter only the last 4 digits of the SSN. Never ask for the full number.",
    },
    dates={
        "missing": "Enter the caller's date of birth, for example 06/12/1961.",
        "month": "The date of birth needs a month.",
        "day": "The date of birth needs a day.",
        "year": "The date of birth needs a year.",
        "year_digits": "Enter the year with 4 digits, for example 1961.",
        "format": "Type the date of birth as month/day/year (06/12/1961 or 6/12/61) or as 1961-06-12.",
        "real": "That date does not exist: check the month and the day with the caller.",
        "future": "That date of birth is in the future: check it with the caller.",
        "too_early": "The date of birth must be in 1900 or later.",
    },
)
DATE_HINT = (
    "As the caller says it, month first: 06/12/1961, 6/12/61 or 1961-06-12. "
    "A two-digit year counts back from today: 61 is 1961, 05 is 2005."
)
SPOKEN_DATE = re.compile(r"([0-9]{1,2})[/.\- ]([0-9]{1,2})[/.\- ]([0-9]{4}|[0-9]{2})")
ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})")


def spoken_date(text: str, today: date) -> str | None:
    """``MM/DD/YYYY``, ``M/D/YY`` (also with dots, dashes or spaces) or ``YYYY-MM-DD`` as YYYY-MM-DD;
    None for anything else. A two-digit year is the latest one not after this year (61 is 1961,
    05 is 2005): a caller gives a birth year, never a future one. Whether the day exists is
    checked after, with its own message."""
    if match := ISO_DATE.fullmatch(text):
        year, month, day = match.groups()
    elif match := SPOKEN_DATE.fullmatch(text):
        month, day, year = match.groups()
        if len(year) == 2:
            century = today.year - today.year % 100
            year = str(century + int(year) if century + int(year) <= today.year else century - 100 + int(year))
    else:
        return None
    return f"{year}-{month:0>2}-{day:0>2}"


class ConsolePerson:
    """The caller's last name, date of birth and ZIP in the agent's words, the date as agents type it.
    Mixed in before a lookup form of ``portal.forms``, whose checks it keeps."""

    wording = AGENT_WORDING
    last_name = AGENT_WORDING.last_name_field()
    date_of_birth = AGENT_WORDING.date_of_birth_field(DATE_HINT)
    zip_code = AGENT_WORDING.zip_code_field()

    def whole_date(self, text: str) -> str:
        read = spoken_date(text, date.today())
        if read is None:
            self._date_error("format", list(DATE_PARTS))  # type: ignore[attr-defined]
        return read


class CallerForm(ConsolePerson, LookupForm):
    """Serving a caller: the person, plus the SSN's last four or the letter's reference."""

    ssn_last4 = AGENT_WORDING.ssn_last4_field()
    reference = AGENT_WORDING.reference_field()


class LocateForm(ConsolePerson, PersonForm):
    """Last name, birth date and ZIP of a caller whose letter (with its reference) never arrived."""

    person: tuple[str, date, str] | None = None  # normalised as the import normalised them

    def validate(self, extra_validators: Any = None) -> bool:
        if not super().validate(extra_validators):
            return False  # each field's own check already refused what cannot be normalised
        self.person = (
            normalise_last_name(self.last_name.data),
            parse_birth_date(self.date_of_birth.data),
            normalise_zip(self.zip_code.data),
        )
        return True
