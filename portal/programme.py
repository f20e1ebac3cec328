"""The notification programme's public facts: who was breached, what happened, whom to call.

They are configuration (``PORTAL_PROGRAMME_FILE``, a TOML file with a ``[programme]`` table);
development and the demo use ``DEMO_PROGRAMME``. Production refuses to start without a file.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path

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
)


def load_programme(path: str | None) -> Programme:
    """Read the programme file; every field of ``Programme`` without a default is required."""
    if not path:
        return DEMO_PROGRAMME
    try:
        table = tomllib.loads(Path(path).read_text(encoding="utf-8"))["programme"]
        return Programme(**table)
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError) as error:
        fields = ", ".join(f.name for f in dataclasses.fields(Programme))
        raise ConfigError(
            f"PORTAL_PROGRAMME_FILE could not be read as a [programme] table with {fields}: {error}"
        ) from error
