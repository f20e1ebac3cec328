"""Logs: one JSON line per request and per event, tied to the audit row by the request id the
response returns; and in a whole run's logs, not one imported value."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import logging.handlers
import re
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import csrf_token, lookup, make_app
from flask import Flask, g

from portal import logs, synthetic
from portal.extensions import db
from portal.identity import normalise_last_name
from portal.logs import Fields, JsonFormatter, write
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
        stack = "".join(traceback.format_tb(sys.exc_info()[2]))
    app.add_url_rule("/boom", view_func=boom)
    assert app.test_client().get("/boom").status_code == 500
    logged = lines(json_log)
    assert logged[0]["error"] == "ValueError" and logged[0]["stack"] == stack and "in boom" in stack
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


@contextlib.contextmanager
def bare_logging() -> Iterator[None]:
    """Logging as a fresh process has it (no handler anywhere, the portal's level unset), then put back.

    pytest's own capture hangs handlers on the root logger, which reads as "configured by the operator",
    as each phase of a test starts: this runs in the test's body.
    """
    root, portal = logging.getLogger(), logging.getLogger("portal")
    saved = root.handlers[:], portal.handlers[:], portal.level
    root.handlers[:], portal.handlers[:] = [], []
    portal.setLevel(logging.NOTSET)
    try:
        yield
    finally:
        root.handlers[:], portal.handlers[:] = saved[0], saved[1]
        portal.setLevel(saved[2])


@pytest.fixture
def records_made() -> Iterator[list[str]]:
    """The loggers' names of the LogRecords made while the test runs (logging's own factory hook)."""
    made: list[str] = []
    factory = logging.getLogRecordFactory()

    def counting(name: str, *args: object, **kwargs: object) -> logging.LogRecord:
        made.append(name)
        return factory(name, *args, **kwargs)

    logging.setLogRecordFactory(counting)
    try:
        yield made
    finally:
        logging.setLogRecordFactory(factory)


def test_by_default_each_requests_line_goes_straight_to_stderr_as_json_with_its_id_and_no_value(
    database_url: str, records_made: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """No logging configured (gunicorn's error log is stderr): the portal's own handler writes the request
    and event lines, without building a LogRecord for them (they are written on every request)."""
    with bare_logging():
        app = make_app(database_url)
        capsys.readouterr()
        response = lookup(
            app.test_client(), last_name="Zyxwvuts", date_of_birth="1958-03-17", zip_code="90210", ssn_last4="4321"
        )
        assert response.status_code == 200
        written = capsys.readouterr().err
        logged = [json.loads(line) for line in written.splitlines()]
        assert [(x["logger"], x["level"], x.get("endpoint") or x.get("action")) for x in logged] == [
            ("portal.requests", "INFO", "public.lookup_form"),
            ("portal.events", "INFO", "verification"),
            ("portal.requests", "INFO", "public.lookup"),
        ]
        assert list(logged[2]) == ["time", "level", "logger", "request_id", "method", "endpoint", "status", "ms"]
        assert logged[2]["request_id"] == logged[1]["request_id"] == response.headers["X-Request-ID"]
        assert logged[2]["status"] == 200 and re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(logged[2]["time"])
        )
        # The random ids, the audit head's MAC and the timings may hold any digit run by chance (a CI
        # run met "4321" in one): the values are looked for in every other field.
        rest = json.dumps([{k: v for k, v in line.items() if k not in VOLATILE} for line in logged])
        assert not [value for value in ("Zyxwvuts", "zyxwvuts", "1958", "90210", "4321") if value in rest]
        assert len(written.splitlines()) == len(logged)  # every line written was looked at
        assert not [name for name in records_made if name in ("portal.requests", "portal.events")]


@pytest.mark.parametrize("preset", [logging.NOTSET, logging.WARNING])
def test_the_portals_handler_is_added_once_at_info_unless_a_level_was_set(
    capsys: pytest.CaptureFixture[str], preset: int
) -> None:
    """Several apps in one process (the CLI's, the web app's, tests') write each line once."""
    with bare_logging():
        logging.getLogger("portal").setLevel(preset)
        for name in ("one", "two"):
            logs.init_app(Flask(name))
        logging.getLogger("portal.importer").info("started")
        write(logging.getLogger("portal.events"), logging.WARNING, Fields(action="x"))
        logged = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
        head = [{"message": "started"}] if preset == logging.NOTSET else []
        assert [{k: v for k, v in x.items() if k not in ("time", "level", "logger")} for x in logged] == [
            *head,
            {"action": "x"},
        ]
        assert [x["level"] for x in logged] == ["INFO"] * len(head) + ["WARNING"]
        assert logging.getLogger("portal").getEffectiveLevel() == (preset or logging.INFO)


def test_logging_configured_by_the_operator_is_left_alone_and_still_gets_json_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A handler on the root logger, with a format of its own: no second handler, the fields as JSON."""
    with bare_logging():
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        logging.getLogger().addHandler(handler)
        logs.init_app(Flask(__name__))
        write(logging.getLogger("portal.events"), logging.WARNING, Fields(action="verification", outcome="failure"))
        assert stream.getvalue() == 'WARNING portal.events {"action":"verification","outcome":"failure"}\n'
        assert capsys.readouterr().err == ""


class Kept(logging.handlers.BufferingHandler):
    """A handler of the portal's name that keeps records instead of writing them (a capture, a queue)."""

    def __init__(self) -> None:
        super().__init__(10)
        self.set_name("portal.json")

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        return False


def json_handler(name: str = "portal.json", level: int = logging.NOTSET, refuse: bool = False) -> logging.Handler:
    handler = logging.StreamHandler(io.StringIO())
    handler.set_name(name)
    handler.setLevel(level)
    handler.setFormatter(JsonFormatter())
    if refuse:
        handler.addFilter(lambda record: False)
    return handler


def held(handler: logging.Handler) -> list[dict[str, object]]:
    """What a handler holds: its JSON lines without their time, or the fields of the records it kept."""
    if isinstance(handler, Kept):
        return [dict(record.msg) for record in handler.buffer]  # type: ignore[call-overload]
    lines = handler.stream.getvalue().splitlines()  # type: ignore[attr-defined]
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


# The handlers of a logger and of its parent (which does not propagate further), whether the logger
# propagates, which handlers write the line, and whether it took the short way (no LogRecord): only
# when the portal's handler is the one place it would go.
SETUPS = {
    "own handler at the line's level": (lambda: [json_handler(level=logging.INFO)], list, True, [True], True),
    "the parent's handler": (list, lambda: [json_handler()], True, [True], True),
    "not propagated to another": (lambda: [json_handler()], lambda: [json_handler("x")], False, [True, False], True),
    "propagated to another too": (lambda: [json_handler()], lambda: [json_handler("x")], True, [True, True], False),
    "two of the portal's handlers": (lambda: [json_handler()], lambda: [json_handler()], True, [True, True], False),
    "another handler only": (lambda: [json_handler("x")], list, True, [True], False),
    "the handler's filter refuses it": (lambda: [json_handler(refuse=True)], list, True, [False], False),
    "the handler's level is above it": (lambda: [json_handler(level=logging.WARNING)], list, True, [False], False),
    "a handler of that name that keeps records": (lambda: [Kept()], list, True, [True], False),
}


@pytest.mark.parametrize("setup", SETUPS)
def test_a_line_takes_the_short_way_only_when_the_portals_handler_is_the_one_place_it_goes(
    setup: str, records_made: list[str]
) -> None:
    make_own, make_parents, propagate, writes, short = SETUPS[setup]
    parent, logger = logging.getLogger(f"shortway.{setup}"), logging.getLogger(f"shortway.{setup}.line")
    parent.propagate, logger.propagate = False, propagate
    logger.setLevel(logging.INFO)
    own, parents = make_own(), make_parents()
    parent.handlers[:], logger.handlers[:] = parents, own
    try:
        write(logger, logging.INFO, Fields(action="x"))
    finally:
        parent.handlers[:], logger.handlers[:] = [], []
    line = {"level": "INFO", "logger": logger.name, "action": "x"}
    expected = [
        ([{"action": "x"}] if isinstance(h, Kept) else [line]) if w else []
        for h, w in zip(own + parents, writes, strict=True)
    ]
    assert [held(h) for h in own + parents] == expected
    assert (logger.name not in records_made) is short


def test_a_short_way_line_waits_for_the_handlers_lock(records_made: list[str]) -> None:
    """Threads of a worker log at once: a line written while another is (the ordinary way takes the same
    lock) must not cut into it."""
    handler = json_handler()
    logger = logging.getLogger("shortway.locked")
    logger.propagate, logger.handlers[:] = False, [handler]
    logger.setLevel(logging.INFO)
    writer = threading.Thread(target=write, args=(logger, logging.INFO, Fields(action="x")))
    with handler.lock:  # type: ignore[union-attr]
        writer.start()
        writer.join(0.5)
        assert writer.is_alive() and held(handler) == []
    writer.join(5)
    logger.handlers[:] = []
    assert held(handler) == [{"level": "INFO", "logger": "shortway.locked", "action": "x"}]
    assert "shortway.locked" not in records_made


def test_the_time_is_utc_to_the_millisecond_second_after_second() -> None:
    """Milliseconds cut, never rounded up to the next second; the epoch's first seconds like any other."""
    formatter = JsonFormatter()
    times = [1.5, 1.75, 1_700_000_001.9995, 1_700_000_002.0]
    assert [json.loads(formatter.line(t, "INFO", "portal.test", {}))["time"] for t in times] == [
        "1970-01-01T00:00:01.500Z",
        "1970-01-01T00:00:01.750Z",
        "2023-11-14T22:13:21.999Z",
        "2023-11-14T22:13:22.000Z",
    ]
