"""Shipped defaults that carry a promise, read together with the numbers README.md and SECURITY.md
state: a limit, lifetime, Argon2 parameter, cookie setting or body cap changed in one place and not
the other fails here, so code and documentation cannot drift apart.

The tests of behaviour pass their own limits and cheap Argon2 (tests/conftest.py); only these
check what ships.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from limits import parse_many

from portal import security
from portal.app import create_app
from portal.config import (
    ARGON2_FLOORS,
    DEFAULTS,
    SECRET_NAMES,
    decode_key,
    engine_options,
    write_development_secrets,
)

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECURITY = (ROOT / "SECURITY.md").read_text(encoding="utf-8")

# DEFAULTS that are not PORTAL_* settings an operator is expected to change: Flask's and the
# extensions' own keys. The promises among them (cookies, limits' storage behaviour) are pinned
# below against SECURITY.md; every other default must have a row in README's configuration table.
NOT_IN_THE_TABLE = {
    "SESSION_COOKIE_NAME",
    "SESSION_COOKIE_HTTPONLY",
    "SESSION_COOKIE_SAMESITE",
    "SESSION_COOKIE_SECURE",
    "PERMANENT_SESSION_LIFETIME",
    "WTF_CSRF_TIME_LIMIT",
    "BABEL_DEFAULT_LOCALE",
    "RATELIMIT_STRATEGY",
    "RATELIMIT_HEADERS_ENABLED",
    "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED",
    "RATELIMIT_SWALLOW_ERRORS",
    "RATELIMIT_KEY_PREFIX",
}
# The defaults whose numbers are promises: parsing must find each of them in the table.
PROMISED = {
    "ENV",
    "ARGON2_TIME_COST",
    "ARGON2_MEMORY_COST",
    "ARGON2_PARALLELISM",
    "VERIFICATION_TTL_SECONDS",
    "VERIFY_LIMIT_PERSON",
    "VERIFY_LIMIT_CLIENT",
    "VERIFY_LIMIT_GLOBAL",
    "HASH_CONCURRENCY",
    "HASH_WAIT_SECONDS",
    "MAX_CONTENT_LENGTH",
    "TRUSTED_PROXIES",
    "RATELIMIT_STORAGE_URI",
}


def markdown_table(document: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule left out) of the first table after ``heading``."""
    after = document.split(f"\n{heading}\n", 1)[1]
    rows = []
    for line in after.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return [row for row in rows[1:] if not set("".join(row)) <= set("-: ")]


def documented_defaults() -> dict[str, str | None]:
    """README's configuration table as {setting without PORTAL_: default as written, None for "—"}.

    A row may name several settings ("`PORTAL_ARGON2_TIME_COST` / `_MEMORY_COST`") with as many
    defaults ("`2` / `19456`"); a name starting with "_" continues the first one's prefix.
    """
    documented: dict[str, str | None] = {}
    for names_cell, default_cell, _meaning in markdown_table(README, "## Configuration"):
        names = re.findall(r"`(PORTAL_\w+|_\w+)`", names_cell)
        if not names:  # a variable read by another program (PROMETHEUS_MULTIPROC_DIR)
            continue
        continued = [n for n in names if n.startswith("_")]
        if continued:  # the prefix the first continuation completes: PORTAL_ARGON2 for _MEMORY_COST
            prefix = "_".join(names[0].split("_")[: -continued[0].count("_")])
            names = [prefix + n if n.startswith("_") else n for n in names]
        parts = default_cell.split(" / ") if len(names) > 1 else [default_cell]
        assert len(parts) == len(names), names_cell
        for name, part in zip(names, parts, strict=True):
            value = re.match(r"`([^`]*)`", part)
            documented[name.removeprefix("PORTAL_")] = value.group(1) if value else None
    return documented


def as_configured(written: str | None) -> Any:
    """A default as written in the table, read as PORTAL_* values are: JSON when it parses."""
    if written is None:
        return None
    try:
        return json.loads(written)
    except ValueError:
        return written


def test_readme_configuration_table_states_every_shipped_default() -> None:
    documented = documented_defaults()
    assert documented["ARGON2_MEMORY_COST"] == "19456", "the table's parser lost its way"
    assert PROMISED <= documented.keys()
    shipped = {name: DEFAULTS[name] for name in documented if name in DEFAULTS}
    assert shipped == {name: as_configured(documented[name]) for name in shipped}
    undocumented = DEFAULTS.keys() - documented.keys() - NOT_IN_THE_TABLE
    assert not undocumented, f"add these to README's configuration table: {sorted(undocumented)}"


def test_security_md_failure_limits_are_the_shipped_ones() -> None:
    setting = {
        "person": "VERIFY_LIMIT_PERSON",
        "person, every surface together": "VERIFY_LIMIT_PERSON_SHARED",
        "different people per client network": "VERIFY_LIMIT_CLIENT_PEOPLE",
        "API: different people per partner key": "API_VERIFY_LIMIT_KEY_PEOPLE",
        "verifications per agent": "AGENT_VERIFY_LIMIT_ATTEMPTS",
        "lost-letter look-ups per agent": "AGENT_LOCATE_LIMIT",
        "codes reissued per agent": "AGENT_REISSUE_LIMIT",
        "client address": "VERIFY_LIMIT_CLIENT",
        "client attempts, successes included": "VERIFY_LIMIT_CLIENT_ATTEMPTS",
        "whole portal": "VERIFY_LIMIT_GLOBAL",
        "API: person": "API_VERIFY_LIMIT_PERSON",
        "API: partner key": "API_VERIFY_LIMIT_KEY",
        "API: client address": "API_VERIFY_LIMIT_CLIENT",
        "person, in the console": "AGENT_VERIFY_LIMIT_PERSON",
        "failures per agent": "AGENT_VERIFY_LIMIT_FAILURES",
        "failed staff logins per username": "STAFF_LOGIN_LIMIT_ACCOUNT",
        "failed staff logins per client address": "STAFF_LOGIN_LIMIT_CLIENT",
    }
    tables = ("## Failure limits, and why", "### The call-center console's limits")
    documented = {
        setting[budget.split(" (")[0]]: limit.replace(",", "").replace(" failures", "")
        for heading in tables
        for budget, limit, _why in markdown_table(SECURITY, heading)
    }
    shipped = {
        name: limit
        for name, limit in DEFAULTS.items()
        if re.search(r"_LIMIT(_|$)", name) and not name.startswith("WTF_")
    }
    assert documented == shipped


def test_the_person_limit_keeps_the_promises_made_for_it() -> None:
    """SECURITY.md: back-off after 5 failures, a yearly cap of 100 (NIST SP 800-63B), so a guesser of
    the 10,000 possible last-four values gets through with at most 1 % probability a year."""
    limits = {
        (item.GRANULARITY.name, item.multiples): item.amount
        for name in ("VERIFY_LIMIT_PERSON", "VERIFY_LIMIT_PERSON_SHARED")
        for item in parse_many(DEFAULTS[name])
    }
    assert limits[("minute", 15)] == 5
    assert limits[("year", 1)] == 100
    assert limits[("year", 1)] / 10_000 <= 0.01
    threat = re.search(r"after (\d+) failures the answer is 429.*hard cap of (\d+) failures a year", SECURITY)
    assert threat and (int(threat[1]), int(threat[2])) == (limits[("minute", 15)], limits[("year", 1)])
    lockout = re.search(r"costs the attacker\s+(\d+) requests per (\d+) minutes per victim", SECURITY)
    assert lockout and int(lockout[1]) == limits[("minute", int(lockout[2]))]
    yearly = re.search(r"yearly\s+cap takes (\d+) failures", SECURITY)
    assert yearly and int(yearly[1]) == limits[("year", 1)]


@pytest.mark.parametrize(
    "document, pattern",
    [
        (README, r"Argon2id \(OWASP's floor by default:\s+m=(\d+) MiB, t=(\d+), p=(\d+)\)"),
        (SECURITY, r"each guess still costs one Argon2id \(m=(\d+) MiB, t=(\d+)\)"),
        (README, r"at the default\s+m=(\d+) MiB, t=(\d+) on the reference machine"),
    ],
    ids=["readme-verification", "security-threat-model", "readme-capacity"],
)
def test_documented_argon2_parameters_are_the_shipped_ones(document: str, pattern: str) -> None:
    found = re.search(pattern, document)
    assert found, pattern
    shipped = (DEFAULTS["ARGON2_MEMORY_COST"] // 1024, DEFAULTS["ARGON2_TIME_COST"], DEFAULTS["ARGON2_PARALLELISM"])
    assert tuple(int(n) for n in found.groups()) == shipped[: len(found.groups())]
    # And the shipped point is on OWASP's floor, so production accepts it.
    assert DEFAULTS["ARGON2_MEMORY_COST"] >= ARGON2_FLOORS[DEFAULTS["ARGON2_TIME_COST"]]


def test_the_verification_and_its_cookie_last_the_documented_fifteen_minutes() -> None:
    """README: the server keeps the token "valid for 15 minutes"; SECURITY.md: session cookies "last
    15 minutes". The page that says a session ended names the same number (tests/test_public.py)."""
    readme = re.search(r"valid for (\d+) minutes", README)
    cookies = re.search(r"`SameSite=Lax` and last (\d+) minutes", SECURITY)
    assert readme and cookies
    assert DEFAULTS["VERIFICATION_TTL_SECONDS"] == int(readme[1]) * 60 == int(cookies[1]) * 60 == 15 * 60
    assert DEFAULTS["PERMANENT_SESSION_LIFETIME"] == DEFAULTS["VERIFICATION_TTL_SECONDS"]


def test_session_cookies_are_what_security_md_says() -> None:
    said = re.search(r"Session cookies\s+are `(__Host-)`, `(Secure)`, `(HttpOnly)`, `SameSite=(\w+)`", SECURITY)
    assert said
    assert DEFAULTS["SESSION_COOKIE_NAME"].startswith(said[1])
    assert DEFAULTS["SESSION_COOKIE_SECURE"] is True and DEFAULTS["SESSION_COOKIE_HTTPONLY"] is True
    assert DEFAULTS["SESSION_COOKIE_SAMESITE"] == said[4]


def test_request_bodies_and_hsts_are_what_security_md_says() -> None:
    body = re.search(r"bodies are capped at (\d+) KiB", SECURITY)
    assert body and DEFAULTS["MAX_CONTENT_LENGTH"] == int(body[1]) * 1024
    hsts = re.search(r"HSTS \((one) year, (subdomains)\)", SECURITY)
    assert hsts and security.HSTS == f"max-age={365 * 24 * 3600}; includeSubDomains"


def test_no_rate_limit_counters_and_a_shared_store_in_production() -> None:
    """SECURITY.md: no answer carries X-RateLimit-* counters, and no budget is counted per process."""
    assert "No answer carries `X-RateLimit-*` counters" in SECURITY
    assert DEFAULTS["RATELIMIT_HEADERS_ENABLED"] is False
    # A refused verification is told when to retry without any count (tests/test_throttle.py).
    assert DEFAULTS["RATELIMIT_IN_MEMORY_FALLBACK_ENABLED"] is False, "per-process counts multiply every budget"
    assert "production refuses `memory://`" in README


def test_development_secrets_are_fresh_private_and_never_overwritten(tmp_path: Path) -> None:
    """``./dev.sh demo`` writes instance/config.py: readable by its owner only, different keys
    of at least 32 random bytes, and a second run keeps the first run's keys (and the data they hash)."""
    path = write_development_secrets(str(tmp_path / "instance"))
    assert path == tmp_path / "instance" / "config.py"  # where load_config looks for it
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    settings: dict[str, Any] = {}
    exec(path.read_text(encoding="utf-8"), settings)  # the file this test just wrote
    assert settings["ENV"] == "development"
    keys = [settings[name] for name in SECRET_NAMES]
    assert len(set(keys)) == len(SECRET_NAMES) and all(
        len(decode_key(key, name)) >= 32 for key, name in zip(keys, SECRET_NAMES, strict=True)
    )
    first = path.read_text(encoding="utf-8")
    assert write_development_secrets(str(tmp_path / "instance")) == path
    assert path.read_text(encoding="utf-8") == first
    # An instance folder that exists already (Flask makes one), or one not made yet, deep down.
    (tmp_path / "made").mkdir()
    assert write_development_secrets(str(tmp_path / "made")).is_file()
    assert write_development_secrets(str(tmp_path / "srv" / "portal" / "instance")).is_file()


@pytest.mark.parametrize("url", ["sqlite:///portal.sqlite3", "postgresql+psycopg://portal@db.internal/portal"])
def test_no_engine_puts_bound_values_in_errors_or_logs(url: str) -> None:
    """SECURITY.md: error logs never hold a bound SQL parameter, which could quote an identifier."""
    assert "never the exception message or a bound SQL parameter\n(`hide_parameters`)" in SECURITY
    assert engine_options(url)["hide_parameters"] is True


def test_the_console_is_off_unless_a_server_turns_it_on(tmp_path: Path) -> None:
    """Issue: it was on, open to every address, by default. Now a server serves /agent/ only with
    PORTAL_AGENT_VIEW=true (the demo sets it for itself)."""
    config = make_config(f"sqlite:///{tmp_path / 'portal.sqlite3'}")
    del config["AGENT_VIEW"]  # the tests' own default turns it on
    client = create_app(config).test_client()
    assert [client.get(path).status_code for path in ("/agent/login", "/agent/", "/agent/dashboard")] == [404] * 3
    assert DEFAULTS["AGENT_VIEW"] is False
