"""Bearer keys and each key's own request rate, applied to every partner endpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import g, request
from flask.wrappers import Response
from flask_limiter import RequestLimit
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter
from werkzeug.exceptions import Forbidden, Unauthorized

from portal.extensions import db, limiter
from portal.partner_keys import PartnerKey, authenticate
from portal.throttle import with_limiter_hooks

View = TypeVar("View", bound=Callable[..., Any])

KEY_RATE_SCOPE = "api-key"
BUDGET_REFUSAL = "api_budget_refusal"  # set in g when a budget, not the key's rate, refused the request
MAX_AUTHORIZATION = 200


def current_key() -> PartnerKey:
    return cast(PartnerKey, g.api_key)


def _bearer_key() -> PartnerKey:
    """The key of this request, read from its row now: a revocation counts from the next request."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip() or len(header) > MAX_AUTHORIZATION:
        raise Unauthorized("Send the key as Authorization: Bearer KEY.")
    key = authenticate(db.session, credentials.strip())
    if key is None:
        raise Unauthorized("This key is unknown, revoked or expired.")
    return key


def partner_view(scope: str | None = None) -> Callable[[View], View]:
    """Require a live key (with ``scope``, when given), then count the request against the key's rate.

    The rate is a Flask-Limiter limit keyed on the key's public prefix, so every process and server
    sharing the limit store counts the same requests; ``rate_limit_headers`` describes it and
    nothing else. Marked ``with_limiter_hooks`` so Flask-Limiter's after-request pass runs for it.
    """

    def decorate(view: View) -> View:
        rate_limited = limiter.shared_limit(
            lambda: current_key().rate, scope=KEY_RATE_SCOPE, key_func=lambda: current_key().prefix
        )(view)

        @with_limiter_hooks
        @wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            key = g.api_key = _bearer_key()
            if scope is not None and scope not in key.scopes:
                raise Forbidden(f"This key does not have the {scope} scope.")
            return rate_limited(*args, **kwargs)

        return cast(View, checked)

    return decorate


def rate_limit_headers(response: Response) -> Response:
    """``X-RateLimit-*`` for the key's own rate (the only Flask-Limiter limit on a partner view), on the
    answers it counted; not on a refusal by a failure or people budget, which the key's rate did not
    make and whose ``Remaining`` would read as room to retry."""
    current = limiter.current_limit if g.get("api_key") and not g.get(BUDGET_REFUSAL) else None
    if current is None:
        return response
    try:
        reset_at, remaining = _window(current)
    except Exception:  # the limit store went away since the check: the answer stands without hints
        return response
    response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
    response.headers["X-RateLimit-Remaining"] = str(remaining)
    response.headers["X-RateLimit-Reset"] = str(reset_at)
    return response


def _window(current: RequestLimit) -> tuple[int, int]:
    """(reset_at, remaining) as ``current.reset_at`` and ``current.remaining`` give them, in one round
    trip on Redis: the fixed window's count and its expiry, which Flask-Limiter reads one after the other."""
    storage = limiter.storage
    if not isinstance(storage, RedisStorage) or not isinstance(limiter.limiter, FixedWindowRateLimiter):
        return current.reset_at, current.remaining
    key = storage.prefixed_key(current.key)
    count, ttl = storage.get_connection(True).pipeline(transaction=False).get(key).ttl(key).execute()
    return int(max(ttl, 0) + time.time() + 1), max(0, current.limit.amount - int(count or 0))
