"""Forwarded addresses and request ids as an attacker meets them: a live gunicorn (two workers, Redis,
PostgreSQL) behind a proxy at 127.0.0.1, reached directly from 127.0.0.2 too (any 127.0.0.0/8
address is this machine's). X-Forwarded-For and X-Request-ID are believed only from the proxy's
own address, only when well-formed, and a client's address is recorded as its network."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import REDIS_URL
from live import Answer, LiveServer, Visitor
from test_attacks import KNOWN, RIGHT, WRONG, live_portal

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

PROXY, DIRECT = "127.0.0.1", "127.0.0.2"
CONSOLE_NETWORK, OPS_NETWORK = "10.20.0.0/16", "10.30.0.0/16"
NGINX_ID = "5f0c0e8a9d1b4c7e8f0a2b3c4d5e6f71"  # the shape of nginx's $request_id


@pytest.fixture
def server(tmp_path: Path, postgres_url: str) -> Iterator[LiveServer]:
    with live_portal(
        tmp_path, postgres_url, RATELIMIT_STORAGE_URI=REDIS_URL, TRUSTED_PROXIES=1, TRUSTED_PROXY_NETWORKS=[f"{PROXY}/32"],
        AGENT_NETWORKS=[CONSOLE_NETWORK], OPS_NETWORKS=[OPS_NETWORK],
    ) as running:  # fmt: skip
        yield running


def get(server: LiveServer, path: str, source: str, **headers: str) -> Answer:
    return server.request(
        "GET", path, headers={name.replace("_", "-"): v for name, v in headers.items()}, source=source
    )


def audit_rows(database_url: str) -> list[tuple[str | None, str]]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.text("SELECT client, request_id FROM audit_events"))]
    finally:
        engine.dispose()


def test_a_forged_forwarded_address_on_a_direct_connection_opens_nothing(server: LiveServer) -> None:
    """The console's and the operators' networks, claimed in X-Forwarded-For by a client that is not
    the proxy, are not believed: 404, as for anyone outside them. From the proxy they are."""
    in_console, in_ops = "10.20.0.5", "10.30.0.5"
    assert get(server, "/agent/login", DIRECT, X_Forwarded_For=in_console).status == 404
    assert get(server, "/agent/login", PROXY, X_Forwarded_For=in_console).status == 200
    for path in ("/metrics", "/readyz"):
        assert get(server, path, DIRECT, X_Forwarded_For=in_ops).status == 404
        assert get(server, path, PROXY, X_Forwarded_For=in_ops).status == 200
    assert "portal_pool_codes" in get(server, "/metrics", PROXY, X_Forwarded_For=in_ops).body
    # Two hops claimed (the forger's "proxy" and the network wanted): still one untrusted peer.
    assert get(server, "/agent/login", DIRECT, X_Forwarded_For=f"{in_console}, {PROXY}").status == 404


FORWARDED_JUNK = [
    "x" * 80,  # longer than the audit trail's column (varchar(64)): once a DataError, a 500
    "@SUM(1+1)*cmd|' /C calc'!A0",  # a spreadsheet formula, once exported as the client
    "<script>alert(1)</script>",
    "fe80::1%" + "a" * 70,  # an IPv6 zone: an interface name of any length
    "198.51.100.7:4431",  # an address with a port is not an address
]


def test_a_forwarded_value_that_is_no_address_leaves_the_proxys_own(server: LiveServer, postgres_url: str) -> None:
    """Even from the proxy, what is believed must be an IP address; anything else is a failed lookup
    like any other (never a 500), recorded with the connection's own network."""
    for junk in FORWARDED_JUNK:
        answer = Visitor(server, junk).prepare().submit({**KNOWN, "ssn_last4": WRONG})
        assert answer.status == 200, (junk, answer.status)
    assert {client for client, _ in audit_rows(postgres_url)} == {"127.0.0.0/24"}
    log = server.log()
    assert not any(junk in log for junk in FORWARDED_JUNK)


def test_a_patients_events_record_the_clients_network_never_its_address(server: LiveServer, postgres_url: str) -> None:
    """A row or a line that names a person's record holds the client's IPv4 /24 or IPv6 /48 only."""
    for address in ("198.51.100.7", "2001:db8:7:9::1"):
        visitor = Visitor(server, address).prepare()
        assert visitor.submit({**KNOWN, "ssn_last4": RIGHT}).status == 303
        assert visitor.get("/exposure").status == 200
    assert {client for client, _ in audit_rows(postgres_url)} == {"198.51.100.0/24", "2001:db8:7::/48"}
    events = [json.loads(line) for line in server.log().splitlines() if '"logger":"portal.events"' in line]
    assert {(event["client"], bool(event["record_ref"])) for event in events} == {
        ("198.51.100.0/24", True), ("2001:db8:7::/48", True)
    }  # fmt: skip
    assert not re.search(r"198\.51\.100\.7|2001:db8:7:9", server.log())


def test_a_request_id_is_kept_only_from_the_proxy_and_in_nginxs_shape(server: LiveServer, postgres_url: str) -> None:
    """nginx sets X-Request-ID to its $request_id; a client's own is replaced, so it can neither pick
    the id its requests are logged under nor pass for another request in the audit trail."""
    assert get(server, "/", PROXY, X_Request_ID=NGINX_ID).headers["X-Request-ID"] == NGINX_ID
    for source, sent in ((DIRECT, NGINX_ID), (PROXY, "<script>"), (PROXY, NGINX_ID.upper()), (PROXY, "a" * 64)):
        returned = get(server, "/", source, X_Request_ID=sent).headers["X-Request-ID"]
        assert returned != sent and re.fullmatch(r"[0-9a-f]{32}", returned), (source, sent)
    direct = Visitor(server, source=DIRECT, headers={"X-Request-ID": NGINX_ID}).prepare()
    failed = direct.submit({**KNOWN, "ssn_last4": WRONG})
    assert failed.status == 200 and failed.headers["X-Request-ID"] != NGINX_ID
    assert audit_rows(postgres_url) == [("127.0.0.0/24", failed.headers["X-Request-ID"])]
