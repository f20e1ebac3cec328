"""The notification programme's public facts: who was breached, what happened, whom to call.

They are configuration (``PORTAL_PROGRAMME_FILE``, a TOML file with a ``[programme]`` table);
development and the demo use ``DEMO_PROGRAMME``. Production refuses to start without a file.
The free text may be given again per language in sub-tables (``[programme.es]``); what a
language leaves out is shown in the default language, inside a page in the visitor's language.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from portal import exposure
from portal.config import ConfigError


@dataclass(frozen=True)
class Programme:
    organisation: str
    incident_summary: str
    incident_discovered: date
    notice_date: date
    call_center_phone: str
    call_center_hours: str
    provider_name: str
    enrolment_url: str
    enrol_by: date
    coverage_months: int = 24
    mailing_address: str = ""
    # Whether claiming a code needs the reference printed on the letter too (the stolen records
    # hold every other answer): "off", "on-alert" (while a success-side alert is active) or "always".
    claim_step_up: str = "on-alert"
    # Days a replacement letter takes to reach the caller once requested: what the agent tells them.
    letter_delivery_days: int = 10
    # The kinds of data the stolen copy held (exposure.FIELDS names), as "what happened" says: each
    # person's page lists the ones not exposed about them, and the demo's people draw from them.
    # Unset, a page says only whether the Social Security number was exposed.
    exposed_fields: tuple[str, ...] = ()
    # language code -> {free-text field -> that text in the language}
    translations: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def in_language(self, code: str) -> Programme:
        """These facts with the free text in ``code`` where the file gives it."""
        local = self.translations.get(code)
        return dataclasses.replace(self, **local) if local else self

    def complete_in(self, code: str) -> bool:
        """Whether the file gives every free text again in ``code``: an answer that must not mix
        languages (the partner API's) is given in another language than the file's own only then.
        The organisation's name may stay as it is: a name is the same in every language."""
        local = self.translations.get(code, {})
        return all(name in local for name in TRANSLATABLE if name != "organisation" and getattr(self, name))


STEP_UP_CHOICES = ("off", "on-alert", "always")

# Text a person wrote for people to read, and the organisation's name where it carries words (the
# demo's "(demonstration)"); numbers, dates and addresses of sites stay as they are.
TRANSLATABLE = ("organisation", "incident_summary", "call_center_hours", "mailing_address")
# The file's keys are spelt as the partner API spells its fields (US English); files written with the
# British spellings of earlier versions still load.
FILE_KEYS = {"organization": "organisation", "enrollment_url": "enrolment_url", "enroll_by": "enrol_by"}
SPELT = {attribute: key for key, attribute in FILE_KEYS.items()}


DEMO_PROGRAMME = Programme(
    organisation="Northwind Health Records, Inc. (demonstration)",
    incident_summary=(
        "On 14 September 2026 an unauthorised party used a stolen vendor credential to copy a patient "
        "registration database. The copy contained names, dates of birth, postal addresses, phone numbers "
        "and, for most patients, Social Security numbers. We closed the access on 16 September, reported the "
        "incident to law enforcement and are notifying every person whose information was in the copy."
    ),
    incident_discovered=date(2026, 9, 16),
    notice_date=date(2026, 11, 23),
    call_center_phone="1-800-555-0142",
    call_center_hours="Monday to Friday 8 a.m. to 8 p.m., Saturday 9 a.m. to 1 p.m. (Eastern Time)",
    provider_name="SafeWatch Identity Protection",
    enrolment_url="https://enroll.example.com/northwind",
    enrol_by=date(2027, 6, 30),
    mailing_address="Northwind Health Records, Privacy Office, P.O. Box 0000, Springfield, ST 00000",
    exposed_fields=("name", "date_of_birth", "address", "phone", "ssn"),
    translations={
        "es": {
            "organisation": "Northwind Health Records, Inc. (demostración)",
            "incident_summary": (
                "El 14 de septiembre de 2026, una persona no autorizada usó las credenciales de acceso robadas de"
                " un proveedor para copiar una base de datos de registro de pacientes. La copia contenía nombres,"
                " fechas de nacimiento, direcciones postales, números de teléfono y, para la mayoría de los "
                "pacientes, números de Seguro Social. Cerramos ese acceso el 16 de septiembre, informamos a las "
                "autoridades y estamos avisando a cada persona cuyos datos estaban en la copia."
            ),
            "call_center_hours": (
                "de lunes a viernes de 8 a.m. a 8 p.m. y los sábados de 9 a.m. a 1 p.m. (hora del Este)"
            ),
            "mailing_address": (
                "Northwind Health Records, Oficina de Privacidad, P.O. Box 0000, Springfield, ST 00000"
            ),
        },
        "fr": {
            "organisation": "Northwind Health Records, Inc. (démonstration)",
            "incident_summary": (
                "Le 14 septembre 2026, une personne non autorisée a utilisé l'identifiant volé d'un prestataire "
                "pour copier une base de données d'inscription des patients. Cette copie contenait des noms, des "
                "dates de naissance, des adresses postales, des numéros de téléphone et, pour la plupart des "
                "patients, des numéros de sécurité sociale américains (SSN). Nous avons coupé cet accès le "
                "16 septembre, prévenu les forces de l'ordre, et nous informons chaque personne dont les données "
                "figuraient dans la copie."
            ),
            "call_center_hours": (
                "du lundi au vendredi de 8 h à 20 h et le samedi de 9 h à 13 h (heure de l'Est des États-Unis)"
            ),
            "mailing_address": (
                "Northwind Health Records, Bureau de la confidentialité, P.O. Box 0000, Springfield, ST 00000"
            ),
        },
    },
)


def load_programme(path: str | None) -> Programme:
    """Read the programme file; every field of ``Programme`` without a default is required."""
    if not path:
        return DEMO_PROGRAMME
    try:
        table = tomllib.loads(Path(path).read_text(encoding="utf-8"))["programme"]
        translations = _translations(table)
        programme = Programme(**{FILE_KEYS.get(name, name): value for name, value in table.items()},
                              translations=translations)  # fmt: skip
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError) as error:
        fields = ", ".join(SPELT.get(f.name, f.name) for f in dataclasses.fields(Programme) if f.name != "translations")
        raise ConfigError(
            f"PORTAL_PROGRAMME_FILE could not be read as a [programme] table with {fields}: {error}"
        ) from error
    if programme.claim_step_up not in STEP_UP_CHOICES:
        raise ConfigError(f"PORTAL_PROGRAMME_FILE: claim_step_up must be one of {', '.join(STEP_UP_CHOICES)}")
    try:
        exposure.parse_exposed_fields(";".join(programme.exposed_fields) or "name")
    except (TypeError, ValueError) as error:
        raise ConfigError(f"PORTAL_PROGRAMME_FILE: exposed_fields: {error}") from None
    programme = dataclasses.replace(programme, exposed_fields=tuple(programme.exposed_fields))
    days = programme.letter_delivery_days
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 90:
        raise ConfigError("PORTAL_PROGRAMME_FILE: letter_delivery_days must be a whole number of days from 1 to 90")
    return programme


def _translations(table: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Take the per-language sub-tables out of ``table``; each may hold only the free-text fields."""
    translations = {
        code: {FILE_KEYS.get(name, name): text for name, text in table.pop(code).items()}
        for code in [k for k, v in table.items() if isinstance(v, dict)]
    }
    for code, texts in translations.items():
        extra = set(texts) - set(TRANSLATABLE)
        if extra or not all(isinstance(text, str) for text in texts.values()):
            names = ", ".join(SPELT.get(name, name) for name in TRANSLATABLE)
            raise ConfigError(f"PORTAL_PROGRAMME_FILE: [programme.{code}] may give only these texts: {names}")
    return translations
