"""The application factory, and the ``portal`` command built on it: the only module that wires every
layer together (docs/architecture.md). Nothing in the package imports it; ``wsgi.py``, the
command's entry point and the tests do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from inspect import iscoroutinefunction
from typing import Any

from flask import Flask, Response, g, request
from flask.cli import FlaskGroup
from flask_babel import get_locale
from limits.storage import storage_from_string
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from portal import cli, errors, events, i18n, logs, ops, security, telemetry, throttle

# Each module of the console adds its pages to agent_bp: by who uses them (portal/agent/blueprint.py).
from portal.agent import account, auth, calls, dashboard, lost_letters, staff_accounts, supervisor  # noqa: F401
from portal.agent.blueprint import bp as agent_bp
from portal.api import errors as api_errors
from portal.api.views import bp as api_bp
from portal.config import asset_dir, load_config
from portal.extensions import babel, csrf, db
from portal.public.views import bp as public_bp
from portal.services import EXTENSION, build_services, services


class Portal(Flask):
    """Flask, asking once per function whether it is a coroutine function: Flask asks of every
    hook and view it runs (``ensure_sync``), seven times a landing page."""

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        return self.async_to_sync(func) if _is_coroutine_function(func) else func


_is_coroutine_function = lru_cache(maxsize=1024)(iscoroutinefunction)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    app = Portal(
        "portal",  # the package: its instance folder, and the ``portal`` logger the app logs to
        template_folder=asset_dir("templates"),
        static_folder=asset_dir("static"),
        instance_relative_config=True,
    )
    load_config(app, test_config)
    app.extensions[EXTENSION] = build_services(app.config)
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

    logs.init_app(app)
    events.init_app(app)
    telemetry.init_app(app)
    security.init_app(app)
    # One hook before every request and one after it, each doing the work of several: every hook
    # costs Flask a lookup and a check of whether it is a coroutine, and every ``request`` read in
    # one a lookup of the proxy. The request is looked up once and passed on.
    app.before_request(_before_request)
    app.after_request(_after_request)
    throttle.init_app(app)
    cli.init_app(app)
    errors.init_app(app, routing_errors={"/api/": api_errors.http_problem})  # any version's 404 in JSON
    app.register_blueprint(public_bp)
    app.register_blueprint(api_bp)
    if app.config["AGENT_VIEW"]:
        # Switched off, the console is not routed at all: every /agent/ path is a 404.
        auth.init_app(app)
        app.register_blueprint(agent_bp, url_prefix="/agent")
    ops.init_app(app)
    return app


def _before_request() -> Response | None:
    """The CSRF check (a refused request goes no further), a language switch's redirect, the request id."""
    req = request._get_current_object()  # type: ignore[attr-defined]
    security.check_csrf(req)
    switched = i18n.switch_language(req)
    if switched is not None:
        return switched
    telemetry.start_request(req)
    return None


def _after_request(response: Response) -> Response:
    """The security headers, then the X-Request-ID, the metrics and the request's log line."""
    req = request._get_current_object()  # type: ignore[attr-defined]
    security.add_security_headers(req, response)
    telemetry.finish_request(req, response)
    return response


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


main = FlaskGroup(
    create_app=create_app,
    add_version_option=False,
    load_dotenv=False,
    help="Affected-patient portal: set PORTAL_* variables, then run a command below.",
)
main.add_command(cli.demo_command)
