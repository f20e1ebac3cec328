"""Logs: one JSON line per request and per event, tied to the audit row by the request id the
response returns; and in a whole run's logs, not one imported value."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import csrf_token, lookup, make_app
from flask import Flask, g

from portal import synthetic
from portal.extensions import db
from portal.identity import normalise_last_name
from portal.logs import Fields, JsonFormatter
from portal.models import AuditEvent

HEX_ID = re.compile(r"[0-9a-f]{32}")
VOLATILE = ("time", "request_id", "record_ref", "actor", "ms", "audit_head")  # random, timing or MAC: any digits


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the portal's JSON handler writes, as gunicorn's error log would hold it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("portal")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_line_per_request_and_per_event_with_the_request_id_of_the_response_and_audit_row(
    database_url: str, json_log: io.StringIO
) -> None:
    app = make_app(database_url)
    seen: list[str] = []
    app.after_request(lambda response: seen.append(g.request_id) or response)  # what the audit trail reads
    client = app.test_client()
    client.get("/")
    response = lookup(client, last_name="Nobody", date_of_birth="1970-01-01", zip_code="10001", ssn_last4="0000")
    request_id = response.headers["X-Request-ID"]
    assert HEX_ID.fullmatch(request_id) and seen[-1] == request_id
    logged = lines(json_log)
    assert [(x["logger"], x.get("endpoint") or x.get("action")) for x in logged] == [
        ("portal.requests", "public.index"),
        ("portal.requests", "public.lookup_form"),
        ("portal.events", "verification"),
        ("portal.requests", "public.lookup"),
    ]
    assert [x["request_id"] for x in logged[2:]] == [request_id, request_id]
    with app.app_context():
        audited = db.session.execute(sa.select(AuditEvent.action, AuditEvent.request_id)).all()
    assert [tuple(row) for row in audited] == [("verification", request_id)]
    assert logged[3]["status"] == 200 and logged[3]["method"] == "POST"
    assert len({x["request_id"] for x in logged}) == 3  # a new id for each request


def test_an_exceptions_message_never_reaches_a_log_line(app: Flask, json_log: io.StringIO) -> None:
    """Its message may quote a value (a form field, a CSV cell): a line carries the type and the stack."""
    value = "123-45-6789 García"

    def boom() -> str:
        raise ValueError(f"cannot read {value!r}")

    try:
        boom()
    except ValueError:
        logging.getLogger("portal.importer").exception("row rejected")
    app.add_url_rule("/boom", view_func=boom)
    assert app.test_client().get("/boom").status_code == 500
    logged = lines(json_log)
    assert logged[0]["error"] == "ValueError" and "in boom" in str(logged[0]["stack"])
    assert "unhandled ValueError" in str(logged[1]["message"])
    text = json.dumps(logged, ensure_ascii=False)
    assert "6789" not in text and "García" not in text


def test_a_line_is_its_time_level_and_logger_then_its_fields_and_the_requests_id(app: Flask) -> None:
    """The keys every log search relies on, with the UTC time to the millisecond."""
    formatter = JsonFormatter()
    record = logging.LogRecord("portal.test", logging.WARNING, __file__, 1, "slots %s", ("full",), None)
    record.created = 1_700_000_000.25
    head = {"time": "2023-11-14T22:13:20.250Z", "level": "WARNING", "logger": "portal.test"}
    assert json.loads(formatter.format(record)) == {**head, "message": "slots full"}  # no request, no id
    with app.test_request_context():
        g.request_id = "ab" * 16
        assert json.loads(formatter.format(record)) == {**head, "message": "slots full", "request_id": "ab" * 16}
        record.msg, record.args = Fields({"request_id": "cd" * 16, "action": "x"}), ()
        assert json.loads(formatter.format(record)) == {**head, "request_id": "cd" * 16, "action": "x"}


NGINX_ID = "0f4c1e8a9d1b4c7e8f0a2b3c4d5e6f70"  # nginx's $request_id: 16 random bytes in hex


@pytest.mark.parametrize(
    ("peer", "incoming", "kept"),
    [
        ("127.0.0.1", NGINX_ID, True),  # from our proxy, its shape
        ("127.0.0.1", NGINX_ID.upper(), False),  # another shape than nginx's
        ("127.0.0.1", "0f4c1e8a-9d1b-4c7e-8f0a-2b3c4d5e6f70", False),  # a UUID: not what nginx sets
        ("127.0.0.1", NGINX_ID + "0", False),  # too long
        ("127.0.0.1", "req 1 {forged}=x", False),  # spaces, braces
        ("192.0.2.7", NGINX_ID, False),  # a client's say-so on a direct connection
    ],
)
def test_an_incoming_request_id_is_kept_only_from_a_trusted_proxy_and_well_formed(
    tmp_path: Path, peer: str, incoming: str, kept: bool
) -> None:
    url = f"sqlite:///{tmp_path / 'portal.sqlite3'}"
    app = make_app(url, TRUSTED_PROXIES=1, TRUSTED_PROXY_NETWORKS=["127.0.0.1/32"])
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = peer
    returned = client.get("/", headers={"X-Request-ID": incoming}).headers["X-Request-ID"]
    assert returned == incoming if kept else HEX_ID.fullmatch(returned) and returned != incoming


def secrets_of(rows: list[dict[str, str]], codes: list[str]) -> set[str]:
    """Every imported value worth finding (four characters or more), as written and as normalised."""
    found = set(codes)
    for row in rows:
        for column, value in row.items():
            if column in ("exposed_fields", "state"):  # not identifiers: field names, two-letter codes
                continue
            found |= {value, value.lower(), re.sub(r"[^0-9]", "", value)}
        found |= {normalise_last_name(row["last_name"]), row["ssn"][-4:], row["zip"][:5]}
    return {value for value in found if len(value) >= 4}


def test_a_whole_run_logs_no_imported_value(
    database_url: str, json_log: io.StringIO, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Import, lookups that succeed, fail and are refused (a full SSN among them), exposure, claim, code,
    sign-out, a scrape."""
    app = make_app(database_url, VERIFY_LIMIT_PERSON="2 per hour")
    rows = list(synthetic.synthetic_patients(20, seed=7))
    rows.append({**rows[0], "record_id": "SYN-BAD", "date_of_birth": "1976-02-30"})  # rejected
    patients = tmp_path / "patients.csv"
    synthetic.write_csv(str(patients), synthetic.PATIENT_HEADER, iter(rows))
    code_rows = list(synthetic.synthetic_codes(5, seed=7))
    codes = tmp_path / "codes.csv"
    synthetic.write_csv(str(codes), synthetic.CODE_HEADER, iter(code_rows))
    runner = app.test_cli_runner()
    outputs = [
        runner.invoke(args=["import-patients", str(patients), "--workers", "1"]),
        runner.invoke(args=["import-codes", str(codes)]),
    ]
    assert [o.exit_code for o in outputs] == [1, 0]

    person = next(r for r in rows if r["ssn"])
    fields = {"last_name": person["last_name"], "date_of_birth": person["date_of_birth"], "zip_code": person["zip"]}
    other = {**fields, "last_name": rows[1]["last_name"], "date_of_birth": rows[1]["date_of_birth"]}
    client = app.test_client()
    for _ in range(3):  # two failures, then refused
        lookup(app.test_client(), **other, ssn_last4="0000")
    # A full SSN pasted into the last-four box, with and without its dashes: refused, never logged.
    ssn = person["ssn"]
    for pasted in (ssn, ssn.replace("-", ""), ssn.replace("-", " ")):
        assert lookup(app.test_client(), **fields, ssn_last4=pasted).status_code == 400
    assert lookup(client, **fields, ssn_last4=person["ssn"][-4:]).status_code == 303
    client.get("/exposure")
    assert client.post("/claim", data={"csrf_token": csrf_token(client, "/exposure")}).status_code == 303
    shown = client.get("/code").get_data(as_text=True)
    claimed = [c["code"] for c in code_rows if c["code"] in shown]
    assert len(claimed) == 1
    assert client.post("/sign-out", data={"csrf_token": csrf_token(client, "/code")}).status_code == 303
    # The names and labels of the metrics (their values are numbers with any digits).
    metrics = "\n".join(line.rsplit(" ", 1)[0] for line in app.test_client().get("/metrics").text.splitlines())

    logged = lines(json_log)
    assert {x.get("outcome") for x in logged} >= {"success", "failure", "throttled:verify-person-public"}
    text = "\n".join(json.dumps({k: v for k, v in x.items() if k not in VOLATILE}) for x in logged)
    text += "".join(o.output for o in outputs) + capsys.readouterr().err + metrics
    found = sorted(value for value in secrets_of(rows, codes=[c["code"] for c in code_rows]) if value in text)
    assert found == [], f"imported values in the logs: {found}"
    assert "line 22: rejected" in outputs[0].output  # the rejection is reported, without its value
    assert any(row.get("record_id") for row in csv.DictReader(patients.open()))
