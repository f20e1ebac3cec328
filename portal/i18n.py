"""Languages: which one a visitor sees, how they switch, and the catalogues that translate the pages.

The choice comes from, in order: the visitor's own pick (a ``?lang=es`` link on every page,
remembered in a cookie for the visit) and their browser's ``Accept-Language``, then English.

Catalogues are the committed ``.po`` files, compiled in memory when the app starts (there are no
``.mo`` files to build, ship or let go stale): a fresh clone serves every language at once.
"""

from __future__ import annotations

from functools import cache, lru_cache
from io import BytesIO
from pathlib import Path

from babel import Locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations
from flask import Flask, Request, current_app, g, has_request_context, redirect, request, url_for
from flask_babel import Domain, get_locale
from werkzeug.datastructures import LanguageAccept
from werkzeug.http import parse_accept_header
from werkzeug.wrappers import Response

from portal.config import ConfigError
from portal.extensions import babel

CATALOG_DIR = Path(__file__).resolve().parent / "translations"
DOMAIN = "messages"
# Each language's own name for itself: what a visitor looks for in a list of languages.
LANGUAGES: dict[str, str] = {"en": "English", "es": "Español", "fr": "Français"}
SWITCH_PARAMETER = "lang"


@cache
def _locale(code: str) -> Locale:
    return Locale.parse(code)


def compile_catalog(code: str) -> NullTranslations:
    """The language's ``.po`` file as a gettext catalogue (fuzzy entries left out, as msgfmt does)."""
    path = CATALOG_DIR / code / "LC_MESSAGES" / f"{DOMAIN}.po"
    if not path.exists():  # the source language
        return Translations()
    with path.open("rb") as po:
        catalog = read_po(po, locale=code, domain=DOMAIN)
    compiled = BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


class CompiledCatalogs(Domain):
    """Flask-Babel's domain, reading the catalogues compiled at start instead of ``.mo`` files on disk."""

    def get_translations_cache(self, ctx: object) -> dict[tuple[str, str], NullTranslations]:
        return current_app.extensions["portal.catalogs"]

    def get_translations(self) -> NullTranslations:
        """In a request, its catalogue as templates get it (``translations``): every lazy string asks
        for it when shown, and the exposure page shows dozens of them."""
        return translations() if has_request_context() else super().get_translations()


def select_locale() -> Locale:
    """The visitor's pick for this visit, else the best match for their browser, else the default."""
    # Every read of ``current_app`` or ``request`` is a lookup of the proxy: each is looked up once.
    app, req = current_app._get_current_object(), request._get_current_object()  # type: ignore[attr-defined]
    languages = app.config["LANGUAGES"]
    chosen = req.cookies.get(cookie_name(app))
    if chosen not in languages:
        accepted = req.environ.get("HTTP_ACCEPT_LANGUAGE", "")
        chosen = _browser_language(accepted, tuple(languages)) or app.config["BABEL_DEFAULT_LOCALE"]
    return _locale(chosen)


@lru_cache(maxsize=256)
def _browser_language(accepted: str, languages: tuple[str, ...]) -> str | None:
    """The best of ``languages`` for an ``Accept-Language`` header, as Werkzeug's
    ``request.accept_languages.best_match`` finds it. Browsers send few distinct headers, so each
    is parsed and matched once a process: on every request that was about a tenth of the
    landing page's instructions. At most 256 kept, whatever headers are sent."""
    return parse_accept_header(accepted, LanguageAccept).best_match(languages)


def cookie_name(app: Flask) -> str:
    # __Host-: sent only over HTTPS, only to this host, for the whole site (as the session cookie).
    return "__Host-lang" if app.config["SESSION_COOKIE_SECURE"] else "lang"


def _this_page() -> str:
    """This page's address for a GET, rebuilt from its route (never copied from the request, so a
    crafted path cannot point a link or a redirect at another site); the start page when there is none."""
    if request.url_rule is not None and request.endpoint != "static":
        here = url_for(request.endpoint, **(request.view_args or {}))
        if current_app.url_map.bind("").test(here, "GET"):
            return here
    return url_for("public.index")


def switch_language(req: Request) -> Response | None:
    """``GET any-page?lang=es``: remember the pick for the visit and show the same page again, cleanly.

    A step of the app's one before-request hook (``portal/app.py``), which passes it the request."""
    # Not on the console's or the operators' pages: a redirect there would answer paths that must
    # stay a 404 to whoever is outside their networks (an unknown path goes to the start page).
    # The query string is parsed only when there is one: the landing page has none.
    asked = req.method == "GET" and req.query_string and SWITCH_PARAMETER in req.args
    if not asked or req.blueprint not in (None, "public"):
        return None
    response = redirect(_this_page(), 303)
    chosen = req.args[SWITCH_PARAMETER]
    if chosen in current_app.config["LANGUAGES"]:
        # No expiry: the browser forgets it when the visit ends. It says only which language was picked.
        response.set_cookie(
            cookie_name(current_app),
            chosen,
            secure=current_app.config["SESSION_COOKIE_SECURE"],
            httponly=True,
            samesite="Lax",
        )
    return response


def language_links() -> list[dict[str, str]]:
    """The other languages, each a plain link to this same page in that language (no script needed)."""
    here = _this_page()
    current = str(get_locale())
    return [
        {"code": code, "name": LANGUAGES[code], "href": f"{here}?{SWITCH_PARAMETER}={code}"}
        for code in current_app.config["LANGUAGES"]
        if code != current
    ]


def init_app(app: Flask) -> None:
    languages = app.config["LANGUAGES"]
    unknown = [code for code in languages if code not in LANGUAGES]
    if unknown or app.config["BABEL_DEFAULT_LOCALE"] not in languages:
        raise ConfigError(
            f"PORTAL_LANGUAGES must be some of {', '.join(LANGUAGES)} and include PORTAL_BABEL_DEFAULT_LOCALE."
        )
    babel.domain_instance = CompiledCatalogs()  # the same for every app: it reads the app's own catalogues
    app.extensions["portal.catalogs"] = {(code, DOMAIN): compile_catalog(code) for code in app.config["LANGUAGES"]}
    app.jinja_env.globals["language_links"] = language_links


def translations() -> NullTranslations:
    """The request's catalogue, looked up once per request (templates call it for every string)."""
    if "translations" not in g:
        g.translations = current_app.extensions["portal.catalogs"][str(get_locale()), DOMAIN]
    return g.translations
