"""HTTP hardening applied to every response, in one place."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from ipaddress import ip_network
from typing import Any

import flask_wtf.csrf
from flask import Flask, Request, Response, current_app
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import Serializer, Signer, TimestampSigner, URLSafeTimedSerializer, want_bytes
from itsdangerous.encoding import base64_encode
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.exceptions import BadRequest
from werkzeug.http import parse_cookie
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.utils import cached_property

from portal.extensions import csrf
from portal.network import VIA_PROXY, Network, parse_address, within

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
)
HSTS = "max-age=31536000; includeSubDomains"
# Set here and nowhere else, so they are added in one step rather than checked one by one.
SECURITY_HEADERS = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()"),
]


def init_app(app: Flask) -> None:
    app.wsgi_app = UnreadableBodiesAreBadRequests(app.wsgi_app)  # type: ignore[method-assign]
    hops = int(app.config["TRUSTED_PROXIES"])
    if hops:
        networks = [ip_network(network, strict=False) for network in app.config["TRUSTED_PROXY_NETWORKS"]]
        app.wsgi_app = TrustedProxies(app.wsgi_app, hops, networks)  # type: ignore[method-assign]
    app.request_class = CookiesFromEnviron
    app.session_interface = SignedCookieSessions()
    flask_wtf.csrf.URLSafeTimedSerializer = csrf_serializer  # type: ignore[assignment]
    # Flask-WTF's own hook stands aside: the app's one before-request hook runs check_csrf instead.
    # Wiring, not a setting: with it on as well, every form would only be checked twice.
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False


class TrustedProxies:
    """``X-Forwarded-For``, ``-Proto`` and ``-Host`` believed only from our proxies, as nginx's
    ``set_real_ip_from`` does: the connection comes from one of ``PORTAL_TRUSTED_PROXY_NETWORKS``,
    and so does every hop between it and the client (``PORTAL_TRUSTED_PROXIES`` of them in all).
    Anyone else's forwarded headers are ignored, so a forged one on a direct connection buys no
    other address: no fresh budget, no console or operators' network. The address believed must
    be an IP address; anything else (a forgery relayed, 80 characters, a formula) leaves the
    connection's own."""

    def __init__(self, wsgi_app: Any, hops: int, networks: list[Network]) -> None:
        self.direct = wsgi_app
        self.proxied = ProxyFix(_forwarded_address_checked(wsgi_app), x_for=hops, x_proto=hops, x_host=hops)
        self.hops = hops
        self.networks = networks

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        forwarded = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        proxies = [environ.get("REMOTE_ADDR"), *reversed(forwarded)][: self.hops]
        if all(within(proxy, self.networks) for proxy in proxies):
            environ[VIA_PROXY] = True
            return self.proxied(environ, start_response)
        return self.direct(environ, start_response)


def _forwarded_address_checked(wsgi_app: Any) -> Any:
    def checked(environ: dict[str, Any], start_response: Any) -> Any:
        address = parse_address(environ.get("REMOTE_ADDR"))
        if address is None:
            environ["REMOTE_ADDR"] = environ["werkzeug.proxy_fix.orig"]["REMOTE_ADDR"]
        else:
            environ["REMOTE_ADDR"] = str(address)
        return wsgi_app(environ, start_response)

    return checked


class UnreadableBodiesAreBadRequests:
    """A body the server cannot decode (a malformed chunk size, a truncated chunk) is the client's
    error: the server raises it from ``wsgi.input`` mid-parse, and it must be a 400, not a 500.
    Nothing but the client's bytes is read there, so every error of a read is the request's."""

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        environ["wsgi.input"] = _GuardedInput(environ["wsgi.input"])
        return self.wsgi_app(environ, start_response)


class _GuardedInput:
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def read(self, *size: int) -> bytes:
        return self._guarded(self._stream.read, *size)

    def readline(self, *size: int) -> bytes:
        return self._guarded(self._stream.readline, *size)

    def readlines(self, *hint: int) -> list[bytes]:
        return self._guarded(self._stream.readlines, *hint)

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    @staticmethod
    def _guarded(read: Any, *args: int) -> Any:
        try:
            return read(*args)
        except Exception as error:  # servers raise their own parse errors (gunicorn: ParseException)
            raise BadRequest() from error


class CookiesFromEnviron(Request):
    """Flask's request, its cookies parsed from the WSGI environ's one ``HTTP_COOKIE`` value.

    Werkzeug finds the Cookie header by walking every header of the environ, and the session and
    the language read the cookies on every request. A WSGI server joins repeated Cookie headers
    into that one value, so the cookies are the same.
    """

    @cached_property
    def cookies(self) -> ImmutableMultiDict[str, str]:
        return parse_cookie(self.environ.get("HTTP_COOKIE", ""), cls=self.dict_storage_class)


class SignedCookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, in Flask's format, with their serializer built once per app.

    The keys it signs with (``SECRET_KEY`` and its fallbacks) are fixed when the app is created.
    HMAC-SHA1 as Flask's, through hashlib's own SHA-1: Flask names a Python wrapper of it, which
    sends every HMAC down the standard library's pure-Python path.
    """

    digest_method = staticmethod(hashlib.sha1)

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        if not app.secret_key:
            return None
        serializer = app.extensions.get("portal.session_serializer")
        if serializer is None:
            serializer = app.extensions["portal.session_serializer"] = SessionSerializer(
                [*(app.config["SECRET_KEY_FALLBACKS"] or ()), app.secret_key],  # the current key last
                salt=self.salt,
                serializer=self.serializer,
                signer_kwargs={"key_derivation": self.key_derivation, "digest_method": self.digest_method},
            )
        return serializer


class KeptKeysSigner(TimestampSigner):
    """A timestamp signer that derives its keys (an HMAC of each secret key with the salt) once, not
    again for every signature it makes or checks: half the HMACs of a cookie."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        derive = super().derive_key
        self._derived = {key: derive(key) for key in self.secret_keys}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        return self._derived[self.secret_keys[-1] if secret_key is None else want_bytes(secret_key)]


class SessionSerializer(URLSafeTimedSerializer):
    """The session cookie's serializer with one signer, made once, and without zlib's attempt.

    itsdangerous compresses a payload when that makes it shorter, which a session's few short
    values almost never are: the attempt (a fresh deflate state of 256 KiB) was thrown away on
    nearly every cookie. The format is unchanged: a compressed cookie made earlier still opens.
    """

    default_signer = KeptKeysSigner

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._signer = super().make_signer()

    def make_signer(self, salt: str | bytes | None = None) -> Signer:
        return self._signer if salt is None or want_bytes(salt) == self.salt else super().make_signer(salt)

    def dump_payload(self, obj: Any) -> bytes:
        return base64_encode(Serializer.dump_payload(self, obj))


@lru_cache(maxsize=16)  # one key in production; bounded for the many apps of a test run
def csrf_serializer(secret_key: str | bytes, salt: str) -> SessionSerializer:
    """What Flask-WTF signs and checks CSRF tokens with, built once per key and salt.

    Flask-WTF builds a serializer for every token it makes or checks, with itsdangerous's default
    digest, a Python wrapper of SHA-1 that sends the HMAC down the standard library's pure-Python
    path. This one makes the same tokens (HMAC-SHA1 of the same derived key) at half the cost.
    """
    return SessionSerializer(secret_key, salt=salt, signer_kwargs={"digest_method": hashlib.sha1})


def check_csrf(req: Request) -> None:
    """Flask-WTF's check of every request (a 400 without a valid token), for the methods it checks
    (``WTF_CSRF_METHODS``: POST, PUT, PATCH, DELETE), except its exempt views and blueprints.

    Called by the app's one before-request hook (``portal/app.py``), as Flask-WTF documents for a
    hook of one's own (``WTF_CSRF_CHECK_DEFAULT`` off, ``protect(apply_exemptions=True)``): its own
    hook looks the view's exemption up on every GET before it looks at the method."""
    config = current_app.config
    if req.method in config["WTF_CSRF_METHODS"] and config["WTF_CSRF_ENABLED"]:
        csrf.protect(apply_exemptions=True)


def add_security_headers(req: Request, response: Response) -> None:
    """The same hardening on every response, the view's own or an error page, after its view."""
    headers = response.headers
    headers.extend(SECURITY_HEADERS)
    if req.is_secure:
        headers["Strict-Transport-Security"] = HSTS
    if req.endpoint != "static":
        # Pages may show a person's exposure or code: never keep them in any cache.
        headers["Cache-Control"] = "no-store"
