"""A live gunicorn serving the portal, and visitors that talk to it as browsers do.

For the tests that must meet a protection the way an attacker does: several worker processes,
several threads each, simultaneous requests over real sockets.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from launch import Gunicorn, portal_environment

CSRF_FIELD = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str


def server_environment(config: dict[str, Any], workers: int, threads: int) -> dict[str, str]:
    """A test app's configuration as a server's PORTAL_* environment, less Flask's TESTING: with it an
    error would propagate to gunicorn instead of being answered as production answers it."""
    settings = {name: value for name, value in config.items() if name != "TESTING"}
    return portal_environment({**settings, "WORKERS": workers, "THREADS": threads})


class LiveServer:
    """``gunicorn -c python:portal.gunicorn_config wsgi:app`` on a free loopback port."""

    def __init__(self, log_path: Path, config: dict[str, Any], workers: int = 2, threads: int = 4) -> None:
        self.server = Gunicorn("wsgi:app", log_path).start(server_environment(config, workers, threads))
        self.port = self.server.port

    def wait_ready(self, host: str = "127.0.0.1", timeout: float = 60) -> LiveServer:
        """Every worker booted and the landing page answers ``host``."""
        self.server.wait_ready(host=host, timeout=timeout)
        return self

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        source: str = "127.0.0.1",
    ) -> Answer:
        """One request on a new connection from ``source`` (any 127.0.0.0/8 address is this machine's)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60, source_address=(source, 0))
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Answer(response.status, dict(response.getheaders()), response.read().decode("utf-8", "replace"))
        finally:
            connection.close()

    def raw(self, payload: bytes) -> bytes:
        """Send bytes as they are (malformed framing) and return the first line of the answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(payload)
            received = b""
            while b"\r\n" not in received:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        return received.split(b"\r\n", 1)[0]

    def log(self) -> str:
        return self.server.log_text()

    def stop(self) -> None:
        self.server.stop(grace=20)


@dataclass
class Visitor:
    """One browser: its own session cookie and CSRF token, optionally an address a proxy reports, the
    address it connects from (the proxy's, 127.0.0.1, unless given) and headers of its own."""

    server: LiveServer
    forwarded_for: str | None = None
    cookies: dict[str, str] = field(default_factory=dict)
    token: str = ""
    source: str = "127.0.0.1"
    headers: dict[str, str] = field(default_factory=dict)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {**self.headers, **(extra or {})}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.forwarded_for:
            headers["X-Forwarded-For"] = self.forwarded_for
        return headers

    def _keep_cookies(self, answer: Answer) -> Answer:
        for name, value in answer.headers.items():
            if name.lower() == "set-cookie":
                pair = value.split(";", 1)[0]
                key, _, cookie = pair.partition("=")
                self.cookies[key] = cookie
        return answer

    def get(self, path: str) -> Answer:
        return self._keep_cookies(self.server.request("GET", path, headers=self._headers(), source=self.source))

    def prepare(self) -> Visitor:
        """Open the lookup form: a session and a CSRF token, as a browser has before submitting."""
        match = CSRF_FIELD.search(self.get("/lookup").body)
        assert match, "the lookup form has no CSRF token"
        self.token = match.group(1)
        return self

    def submit(self, fields: dict[str, str]) -> Answer:
        data = {"last_name": "", "date_of_birth": "", "zip_code": "", "ssn_last4": "", "reference": ""}
        data.update(fields)
        return self.post("/lookup", data)

    def post(self, path: str, fields: dict[str, str]) -> Answer:
        """A form of this session's, with its CSRF token."""
        data = {**fields, "csrf_token": self.token}
        headers = self._headers({"Content-Type": "application/x-www-form-urlencoded"})
        return self._keep_cookies(self.server.request("POST", path, urlencode(data).encode(), headers, self.source))


def all_at_once(actions: Sequence[Callable[[], Answer]]) -> list[Answer]:
    """Run the actions on their own threads, released together by a barrier; answers in order."""
    start = threading.Barrier(len(actions))
    answers: list[Answer | None] = [None] * len(actions)

    def run(index: int, action: Callable[[], Answer]) -> None:
        start.wait()
        answers[index] = action()

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(answer is not None for answer in answers), "a request never returned"
    return [answer for answer in answers if answer is not None]
