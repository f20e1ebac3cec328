"""Production cookie and host settings, as a deployment gets them from PORTAL_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import production_variables
from flask import Flask, Request, request
from werkzeug.test import EnvironBuilder

from portal import schema
from portal.app import create_app
from portal.extensions import db


@pytest.fixture
def production_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    return production_from_environment(tmp_path, monkeypatch)


def production_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **more: str) -> Flask:
    """An app configured as a deployment is, through PORTAL_* variables (``more`` adds some)."""
    environment = production_variables(tmp_path, SINGLE_PROCESS="true", WORKERS="1")
    for name, value in {**environment, **more}.items():
        monkeypatch.setenv(name, value)
    app = create_app()
    with app.app_context():
        schema.upgrade(db.engine)
    return app


def test_session_cookie_is_host_only_secure_httponly_lax(production_app: Flask) -> None:
    client = production_app.test_client()
    response = client.get("/lookup", base_url="https://notice.example.org")
    cookie = response.headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert cookie.startswith("__Host-portal=")
    assert {"secure", "httponly", "path"} <= attributes and "domain" not in attributes
    assert "SameSite=Lax" in cookie and "Path=/" in cookie
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert "Example Health Records" in client.get("/", base_url="https://notice.example.org").get_data(as_text=True)


def test_unknown_host_names_are_refused(production_app: Flask) -> None:
    client = production_app.test_client()
    assert client.get("/", base_url="https://notice.example.org").status_code == 200
    refused = client.get("/", base_url="https://phishing.example.net")
    assert refused.status_code == 400
    assert "Traceback" not in refused.get_data(as_text=True)


def test_two_trusted_proxies_give_the_client_address_scheme_and_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a load balancer and a TLS proxy (PORTAL_TRUSTED_PROXIES=2, both in
    PORTAL_TRUSTED_PROXY_NETWORKS) the portal believes exactly two X-Forwarded-* hops: the client's
    address (its rate-limit bucket), https (so HSTS is sent and the __Host- cookie set) and the public
    host name (checked against PORTAL_TRUSTED_HOSTS)."""
    app = production_from_environment(
        tmp_path, monkeypatch, PORTAL_TRUSTED_PROXIES="2", PORTAL_TRUSTED_PROXY_NETWORKS='["10.0.0.2/31"]'
    )
    app.add_url_rule("/seen", "seen", lambda: f"{request.remote_addr} {request.scheme} {request.host}")
    forwarded = {
        "REMOTE_ADDR": "10.0.0.3",  # the TLS proxy, as the app server sees it
        # Each proxy appends what it received: the client may forge the leftmost values, the load
        # balancer appends the real client, scheme and host, the TLS proxy appends its own hop.
        "HTTP_X_FORWARDED_FOR": "198.51.100.66, 203.0.113.9, 10.0.0.2",
        "HTTP_X_FORWARDED_PROTO": "http, https, http",
        "HTTP_X_FORWARDED_HOST": "phishing.example.net, notice.example.org, lb.internal",
    }
    response = app.test_client().get("/seen", base_url="http://10.0.0.3:8000", environ_base=forwarded)
    assert response.get_data(as_text=True) == "203.0.113.9 https notice.example.org"
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    # The same headers from an address that is not a proxy of ours, or relayed through one that is
    # not: none of them is believed.
    for peer, last_hop in (("10.0.0.9", "10.0.0.2"), ("10.0.0.3", "10.0.0.9")):
        environ = {**forwarded, "REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": f"198.51.100.66, 203.0.113.9, {last_hop}"}
        seen = app.test_client().get("/seen", base_url="http://notice.example.org", environ_base=environ)
        assert seen.get_data(as_text=True) == f"{peer} http notice.example.org"


def test_a_page_that_sets_its_own_cache_control_is_still_never_stored(production_app: Flask) -> None:
    """The security headers come after every view: a view's own caching header gives way to
    no-store, and each header comes once."""
    production_app.add_url_rule("/own", "own", lambda: ("x", 200, {"Cache-Control": "public, max-age=600"}))
    response = production_app.test_client().get("/own", base_url="https://notice.example.org")
    assert response.headers.get_all("Cache-Control") == ["no-store"]
    for name in ("Content-Security-Policy", "X-Content-Type-Options", "Strict-Transport-Security"):
        assert len(response.headers.get_all(name)) == 1, name


class _NoWalk(dict[str, Any]):
    """A WSGI environ whose headers may be read one by one but not walked through."""

    def items(self) -> Any:
        raise AssertionError("every header walked to find one")


@pytest.mark.parametrize(
    "cookie", ["", "lang=es", "__Host-portal=abc.def; lang=fr", 'a="quoted \\"x\\""; b=2; a=3', "bad; =x; lang=es"]
)
def test_the_cookies_are_read_from_the_environ_as_werkzeug_reads_them(production_app: Flask, cookie: str) -> None:
    """The session and the language read the cookies on every request: from the one HTTP_COOKIE
    value, with Werkzeug's result, not by walking every header of the environ to find it."""
    environ = EnvironBuilder(headers={"Cookie": cookie} if cookie else {}).get_environ()
    werkzeugs = Request(environ).cookies
    ours = production_app.request_class(_NoWalk(environ)).cookies
    assert isinstance(production_app.request_class(environ), Request)
    assert ours.to_dict(flat=False) == werkzeugs.to_dict(flat=False) and type(ours) is type(werkzeugs)
