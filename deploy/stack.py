"""Rehearse the production topology on one machine: ``./dev.sh stack``.

nginx (Debian's package) with a throw-away self-signed certificate terminates TLS in front of
two gunicorn app servers on different ports, both on one PostgreSQL schema and one Redis, run
exactly as in production (``PORTAL_ENV=production``, ``deploy/nginx/portal.conf`` rendered with
local ports and paths, ``portal.app:create_app()`` under ``portal/gunicorn_config.py``). The data is
synthetic, imported in two shards at once as two machines would. Everything lives in a temporary
directory, a private PostgreSQL schema and a Redis key prefix, all removed on exit; nginx runs as
a child process (no daemon, no system paths).

``tests/test_stack.py`` drives the same ``Stack`` end to end.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from launch import Gunicorn, free_port, get_status, portal_environment, private_schema, stop_group

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HOST = "localhost"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


@dataclass
class Stack:
    """nginx in front of two app servers on one PostgreSQL schema and one Redis."""

    postgres_url: str = DEFAULT_POSTGRES
    redis_url: str = DEFAULT_REDIS
    patients: int = 200
    workers: int = 2
    threads: int = 4
    servers: int = 2
    settings: dict[str, str] = field(default_factory=dict)  # extra PORTAL_* for the app servers

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="portal-stack-"))
        self.dir.chmod(0o711)  # nginx's workers (nobody, when started as root) reach their temp dirs
        self.schema = f"stack_{secrets.token_hex(5)}"
        self.prefix = f"stack-{secrets.token_hex(5)}"
        self.https_port, self.http_port = free_port(), free_port()
        self.app_servers = [
            Gunicorn("portal.app:create_app()", self.dir / f"app{n}.log", cwd=self.dir) for n in range(self.servers)
        ]
        self.database_url = ""  # the private schema's, once load_data has made it
        self.schema_kept = contextlib.ExitStack()  # until stop() drops it
        self.nginx_process: subprocess.Popen[bytes] | None = None
        self.people: list[dict[str, str]] = []
        self.references: dict[str, str] = {}
        self.certificate = self.dir / "tls.crt"
        self.tls = ssl.create_default_context()

    # --- the pieces ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.https_port}"

    def environment(self) -> dict[str, str]:
        """The app servers' and commands' PORTAL_* settings, as /etc/portal/portal.env holds them."""
        production = {
            "ENV": "production",
            "DATABASE_URL": self.database_url,
            **self._keys,
            "PROGRAMME_FILE": str(self.dir / "programme.toml"),
            "RATELIMIT_STORAGE_URI": self.redis_url,
            "RATELIMIT_KEY_PREFIX": self.prefix,
            "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": "false",
            "TRUSTED_PROXIES": "1",
            "TRUSTED_PROXY_NETWORKS": '["127.0.0.1/32"]',  # nginx's own address, as the app servers see it
            "TRUSTED_HOSTS": f'["{HOST}"]',
            "WORKERS": self.workers,
            "THREADS": self.threads,
        }
        return {**portal_environment(production), **self.settings}

    @staticmethod
    def portal_command(*args: str) -> list[str]:
        return [str(BIN / "portal"), *args]

    def run_portal(self, *args: str) -> str:
        """A ``portal`` command with the servers' settings; its output, or an error with it."""
        done = subprocess.run(
            self.portal_command(*args), env=self.environment(), cwd=self.dir, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"portal {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done.stdout

    def make_certificate(self) -> None:
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-days", "2", "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST},IP:127.0.0.1",
                "-keyout", str(self.dir / "tls.key"), "-out", str(self.certificate),
            ],
            check=True, capture_output=True,
        )  # fmt: skip
        self.tls = ssl.create_default_context(cafile=str(self.certificate))

    def load_data(self) -> None:
        """Migrate, import the patients in two shards at once (as two machines would), then the codes."""
        self.database_url = self.schema_kept.enter_context(private_schema(self.postgres_url, self.schema))
        shutil.copy(DEPLOY / "programme.example.toml", self.dir / "programme.toml")
        patients, codes = self.dir / "patients.csv", self.dir / "codes.csv"
        self.run_portal("db", "upgrade")
        self.run_portal("generate-patients", str(self.patients), "--seed", "2026", "--out", str(patients))
        self.run_portal("generate-codes", str(self.patients), "--seed", "2026", "--out", str(codes))
        shards = [
            subprocess.Popen(
                [*self.portal_command("import-patients", str(patients), "--workers", "1", "--shard", f"{k}/2"),
                 "--letters", str(self.dir / f"letters-{k}.csv")],
                env=self.environment(), cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            for k in range(2)
        ]  # fmt: skip
        for shard in shards:
            output, _ = shard.communicate()
            if shard.returncode != 0:
                raise RuntimeError(f"import-patients exited {shard.returncode}:\n{output.decode(errors='replace')}")
        self.run_portal("import-codes", str(codes))
        with patients.open(newline="", encoding="utf-8") as stream:
            self.people = list(csv.DictReader(stream))
        for k in range(2):
            with (self.dir / f"letters-{k}.csv").open(newline="", encoding="utf-8") as stream:
                self.references.update((row["record_id"], row["reference"]) for row in csv.DictReader(stream))

    def kill_server(self, index: int) -> None:
        """The machine is gone: SIGKILL to the server and its workers, no goodbye."""
        self.app_servers[index].stop(signal.SIGKILL)

    def restart_server(self, index: int) -> None:
        """Killed, then started again on its port: ready when every worker booted and the landing page answers."""
        self.kill_server(index)
        self.app_servers[index].start(self.environment()).wait_ready(host=HOST)

    def render_nginx_site(self) -> str:
        """deploy/nginx/portal.conf with this machine's ports and paths in place of the production ones."""
        site = (DEPLOY / "nginx" / "portal.conf").read_text(encoding="utf-8")
        upstreams = ["server 10.0.1.11:8000", "server 10.0.1.12:8000"]
        replacements = [
            ("listen [::]:80;\n", ""),
            ("listen [::]:443 ssl http2;\n", ""),
            ("listen 80;", f"listen 127.0.0.1:{self.http_port};"),
            ("listen 443 ssl", f"listen 127.0.0.1:{self.https_port} ssl"),
            ("https://notice.example.org", self.url),
            ("server_name notice.example.org;", f"server_name {HOST};"),
            ("/etc/ssl/certs/notice.example.org.pem", str(self.certificate)),
            ("/etc/ssl/private/notice.example.org.key", str(self.dir / "tls.key")),
            ("/srv/portal/static/", f"{ROOT / 'static'}/"),
            ("/etc/nginx/portal_proxy.conf", str(self.dir / "portal_proxy.conf")),
            *((line, f"server 127.0.0.1:{s.port}") for line, s in zip(upstreams, self.app_servers, strict=True)),
        ]
        for production, local in replacements:
            if production not in site:
                raise RuntimeError(f"deploy/nginx/portal.conf no longer contains {production!r}: update stack.py")
            site = site.replace(production, local)
        return site

    def write_nginx_config(self) -> Path:
        """The rendered site inside a main configuration of our own: pid, logs and temp files here."""
        shutil.copy(DEPLOY / "nginx" / "portal_proxy.conf", self.dir / "portal_proxy.conf")
        (self.dir / "portal.conf").write_text(self.render_nginx_site(), encoding="utf-8")
        main = self.dir / "nginx.conf"
        temp_paths = "\n".join(
            f"    {kind}_temp_path {self.dir / ('nginx-' + kind)};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        main.write_text(
            f"""daemon off;
worker_processes 1;
pid {self.dir / "nginx.pid"};
error_log {self.dir / "nginx-error.log"} warn;
events {{ worker_connections 512; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {self.dir / "nginx-access.log"};
{temp_paths}
    include {self.dir / "portal.conf"};
}}
""",
            encoding="utf-8",
        )
        return main

    def nginx_command(self, *args: str) -> list[str]:
        main = self.write_nginx_config()
        return [NGINX, "-p", str(self.dir), "-c", str(main), "-e", str(self.dir / "nginx-error.log"), *args]

    def check_nginx(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the rendered configuration."""
        return subprocess.run(self.nginx_command("-t"), capture_output=True, text=True)

    def start_nginx(self, timeout: float = 20) -> None:
        with (self.dir / "nginx-stderr.log").open("ab") as log:
            self.nginx_process = subprocess.Popen(
                self.nginx_command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        status = 0
        while time.monotonic() < deadline and self.nginx_process.poll() is None:
            status = get_status(self.https_port, host=HOST, tls=self.tls)
            if status == 200:
                return
            time.sleep(0.1)
        log = (self.dir / "nginx-error.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"nginx did not answer 200 (last status {status}):\n{log}")

    # --- the whole ---------------------------------------------------------------------------------

    def start(self) -> Stack:
        self._keys = {
            name: secrets.token_urlsafe(32) for name in ("SECRET_KEY", "IDENTIFIER_KEY", "CODE_KEY", "AUDIT_KEY")
        }
        try:
            self.make_certificate()
            self.load_data()
            for server in self.app_servers:
                server.start(self.environment())
            for server in self.app_servers:
                server.wait_ready(host=HOST)
            self.start_nginx()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop nginx and the servers; drop the schema and the Redis keys; delete the directory."""
        if self.nginx_process is not None:
            stop_group(self.nginx_process, signal.SIGQUIT, grace=15)
        for server in self.app_servers:
            server.stop(grace=15)
        self.schema_kept.close()
        store = redis.Redis.from_url(self.redis_url)
        try:
            for key in store.scan_iter(match=f"{self.prefix}*"):
                store.delete(key)
        except redis.ConnectionError:
            pass  # a Redis that is gone holds nothing of ours
        finally:
            store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *_exc: Any) -> None:
        self.stop()

    def sample_people(self) -> list[str]:
        """Three people to try: a plain name, a tricky spelling, and one with a letter reference."""
        plain = next(p for p in self.people if p["ssn"] and p["last_name"].isascii() and p["last_name"].isalpha())
        tricky = next((p for p in self.people if p["ssn"] and not p["last_name"].isalpha()), None)
        lettered = next((p for p in self.people if not p["ssn"]), None)
        lines = []
        for person in filter(None, (plain, tricky, lettered)):
            factor = (
                f"SSN last 4 {person['ssn'][-4:]}" if person["ssn"]
                else f"reference {self.references[person['record_id']]}"
            )  # fmt: skip
            born, zip_code = person["date_of_birth"], person["zip"][:5]
            lines.append(f"  {person['last_name']:<22} born {born}  ZIP {zip_code}  {factor}")
        return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--postgres", default=os.environ.get("PORTAL_TEST_POSTGRES_URL") or DEFAULT_POSTGRES)
    parser.add_argument("--redis", default=os.environ.get("PORTAL_TEST_REDIS_URL") or DEFAULT_REDIS)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per app server")
    args = parser.parse_args()
    print(f"Starting nginx + 2 app servers, importing {args.patients} synthetic patients ...", flush=True)
    with Stack(args.postgres, args.redis, patients=args.patients, workers=args.workers) as stack:
        print(f"\n{stack.url}/  (self-signed certificate: {stack.certificate})")
        print(f"plain HTTP, redirected: http://{HOST}:{stack.http_port}/")
        ports = ", ".join(f"127.0.0.1:{s.port}" for s in stack.app_servers)
        print(f"app servers: {ports}; PostgreSQL schema {stack.schema}; logs in {stack.dir}")
        print("Try these synthetic people at /lookup:")
        print("\n".join(stack.sample_people()))
        print("Ctrl+C stops everything and removes the data.", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
