"""The README's first command, ``./dev.sh demo``, as a newcomer meets it: it shows the hashing's
progress, serves the website, the console and the partner API, prints working credentials for an
agent, a supervisor and a partner, and the README's API examples give the answers written beside
them when run against it. A second demo on the same port is refused before any work."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest
from launch import free_port
from live import CSRF_FIELD, Answer, LiveServer, Visitor

from portal.api.errors import PROBLEMS
from portal.sandbox import PRACTICES

README = Path(__file__).resolve().parent.parent / "README.md"
DEMO = [sys.executable, "-c", "from portal.app import main; main()", "demo", "--patients", "10"]
# Every request of an example goes through curl with -i added, so that the test sees the status and
# the headers of the last answer while the README's lines stay as people type them.
CURL_WITH_HEADERS = 'curl() { command curl -i "$@"; }\n'
STATUS_LINE = re.compile(r"^HTTP/[\d.]+ (\d{3})", re.M)


@dataclass
class Demo:
    """A running demo: its port and everything it printed before serving."""

    port: int
    output: str

    request = LiveServer.request  # the same plain HTTP client as the live-server tests

    def exports(self) -> dict[str, str]:
        return dict(re.findall(r"^  export (\w+)=(\S+)", self.output, re.M))

    def staff(self) -> dict[str, dict[str, str]]:
        """role -> username, password and TOTP secret, as printed."""
        found = re.findall(
            r"^  (agent|supervisor)\nusername: (\S+)\npassword: (\S+)\notpauth URI: (\S+)", self.output, re.M
        )
        return {
            role: {"username": user, "password": password, "secret": pyotp.parse_uri(uri).secret}
            for role, user, password, uri in found
        }


def start_demo(port: int, database: Path) -> subprocess.Popen[str]:
    # Its own database, so a developer's demo data is left alone (instance/config.py is reused).
    env = {**os.environ, "PORTAL_DATABASE_URL": f"sqlite:///{database}"}
    return subprocess.Popen(
        [*DEMO, "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    port = free_port()
    process = start_demo(port, tmp_path_factory.mktemp("demo") / "demo.sqlite3")
    assert process.stdout is not None
    lines, deadline = [], time.monotonic() + 240
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Serving "):
            break
    output = "".join(lines)
    try:
        assert output.splitlines()[-1].startswith("Serving "), f"the demo stopped instead of serving:\n{output}"
        yield Demo(port, output)
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_the_demo_shows_its_progress_and_the_three_audiences(demo: Demo) -> None:
    site = f"http://127.0.0.1:{demo.port}/"
    assert (
        "Hashing 14 synthetic people with Argon2id" in demo.output
        and "100%|" in demo.output
        and "14.0/14.0" in demo.output
    )
    for address in (site, f"{site}lookup", f"{site}agent/", f"{site}agent/dashboard", f"{site}api/v1/docs"):
        assert address in demo.output
    assert "Try these synthetic people" in demo.output and "SSN last 4" in demo.output
    page = demo.request("GET", "/lookup").body
    assert "Check if you are affected" in page and 'name="csrf_token"' in page
    assert demo.request("GET", "/api/v1/docs").status == 200


@pytest.mark.parametrize("role", ["agent", "supervisor"])
def test_the_printed_staff_credentials_sign_in(demo: Demo, role: str) -> None:
    account = demo.staff()[role]
    visitor = Visitor(demo)  # type: ignore[arg-type]
    match = CSRF_FIELD.search(visitor.get("/agent/login").body)
    assert match
    visitor.token = match.group(1)
    code = pyotp.TOTP(account["secret"]).now()
    signed_in = visitor.post(
        "/agent/login", {"username": account["username"], "password": account["password"], "code": code}
    )
    assert signed_in.status == 303 and signed_in.headers["Location"] == "/agent/", signed_in
    # Signed in: the console sends a first sign-in on to choose a new password, as the demo says;
    # a visitor who is not signed in is sent back to the login page instead.
    assert visitor.get("/agent/").headers["Location"] == "/agent/password"
    assert visitor.get("/agent/password").status == 200
    assert Visitor(demo).get("/agent/password").headers["Location"] == "/agent/login"  # type: ignore[arg-type]


def test_the_printed_partner_keys_work(demo: Demo) -> None:
    keys = demo.exports()
    answer = demo.request("GET", "/api/v1/program", headers={"Authorization": f"Bearer {keys['KEY']}"})
    assert answer.status == 200 and json.loads(answer.body)["organization"]
    # The slow key is live and may verify only (a refused scope does not spend its 5 a minute).
    headers = {"Authorization": f"Bearer {keys['SLOW_KEY']}", "Content-Type": "application/json"}
    slow = demo.request("POST", "/api/v1/claims", b'{"claim_token": "x"}', headers)
    assert slow.status == 403 and json.loads(slow.body)["type"].endswith("#problem-forbidden")


def readme_examples() -> list[tuple[str, str, str]]:
    """(title, command, answer) of the README's "Try it" block of requests, in order."""
    section = README.read_text(encoding="utf-8").split("### Try it", 1)[1].split("\n### ", 1)[0]
    block = section.split("```sh\n")[2].split("\n```", 1)[0]
    examples = []
    for chunk in block.split("\n\n"):
        title, command, answer = chunk.split("\n")
        examples.append((title.removeprefix("# "), command, answer.removeprefix("# → ")))
    return examples


def test_the_readme_examples_are_the_ones_the_demo_prints(demo: Demo) -> None:
    assert readme_examples() == [(p.title, p.command, p.answer) for p in PRACTICES]
    for practice in PRACTICES:
        assert f"  {practice.command}\n  # → {practice.answer}" in demo.output


def run(command: str, env: dict[str, str]) -> tuple[str, Answer]:
    """Run an example in bash; its whole output, and the last answer's status, headers and body."""
    result = subprocess.run(["bash", "-c", CURL_WITH_HEADERS + command], env=env, capture_output=True, timeout=60)
    output = result.stdout.decode()
    statuses = list(STATUS_LINE.finditer(output))
    if not statuses:
        return output, Answer(0, {}, "")
    head, _, body = output[statuses[-1].start() :].partition("\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:])
    return output, Answer(int(statuses[-1].group(1)), headers, body)


def matches(documented: Any, actual: Any) -> bool:
    """The README's answer, where "…" (and [...]) stand for any value."""
    if documented == "…":
        return True
    if isinstance(documented, dict):
        return (
            isinstance(actual, dict)
            and documented.keys() == actual.keys()
            and all(matches(value, actual[key]) for key, value in documented.items())
        )
    return bool(documented == actual)


def verifications_made(demo: Demo) -> float:
    """The API's verifications so far, from /metrics: each one is one lookup, one Argon2 hash."""
    metrics = demo.request("GET", "/metrics").body
    found = re.findall(
        r'^portal_verifications_total\{channel="api",outcome="(?:success|failure)"\} (\S+)', metrics, re.M
    )
    return sum(float(value) for value in found)


def test_the_readme_examples_give_their_documented_answers(demo: Demo) -> None:
    """Every request of "Try it", in order: among them an idempotent retry that makes no second
    verification (no hash: /metrics) and takes no budget unit (four more failures are still
    answered before the limit), and the two kinds of 429 with their own types and headers."""
    env = {**os.environ, **demo.exports(), "TOKEN": ""}
    for title, command, documented in readme_examples():
        before = verifications_made(demo)
        output, answer = run(command, env)
        made = verifications_made(demo) - before
        status, _, rest = documented.partition(" ")
        if re.fullmatch(r"(\d{3} ?)+", documented):  # a loop that printed each status
            assert output.split() == documented.split(), (title, output)
            continue
        assert answer.status == int(status), (title, output)
        if rest.startswith("{"):
            assert matches(json.loads(rest.replace("[...]", '"…"')), json.loads(answer.body)), (title, output)
        elif ": " in rest:
            name, value = rest.split(": ")
            assert answer.headers[name] == value, (title, output)
        else:
            problem = json.loads(answer.body)
            assert problem["type"] == f"http://127.0.0.1:{demo.port}/api/v1/docs#problem-{rest}", (title, output)
            assert problem["title"] == PROBLEMS[rest].title
        if rest == "rate-limited":
            assert answer.headers["X-RateLimit-Remaining"] == "0"
        if rest == "failure-limit":
            assert not [name for name in answer.headers if name.startswith("X-RateLimit")], output
        if "claim_token" in rest and not env["TOKEN"]:
            env["TOKEN"] = json.loads(answer.body)["claim_token"]
        if "Idempotency-Key" in command and answer.status == 200:
            # The first answer made one verification (one hash); its retry, none.
            assert made == (0 if "Idempotent-Replayed" in rest else 1), (title, made)


def test_the_reference_page_s_curl_lines_work_against_the_demo(demo: Demo) -> None:
    page = demo.request("GET", "/api/v1/docs").body
    lines = [html.unescape(line) for line in re.findall(r'<pre class="curl"[^>]*><code>(.*?)</code></pre>', page)]
    env = {**os.environ, **demo.exports(), "TOKEN": ""}
    answers = []
    for line in lines:
        _output, answer = run(line, env)
        answers.append((answer.status, json.loads(answer.body)))
        if answer.status == 200 and "claim_token" in answer.body and not env["TOKEN"]:
            env["TOKEN"] = json.loads(answer.body)["claim_token"]
    # Example-Doe and García-López spelt otherwise are verified; the made-up reference is not;
    # both claims give Example-Doe's one code (201 unless the README's walk claimed it first).
    assert [status for status, _ in answers[:3]] == [200, 200, 200] and answers[5][0] == 200
    assert answers[3][0] in (200, 201) and answers[4][0] == 200
    assert [body.get("verified") for _, body in answers[:3]] == [True, True, False]
    assert answers[3][1]["activation_code"] == answers[4][1]["activation_code"]


def test_a_second_demo_on_the_same_port_is_refused_before_any_work(demo: Demo, tmp_path: Path) -> None:
    second = start_demo(demo.port, tmp_path / "second.sqlite3")
    output = second.communicate(timeout=120)[0]
    assert second.returncode == 1 and f"port {demo.port} on 127.0.0.1 is taken" in output
    assert "Serving" not in output and "Hashing" not in output
