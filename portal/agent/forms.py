"""Console forms: bounded fields, CSRF through CSRFProtect (the templates carry the token)."""

from __future__ import annotations

from datetime import date
from typing import Any

from flask_wtf import FlaskForm
from wtforms import DateField, PasswordField, SelectField, StringField
from wtforms.validators import EqualTo, InputRequired, Length, Optional, ValidationError

from portal.forms import PersonForm
from portal.identity import normalise_last_name, normalise_zip, parse_birth_date
from portal.staff import PASSWORD_MAX, PASSWORD_MIN, ROLES


class StaffForm(FlaskForm):
    class Meta:
        csrf = False  # CSRFProtect checks every POST before a view runs


class LoginForm(StaffForm):
    username = StringField("Username", [InputRequired(), Length(max=64)], render_kw={"autocomplete": "username"})
    password = PasswordField(
        "Password", [InputRequired(), Length(max=PASSWORD_MAX)], render_kw={"autocomplete": "current-password"}
    )
    code = StringField(
        "6-digit code from your authenticator",
        [InputRequired(), Length(min=6, max=6)],
        render_kw={"autocomplete": "one-time-code", "inputmode": "numeric", "size": 6},
    )


class PasswordChangeForm(StaffForm):
    password = PasswordField(
        f"New password ({PASSWORD_MIN} characters or more)",
        [InputRequired(), Length(min=PASSWORD_MIN, max=PASSWORD_MAX)],
        render_kw={"autocomplete": "new-password"},
    )
    confirm = PasswordField(
        "New password again",
        [InputRequired(), EqualTo("password", "The two passwords differ.")],
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
    actor = StringField("Actor (staff:7, api-key:3, public:…)", [Optional(), Length(max=64)])
    action = StringField("Action", [Optional(), Length(max=40)])
    record_ref = StringField("Record reference", [Optional(), Length(max=32)])


class CreateStaffForm(StaffForm):
    username = StringField("Username", [InputRequired(), Length(max=64)])
    role = SelectField("Role", choices=list(ROLES))


class LocateForm(PersonForm):
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
