"""The affected-patient portal: an application factory and the services the views share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from inspect import iscoroutinefunction
from pathlib import Path
from typing import Any

from flask import Flask, current_app, g
from flask_babel import get_locale
from limits.storage import storage_from_string
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from portal import i18n, metrics
from portal.audit import AuditChain
from portal.claims import CodeCipher
from portal.config import load_config
from portal.extensions import babel, csrf, db
from portal.identity import Argon2Params, IdentifierHasher, Keyring
from portal.programme import Programme, load_programme
from portal.sealing import Sealer
from portal.staff import TOTP_PURPOSE

PACKAGE_DIR = Path(__file__).resolve().parent


def asset_dir(name: str) -> str:
    """``templates``/``static``/``migrations``: top level in a checkout, inside the package once installed."""
    in_checkout = PACKAGE_DIR.parent / name
    return str(in_checkout if in_checkout.is_dir() else PACKAGE_DIR / name)


@dataclass(frozen=True)
class Services:
    """The domain objects built once per app from its configuration."""

    hasher: IdentifierHasher
    cipher: CodeCipher
    totp: Sealer
    audit: AuditChain
    programme: Programme


def services() -> Services:
    return current_app.extensions["portal"]


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(
        __name__,
        template_folder=asset_dir("templates"),
        static_folder=asset_dir("static"),
        instance_relative_config=True,
    )
    load_config(app, test_config)
    code_key = Keyring.from_config(app.config, "CODE_KEY")
    app.extensions["portal"] = Services(
        hasher=IdentifierHasher(
            Keyring.from_config(app.config, "IDENTIFIER_KEY"),
            Argon2Params.from_config(app.config),
            concurrency=app.config["HASH_CONCURRENCY"],
            wait_seconds=app.config["HASH_WAIT_SECONDS"],
            on_slot_wait=metrics.observe_hash_slot,
        ),
        cipher=CodeCipher(code_key),
        totp=Sealer(code_key, TOTP_PURPOSE),
        audit=AuditChain.from_config(app.config),
        programme=load_programme(app.config["PROGRAMME_FILE"]),
    )
    # The rate-limit store as such (Redis in production): attack counters, readiness, purge.
    app.extensions["portal.limit_store"] = storage_from_string(app.config["RATELIMIT_STORAGE_URI"])

    db.init_app(app)
    # The extension also registers an async teardown, which Flask runs through asgiref on a new
    # thread at the end of every request (a third of a page's cost); there is no async engine here.
    app.teardown_appcontext_funcs[:] = [f for f in app.teardown_appcontext_funcs if not iscoroutinefunction(f)]
    app.teardown_appcontext(_close_session)  # runs before the extension's own close
    with app.app_context():
        _tune_engine(db.engine)
    csrf.init_app(app)
    babel.init_app(app, locale_selector=i18n.select_locale)
    i18n.init_app(app)
    app.jinja_env.install_gettext_callables(
        lambda text: i18n.translations().ugettext(text),
        lambda singular, plural, n: i18n.translations().ungettext(singular, plural, n),
        newstyle=True,
    )
    app.jinja_env.globals["get_locale"] = get_locale
    # Every page may show the programme's facts, with its free text in the page's language.
    app.context_processor(lambda: {"programme": services().programme.in_language(str(get_locale()))})

    from portal import cli, errors, events, logs, ops, security, telemetry, throttle
    from portal.api.views import bp as api_bp
    from portal.public.views import bp as public_bp

    logs.init_app(app)
    events.init_app(app)
    telemetry.init_app(app)
    security.init_app(app)
    throttle.init_app(app)
    cli.init_app(app)
    errors.init_app(app)
    app.register_blueprint(public_bp)
    app.register_blueprint(api_bp)
    if app.config["AGENT_VIEW"]:
        # Switched off, the console is not routed at all: every /agent/ path is a 404.
        from portal.agent import auth, dashboard  # noqa: F401 (dashboard adds the supervisor's pages to bp)
        from portal.agent.views import bp as agent_bp

        auth.init_app(app)
        app.register_blueprint(agent_bp, url_prefix="/agent")
    ops.init_app(app)
    return app


def _close_session(_error: BaseException | None) -> None:
    """A database lost since the request's last query fails the closing ROLLBACK: drop the connection
    instead of turning a finished response into a 500."""
    # Only the sessions this request opened (the extension keeps them in g); a page that never
    # touched the database should not create one just to close it.
    for session in g.get("_sqlalchemy_sessions", {}).values():
        try:
            session.close()
        except DBAPIError:
            session.invalidate()


def _tune_engine(engine: Any) -> None:
    """SQLite: write-ahead log so readers never wait for the importer, and foreign keys enforced."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
