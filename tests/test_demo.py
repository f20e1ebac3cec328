"""The README's first command: ``./dev.sh demo`` sets up synthetic data and serves the site."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from launch import free_port


def test_the_demo_loads_synthetic_people_and_serves_the_site(tmp_path: Path) -> None:
    port = free_port()
    # Its own database, so a developer's demo data is left alone (instance/config.py is reused).
    env = {**os.environ, "PORTAL_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}"}
    command = [sys.executable, "-c", "from portal.app import main; main()", "demo", "--patients", "20"]
    server = subprocess.Popen(
        [*command, "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline, page = time.monotonic() + 60, ""
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/lookup", timeout=5) as response:
                    page = response.read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert server.poll() is None, f"the demo stopped instead of serving:\n{server.communicate()[0]}"
        assert "Check if you are affected" in page and 'name="csrf_token"' in page
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "Try these synthetic people at /lookup:" in output and "SSN last 4" in output
