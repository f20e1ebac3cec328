"""The floor of a verification on this stack, served beside the portal by ``verify_bench.py --floor``
and ``api_bench.py --floor``.

Under the same gunicorn configuration as the portal (``portal.gunicorn_config``: its workers, its
threads, the server's shared hashing slots), it does only what no verification can leave out: read
the request (the form POST, or the API's JSON body), normalise the claim, one Argon2id with the
configured parameters through the portal's own hasher (the server's slots, its ``argon2_N``
threads), and a minimal answer (303, or ``{"verified": true}``). No session, CSRF check, limits,
database, audit, log line or template: whatever the portal spends beyond this app, a change to the
portal could save; this app's distance from raw hashing, no change to the portal can.

GET /lookup answers a minimal form carrying a token only because the bench's visit reads one.
"""

import os
from types import SimpleNamespace
from typing import Any

from flask import Flask, redirect, request
from werkzeug.wrappers import Response

from portal.config import load_config
from portal.identity import Argon2Params, IdentifierHasher, IdentityClaim, Keyring

app = Flask(__name__)
load_config(app, None)  # the same PORTAL_* settings as the portal served beside it
HASHER = IdentifierHasher(
    Keyring.from_config(app.config, "IDENTIFIER_KEY"),
    Argon2Params.from_config(app.config),
    concurrency=app.config["HASH_CONCURRENCY"],
    wait_seconds=app.config["HASH_WAIT_SECONDS"],
)
SCHEME = SimpleNamespace(key_version=HASHER.keyring.current_version, salt=bytes(16), **vars(HASHER.params))
FORM = '<!doctype html><form method="post"><input name="csrf_token" type="hidden" value="{}"></form>'
FIELDS = ("last_name", "date_of_birth", "zip_code", "ssn_last4", "reference")


def _hash(values: Any) -> None:
    """Normalise the claim and hash it once, as a lookup does before it can look anything up."""
    claim = IdentityClaim.from_input(*(str(values.get(name, "")) for name in FIELDS))
    HASHER.lookup_digests(claim, [SCHEME])


@app.get("/")
def index() -> str:
    return "ready"


@app.get("/lookup")
def lookup_form() -> str:
    return FORM.format(os.urandom(16).hex())


@app.post("/lookup")
def lookup() -> Response:
    _hash(request.form)
    return redirect("/exposure", 303)


@app.get("/exposure")
def exposure_page() -> str:
    """Read back by ``verify_bench.py --whole-visit``: a page, nothing looked up."""
    return "<!doctype html><p>exposure</p>"


@app.get("/api/v1/openapi.json")
def api_ready() -> dict[str, str]:
    return {"openapi": "3.1.0"}


@app.post("/api/v1/verifications")
def api_verify() -> dict[str, bool]:
    _hash(request.get_json())
    return {"verified": True}
