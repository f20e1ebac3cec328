"""Console forms: bounded fields, CSRF through CSRFProtect (the templates carry the token)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import EqualTo, InputRequired, Length

from portal.staff import PASSWORD_MAX, PASSWORD_MIN


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
