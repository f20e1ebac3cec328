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
* ``slots``    — each worker hashes on one thread of its own, not in the server's shared slots.

Everything else is the real portal. The parts are taken out of the one verification attempt
(``portal.verification``) that the public lookup and the API's verification share
(``verify_bench.py`` and ``api_bench.py``); nothing else is meant to work.

    PORTAL_BENCH_ABLATE=database .venv/bin/python bench/verify_bench.py --app ablation_app:app --pythonpath bench
"""

import contextlib
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from portal import verification
from portal.services import EXTENSION
from wsgi import app

ABLATED = set(filter(None, os.environ.get("PORTAL_BENCH_ABLATE", "").split(",")))
UNKNOWN = ABLATED - {"limits", "database", "csrf", "events", "slots"}
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
