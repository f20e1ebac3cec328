"""Settings: defaults, then ``instance/config.py``, then ``PORTAL_*`` environment variables.

Production (the default ``ENV``) refuses to start without its secrets or with weak hashing
parameters: a portal that silently ran on a made-up key would hash a million people with it.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from flask import Flask
from limits import parse_many

RELAXED_ENVS = frozenset({"development", "testing"})
PACKAGE_DIR = Path(__file__).resolve().parent


def asset_dir(name: str) -> str:
    """``templates``/``static``/``migrations``: top level in a checkout, inside the package once installed."""
    in_checkout = PACKAGE_DIR.parent / name
    return str(in_checkout if in_checkout.is_dir() else PACKAGE_DIR / name)


DEFAULTS: dict[str, Any] = {
    "ENV": "production",
    # Relative SQLite paths are resolved inside the instance folder.
    "DATABASE_URL": "sqlite:///portal.sqlite3",
    "SECRET_KEY": None,
    "IDENTIFIER_KEY": None,
    "IDENTIFIER_KEY_VERSION": 1,
    "IDENTIFIER_KEY_PREVIOUS": None,
    "CODE_KEY": None,
    "CODE_KEY_VERSION": 1,
    "CODE_KEY_PREVIOUS": None,
    # Keys the audit trail's hash chain; only `portal audit verify` and the app need it.
    "AUDIT_KEY": None,
    # OWASP's Argon2id floor (m=19 MiB, t=2, p=1); stored with each hash scheme so it can rise later.
    "ARGON2_TIME_COST": 2,
    "ARGON2_MEMORY_COST": 19456,
    "ARGON2_PARALLELISM": 1,
    # Lookups hashing at once per process, and how long a lookup waits for a turn before a 503.
    # One: with a worker per core, no more hashes run than there are cores. Two a worker let
    # four 19 MiB hashes share two cores and their caches: about 6 % fewer lookups a second.
    "HASH_CONCURRENCY": 1,
    "HASH_WAIT_SECONDS": 10,
    "VERIFICATION_TTL_SECONDS": 15 * 60,
    "PROGRAMME_FILE": None,
    # Reverse proxies in front (hops), and the networks their own addresses are in: forwarded
    # headers are believed only from those (nginx's set_real_ip_from), never from a client.
    "TRUSTED_PROXIES": 0,
    "TRUSTED_PROXY_NETWORKS": [],
    "MAX_CONTENT_LENGTH": 16 * 1024,
    "SESSION_COOKIE_NAME": "__Host-portal",
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "SESSION_COOKIE_SECURE": True,
    "PERMANENT_SESSION_LIFETIME": 15 * 60,
    "WTF_CSRF_TIME_LIMIT": 60 * 60,
    "BABEL_DEFAULT_LOCALE": "en",
    # The languages offered (each needs a catalogue in portal/translations); the default is among them.
    "LANGUAGES": ["en", "es", "fr"],
    # Host names the portal answers to (Flask refuses others with 400); required in production.
    "TRUSTED_HOSTS": None,
    # Failed verifications (see portal/throttle.py and SECURITY.md for why these numbers). A
    # person's short window is each surface's own; the day and the year are shared by the site,
    # the API and the console: 100 a year is 1 % of the 10,000 possible last four SSN digits.
    "VERIFY_LIMIT_PERSON": "5 per 15 minutes",
    "VERIFY_LIMIT_PERSON_SHARED": "20 per day; 100 per year",
    "VERIFY_LIMIT_CLIENT": "30 per hour; 200 per day",
    # Every attempt, successes included, per client address: one address verifying its own
    # identity in a loop must not crowd out everyone else's hashing.
    "VERIFY_LIMIT_CLIENT_ATTEMPTS": "20 per minute; 200 per hour",
    "VERIFY_LIMIT_GLOBAL": "6000 per minute",
    # Different people verified from one network (IPv4 /24, IPv6 /64) a day, successes only: a
    # household verifies a handful; whoever holds the stolen records verifies everyone they can.
    # Eight leaves room for a family, a care home's office or a few neighbours behind one carrier
    # NAT address; the refused are sent to the call center (SECURITY.md).
    "VERIFY_LIMIT_CLIENT_PEOPLE": "8 per day",
    # The partner API's own failure budgets (the global one above is shared). A partner's traffic
    # is many people from one address with one key, so those two budgets are wider than a
    # browser's; the per-person one is the site's, counted separately for the API surface.
    "API_VERIFY_LIMIT_PERSON": "5 per 15 minutes",
    "API_VERIFY_LIMIT_KEY": "300 per hour; 2000 per day",
    "API_VERIFY_LIMIT_CLIENT": "300 per hour; 2000 per day",
    # Different people one partner key verified a day (successes only): a partner serves many.
    "API_VERIFY_LIMIT_KEY_PEOPLE": "2000 per day",
    # A new key's request rate unless `portal create-api-key --rate` says otherwise.
    "API_KEY_RATE": "120/minute",
    # Partner bodies are a few hundred bytes.
    "API_MAX_CONTENT_LENGTH": 4096,
    # memory:// is per process; several workers or servers share redis://host:6379/0. Production
    # refuses memory:// unless SINGLE_PROCESS says only one process serves (see check_limit_store).
    "RATELIMIT_STORAGE_URI": "memory://",
    "SINGLE_PROCESS": False,
    # Gunicorn's worker count, exported by portal/gunicorn_config.py to the app (None: not known).
    "WORKERS": None,
    # Request threads per process (gunicorn's, which portal/gunicorn_config.py passes on): the
    # database pool holds two connections for each (see engine_options).
    "THREADS": 4,
    # Verification budgets are fixed-window counters (portal/throttle.py): a success's
    # reservation can be given back atomically. This applies to Flask-Limiter's own limits.
    "RATELIMIT_STRATEGY": "fixed-window",
    # No X-RateLimit-* headers: the per-person bucket's count would tell anyone typing a name and
    # birth date how often others failed with them. A refusal still says when to retry.
    "RATELIMIT_HEADERS_ENABLED": False,
    # Redis down: verifications are refused (portal/throttle.py) rather than counted in each
    # process's memory, which would multiply every budget by the number of processes.
    "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": False,
    "RATELIMIT_SWALLOW_ERRORS": True,
    "RATELIMIT_KEY_PREFIX": "portal",
    # The call-center console at /agent/ (see SECURITY.md): off (every /agent/ path a 404) unless a
    # console server turns it on; the public servers never do.
    "AGENT_VIEW": False,
    # CIDRs the console answers (client address as the trusted proxies report it); empty: any.
    "AGENT_NETWORKS": [],
    "STAFF_IDLE_TIMEOUT_SECONDS": 15 * 60,
    "STAFF_SESSION_MAX_SECONDS": 10 * 60 * 60,
    # Failed staff logins, per account and per client address.
    "STAFF_LOGIN_LIMIT_ACCOUNT": "5 per 15 minutes; 20 per day",
    "STAFF_LOGIN_LIMIT_CLIENT": "30 per hour; 100 per day",
    # Console verifications: the person's short window on the console (day and year shared with
    # the site and the API), failures per agent, and every verification per agent: an agent
    # serves about ten calls an hour, so forty is a busy hour and more is not one person's calls.
    "AGENT_VERIFY_LIMIT_PERSON": "5 per hour",
    "AGENT_VERIFY_LIMIT_FAILURES": "10 per hour; 40 per day",
    "AGENT_VERIFY_LIMIT_ATTEMPTS": "40 per hour; 200 per day",
    # Lost-letter look-ups per agent, found or not: each one tells whether a person is on the list.
    "AGENT_LOCATE_LIMIT": "10 per hour; 30 per day",
    # A letter requested again within this many days is not sent again (it is in the mail).
    "LETTER_REISSUE_DAYS": 14,
    # Codes an agent revokes and reissues for callers who say someone else used theirs (every one counts).
    "AGENT_REISSUE_LIMIT": "3 per hour; 10 per day",
    # The supervisor dashboard shows a warning when fewer codes than this are left in the pool.
    "POOL_LOW_THRESHOLD": 10000,
    # Hourly counts and the audit trail are kept this long after the purge's cut-off date:
    # six years (with their leap days), as HIPAA keeps documentation.
    "AUDIT_RETENTION_DAYS": 2192,
    # /readyz and /metrics answer only requests for these host names or from these networks
    # (the client address as PORTAL_TRUSTED_PROXIES resolves it); everyone else gets a 404.
    "OPS_HOSTS": [],
    "OPS_NETWORKS": ["127.0.0.0/8", "::1/128"],
    # Attack detection (portal/alerts.py): failed or refused verifications that raise an alert.
    # Site-wide: this many times the last week's usual rate, and at least the floor.
    "ALERT_FAILURE_FACTOR": 10,
    "ALERT_FAILURE_FLOOR": "60 per minute",
    "ALERT_PERSON_LIMITS": "20 per minute",  # refusals by the per-person limit (people being guessed at)
    "ALERT_CLIENT_FAILURES": "20 per minute",  # from one client address (/64)
    "ALERT_PARTNER_FAILURES": "50 per minute",  # with one partner API key
    "ALERT_AGENT_FAILURES": "5 per 10 minutes",  # by one call-center agent
    # Successes: someone who holds the stolen records never fails (SECURITY.md). Any of these
    # also starts the step-up (the letter's reference for claims) for ALERT_STEP_UP_SECONDS.
    # Distinct people verified on the public site from one /24 or /64: a household is 4, an office
    # a dozen; a carrier's NAT spreads its subscribers over more than one /24.
    "ALERT_CLIENT_PEOPLE": "20 per hour",
    # Codes claimed on the public site from one /24 or /64: the same people, a few asking twice.
    "ALERT_CLIENT_CLAIMS": "20 per hour",
    # Codes claimed with one partner key: its failure budget (API_VERIFY_LIMIT_KEY, 300 an hour)
    # at the usual one failure for every two people serves about 600 people an hour.
    "ALERT_PARTNER_CLAIMS": "600 per hour",
    # Distinct callers verified by one agent: a real call takes minutes (a day is about 60 calls
    # in 8 hours, 7 an hour); 20 in an hour is a caller every three minutes without a pause.
    "ALERT_AGENT_PEOPLE": "20 per hour",
    # Codes claimed on the whole site: this many times the last week's usual rate, and at least
    # the floor. With no history (the day the letters go out) the floor alone counts: above the
    # capacity plan's busiest hour (docs/deploy.md: about 21,000 people, 3,500 per 10 minutes).
    "ALERT_CLAIM_FACTOR": 10,
    "ALERT_CLAIM_FLOOR": "5000 per 10 minutes",
    # The share of verifications that succeed on the whole site, once at least the minimum have
    # succeeded in the window: people mistype (about one failure for every two people, a share near
    # 0.67; a busy honest day 0.85); stolen records never do. The minimum is half of 300: 300
    # successes in 5 minutes put at least 150 in one 10-minute window however the windows cut
    # them. Lower, a few minutes without a typo early in a window are chance (a replayed honest
    # day passes 0.95 after 100 successes twice a day).
    "ALERT_SUCCESS_SHARE": 0.95,
    "ALERT_SUCCESS_SHARE_MINIMUM": "150 per 10 minutes",
    # How long claims need the letter's reference after a success-side alert (at most twice this).
    "ALERT_STEP_UP_SECONDS": 3600,
}

# OWASP Argon2id minimums (time cost -> memory in KiB) with parallelism 1.
ARGON2_FLOORS = {1: 47104, 2: 19456, 3: 12288, 4: 9216, 5: 7168}

SECRET_NAMES = ("SECRET_KEY", "IDENTIFIER_KEY", "CODE_KEY", "AUDIT_KEY")
LIMIT_SETTINGS = (
    "VERIFY_LIMIT_PERSON", "VERIFY_LIMIT_PERSON_SHARED", "VERIFY_LIMIT_CLIENT", "VERIFY_LIMIT_CLIENT_ATTEMPTS",
    "VERIFY_LIMIT_CLIENT_PEOPLE", "VERIFY_LIMIT_GLOBAL", "API_VERIFY_LIMIT_PERSON", "API_VERIFY_LIMIT_KEY",
    "API_VERIFY_LIMIT_CLIENT", "API_VERIFY_LIMIT_KEY_PEOPLE", "API_KEY_RATE", "STAFF_LOGIN_LIMIT_ACCOUNT",
    "STAFF_LOGIN_LIMIT_CLIENT", "AGENT_VERIFY_LIMIT_PERSON", "AGENT_VERIFY_LIMIT_FAILURES",
    "AGENT_VERIFY_LIMIT_ATTEMPTS", "AGENT_LOCATE_LIMIT", "AGENT_REISSUE_LIMIT",
)  # fmt: skip


class ConfigError(RuntimeError):
    """The configuration is unsafe or incomplete; the message says what to set."""


def load_config(app: Flask, overrides: Mapping[str, Any] | None) -> None:
    """Fill ``app.config`` in order of precedence and refuse an unsafe result."""
    app.config.from_mapping(DEFAULTS)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("PORTAL")
    if overrides:
        app.config.from_mapping(overrides)
    config = app.config
    if config["ENV"] in RELAXED_ENVS:
        # Plain HTTP on 127.0.0.1 during development: a __Host- cookie needs Secure.
        config["SESSION_COOKIE_SECURE"] = False
        config["SESSION_COOKIE_NAME"] = "portal"
    check_config(config)
    config["SQLALCHEMY_ENGINES"] = {"default": engine_options(config["DATABASE_URL"], int(config["THREADS"]))}


def engine_options(url: str, threads: int = DEFAULTS["THREADS"]) -> dict[str, Any]:
    """Engine settings per backend: pre-ping so a restarted PostgreSQL is reconnected transparently.

    Two pooled connections for each request thread: a request holds its session's connection (through
    a lookup's wait for a hashing slot) while an event's audit row commits on a second one of its own
    (``portal/events.py``). With fewer, threads holding one wait for each other's second until the
    pool gives up: the 500s of more threads than connections."""
    # hide_parameters: error messages and logs never carry bound values.
    if url.startswith("sqlite"):
        return {"url": url, "hide_parameters": True, "connect_args": {"timeout": 15}}
    return {
        "url": url,
        "hide_parameters": True,
        "pool_pre_ping": True,
        # Never below SQLAlchemy's own 5 + 5: a CLI command or a test runs threads of its own too.
        "pool_size": max(threads, 5),
        "max_overflow": max(threads, 5),
        "pool_timeout": 10,
    }


def check_config(config: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the first unsafe setting (outside development and testing)."""
    relaxed = config["ENV"] in RELAXED_ENVS
    for name in SECRET_NAMES:
        if not config.get(name):
            raise ConfigError(f"PORTAL_{name} is not set; the portal will not start without it.")
    for name in ("IDENTIFIER_KEY", "CODE_KEY", "AUDIT_KEY", "IDENTIFIER_KEY_PREVIOUS", "CODE_KEY_PREVIOUS"):
        if config.get(name):
            decode_key(config[name], f"PORTAL_{name}")
    for name in LIMIT_SETTINGS:
        # A limit that does not parse would be no limit at all: refuse to start instead.
        try:
            parse_many(str(config[name]))
        except ValueError:
            raise ConfigError(f"PORTAL_{name} is not a limit such as '5 per 15 minutes; 100 per year'.") from None
    if len({str(config[name]) for name in SECRET_NAMES}) != len(SECRET_NAMES):
        raise ConfigError(
            "PORTAL_SECRET_KEY, PORTAL_IDENTIFIER_KEY, PORTAL_CODE_KEY and PORTAL_AUDIT_KEY must all differ."
        )
    if not isinstance(config["THREADS"], int) or config["THREADS"] < 1:
        raise ConfigError("PORTAL_THREADS must be a whole number of request threads, at least 1.")
    for name in ("AGENT_NETWORKS", "TRUSTED_PROXY_NETWORKS"):
        check_networks(config, name)
    proxies = config["TRUSTED_PROXIES"]
    if not isinstance(proxies, int) or proxies < 0:
        raise ConfigError("PORTAL_TRUSTED_PROXIES is the number of proxies in front: 0, 1, 2, ...")
    if proxies and not config["TRUSTED_PROXY_NETWORKS"]:
        raise ConfigError(
            "PORTAL_TRUSTED_PROXIES is set but PORTAL_TRUSTED_PROXY_NETWORKS names no proxy: forwarded headers "
            "are believed only from the proxies' own addresses, for example '[\"10.0.1.10/32\"]'."
        )
    if not relaxed:
        if len(str(config["SECRET_KEY"])) < 32:
            raise ConfigError("PORTAL_SECRET_KEY must be at least 32 characters.")
        time_cost, memory_cost = config["ARGON2_TIME_COST"], config["ARGON2_MEMORY_COST"]
        if time_cost < 1 or memory_cost < ARGON2_FLOORS[min(time_cost, 5)]:
            raise ConfigError(
                "PORTAL_ARGON2_TIME_COST/PORTAL_ARGON2_MEMORY_COST are below OWASP's Argon2id floor "
                "(for example t=2 with m=19456 KiB)."
            )
        if not config.get("TRUSTED_HOSTS"):
            # Without it a request's Host header is believed, and redirects follow it off-site.
            raise ConfigError("PORTAL_TRUSTED_HOSTS is not set: list the host names served (a JSON list).")
        if not config.get("PROGRAMME_FILE"):
            raise ConfigError("PORTAL_PROGRAMME_FILE is not set: production must state its own programme facts.")
        check_limit_store(config)


def check_networks(config: Mapping[str, Any], name: str) -> None:
    networks = config.get(name) or []
    if not isinstance(networks, list):
        raise ConfigError(f"PORTAL_{name} must be a JSON list, for example '[\"10.0.0.0/8\"]'.")
    for network in networks:
        try:
            ip_network(network, strict=False)
        except ValueError as error:
            raise ConfigError(f"PORTAL_{name}: {network!r} is not a network (write 10.0.0.0/8).") from error


def check_limit_store(config: Mapping[str, Any]) -> None:
    """Refuse a limit store whose counts would multiply with the number of processes serving.

    ``memory://`` counts per process: with N gunicorn workers (or N servers) every failure limit
    becomes N times larger. It is allowed only when the deployment says it runs one process
    (``PORTAL_SINGLE_PROCESS``) and gunicorn, when it serves, agrees. The in-memory fallback
    would do the same to a shared store while it is unreachable.
    """
    workers = config.get("WORKERS")
    if str(config["RATELIMIT_STORAGE_URI"]).startswith("memory://"):
        if not config.get("SINGLE_PROCESS"):
            raise ConfigError(
                "PORTAL_RATELIMIT_STORAGE_URI is memory://, which counts failures per process: set it to the "
                "shared Redis (redis://host:6379/0), or PORTAL_SINGLE_PROCESS=true if exactly one process serves."
            )
        if workers is not None and int(workers) > 1:
            raise ConfigError(
                f"PORTAL_SINGLE_PROCESS is set but gunicorn runs {workers} workers, each with its own memory:// "
                "limits: set PORTAL_WORKERS=1 or a shared PORTAL_RATELIMIT_STORAGE_URI."
            )
    elif config.get("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED"):
        raise ConfigError(
            "PORTAL_RATELIMIT_IN_MEMORY_FALLBACK_ENABLED would count failures per process while the shared "
            "limit store is down (limits multiplied by the processes serving): set it to false."
        )


def decode_key(value: str, name: str) -> bytes:
    """Decode a base64url key of at least 32 bytes, as ``secrets.token_urlsafe(32)`` prints it."""
    text = str(value).strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as error:
        raise ConfigError(f"{name} is not base64url text.") from error
    if len(raw) < 32:
        raise ConfigError(f"{name} must encode at least 32 random bytes (use secrets.token_urlsafe(32)).")
    return raw


def write_development_secrets(instance_path: str) -> Path:
    """Create ``instance/config.py`` with fresh random secrets for a development or demo instance."""
    path = Path(instance_path) / "config.py"
    if path.exists():
        # An instance made before a secret was added (PORTAL_AUDIT_KEY) gets just the missing ones.
        text = path.read_text(encoding="utf-8")
        missing = [name for name in SECRET_NAMES if f"\n{name} = " not in text]
        if missing:
            path.write_text(text + "".join(f'{name} = "{secrets.token_urlsafe(32)}"\n' for name in missing))
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Generated for a development/demo instance. Never use these values in production.",
        'ENV = "development"',
        *(f'{name} = "{secrets.token_urlsafe(32)}"' for name in SECRET_NAMES),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path
