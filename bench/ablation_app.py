"""The portal with parts of a lookup replaced by stand-ins, for ``verify_bench.py --app ablation_app:app``.

What a part of a verified lookup costs through the real stack (gunicorn, two cores shared with
Argon2id) is not what it costs in-process: measure it by taking it out. ``PORTAL_BENCH_ABLATE``
names the parts to take out, comma-separated:

* ``limits``   — the failure and attempt budgets (``throttle.attempt``) are not counted (the
  budgets are still named);
* ``database`` — no query and no write: the lookup hashes with the configured parameters and
  "finds" a stand-in row; the verification is not stored;
* ``csrf``     — the CSRF check is off;
* ``events``   — the verification's security event is not recorded;
* ``slots``    — each worker hashes on one thread of its own, not in the server's shared slots;
* ``audit``    — every event (the verification's, the exposure page's) is logged, counted in the
  metrics and seen by attack detection, but its audit row and hourly count are not written (no
  transaction of its own);
* ``detection`` — attack detection sees no event and reads no step-up state (no Redis round trip);
* ``session``  — the session cookie is plain base64 JSON, neither signed nor time-stamped: what
  remains of the session's cost is Flask's bookkeeping, not itsdangerous's.

Everything else is the real portal. ``limits``, ``database``, ``events`` and ``slots`` are taken
out of the one verification attempt (``portal.verification``) that the public lookup and the API's
verification share (``verify_bench.py`` and ``api_bench.py``); ``audit``, ``detection`` and
``session`` out of every request (the exposure page of ``verify_bench.py --whole-visit`` too).
Nothing beyond these benches is meant to work.

    PORTAL_BENCH_ABLATE=database .venv/bin/python bench/verify_bench.py --app ablation_app:app --pythonpath bench
"""

import base64
import contextlib
import json
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from flask.sessions import SecureCookieSessionInterface

from portal import verification
from portal.services import EXTENSION
from wsgi import app

ABLATED = set(filter(None, os.environ.get("PORTAL_BENCH_ABLATE", "").split(",")))
UNKNOWN = ABLATED - {"limits", "database", "csrf", "events", "slots", "audit", "detection", "session"}
if UNKNOWN:
    raise SystemExit(f"PORTAL_BENCH_ABLATE: unknown part(s) {sorted(UNKNOWN)}")


def _hash_only(_session: Any, hasher: Any, claim: Any) -> SimpleNamespace:
    """One Argon2id on the hashing threads, as find_patient does, and a stand-in row."""
    scheme = SimpleNamespace(key_version=hasher.keyring.current_version, salt=bytes(16), **vars(hasher.params))
    hasher.lookup_digests(claim, [scheme])
    return SimpleNamespace(id=0, public_id="0" * 32, exposed_fields=0)


class _Uncounted(contextlib.nullcontext):
    """Stands in for ``throttle.attempt``: the body runs, nothing is counted."""

    def __enter__(self) -> SimpleNamespace:
        return SimpleNamespace(succeeded=lambda: None)


class _Unwritten:
    """Stands in for the audit trail's group commit: the event is not written, its head made up."""

    def submit(self, _item: Any) -> str:
        return "ablated"


class _Blind:
    """Stands in for attack detection: sees nothing, raises nothing, no step-up asked."""

    def observe(self, *_args: Any) -> list[Any]:
        return []

    def step_up_active(self, _at: Any) -> bool:
        return False


class _PlainJson:
    """The session's content as base64 JSON: no signature, no time stamp, no tags."""

    def dumps(self, data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()

    def loads(self, text: str, max_age: int | None = None) -> dict[str, Any]:
        return dict(json.loads(base64.urlsafe_b64decode(text)))


class _UnsignedSessions(SecureCookieSessionInterface):
    """Flask's cookie sessions with ``_PlainJson`` in place of the signed serializer."""

    def get_signing_serializer(self, app: Any) -> Any:
        return _PlainJson()


if "limits" in ABLATED:
    verification.throttle = SimpleNamespace(attempt=lambda *_args, **_kwargs: _Uncounted())  # type: ignore[assignment]
if "database" in ABLATED:
    verification.find_patient = _hash_only  # type: ignore[assignment]
    verification.start_verification = lambda *_args: secrets.token_urlsafe(32)  # type: ignore[assignment]
if "events" in ABLATED:
    verification.record = lambda _event: None  # type: ignore[assignment]
if "slots" in ABLATED:
    hasher = app.extensions[EXTENSION].hasher
    hasher._slots = threading.BoundedSemaphore(1)
    hasher._threads = ThreadPoolExecutor(1, thread_name_prefix="argon2")
if "csrf" in ABLATED:
    app.config["WTF_CSRF_ENABLED"] = False
if "audit" in ABLATED:
    app.extensions["portal.audit_writer"] = _Unwritten()
if "detection" in ABLATED:
    app.extensions["portal.detector"] = _Blind()
if "session" in ABLATED:
    app.session_interface = _UnsignedSessions()
