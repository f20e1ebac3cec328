"""The least a verifying Flask app can do, for ``verify_bench.py --app hashing_floor_app:app``.

It answers the bench's two requests as the portal does — GET /lookup sets a session cookie and
returns a form-sized page with a token, POST /lookup runs one Argon2id (the bench's parameters,
on one dedicated thread per process) and redirects with 303 — and nothing else: no CSRF check,
no limits, no database, no templates. Its ratio is the ceiling for any Flask app on the machine.

    .venv/bin/python bench/verify_bench.py --app hashing_floor_app:app --pythonpath bench
"""

import os
from concurrent.futures import ThreadPoolExecutor

from flask import Flask, redirect, request, session

from portal.identity import Argon2Params, stretch

app = Flask(__name__)
app.secret_key = os.environ["PORTAL_SECRET_KEY"]
PARAMS = Argon2Params(*(int(os.environ[f"PORTAL_ARGON2_{n}"]) for n in ("TIME_COST", "MEMORY_COST", "PARALLELISM")))
HASHING = ThreadPoolExecutor(1)
PAGE = "<!doctype html><p>" + "x" * 2500 + '<input name="csrf_token" type="hidden" value="token"></p>'
SALT = bytes(16)


@app.get("/")
def index() -> str:
    return "ready"


@app.get("/lookup")
def lookup_form() -> str:
    session["csrf"] = os.urandom(20).hex()
    return PAGE


@app.post("/lookup")
def lookup():  # type: ignore[no-untyped-def]
    message = request.form.get("last_name", "").encode().ljust(32, b"\0")[:32]
    HASHING.submit(stretch, message, SALT, PARAMS).result()
    session["verification"] = os.urandom(32).hex()
    return redirect("/exposure", 303)


@app.get("/api/v1/openapi.json")
def api_ready() -> dict[str, str]:
    return {"openapi": "3.1.0"}


@app.post("/api/v1/verifications")
def api_verify() -> dict[str, bool]:
    """The API's floor: read the JSON body, one Argon2id, answer verified."""
    message = str(request.get_json().get("last_name", "")).encode().ljust(32, b"\0")[:32]
    HASHING.submit(stretch, message, SALT, PARAMS).result()
    return {"verified": True}
