"""Guessing resistance: failed verifications are counted per person, per client and overall.

* Per person — a keyed hash of the normalised last name and birth date, computed from the
  request alone, so the bucket behaves identically whether or not the person is on the list.
  It stops someone who knows a name, birth date and ZIP from walking through the 10,000
  possible last-four digits from many addresses: back-off after 5 failures, and a hard cap
  of 100 a year (NIST SP 800-63B's limit on consecutive failures).
* Per client address — slows one machine trying many people.
* Overall — a ceiling on the guessing rate the whole portal will serve.

Only failures count (``deduct_when``): a person who verifies is never throttled by
their own success. Every surface that verifies wraps its view with ``guard_verification``
and calls ``note_failure`` on a miss, so all surfaces share the same buckets.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial, wraps
from typing import Any, TypeVar, cast

from flask import Flask, current_app, g, request
from flask.wrappers import Response
from flask_limiter import RequestLimit
from limits import RateLimitItem, parse_many
from limits.strategies import FixedWindowRateLimiter

from portal import services
from portal.events import Event, record
from portal.extensions import limiter
from portal.identity import IdentityClaim, InvalidIdentifier, normalise_last_name, parse_birth_date

View = TypeVar("View", bound=Callable[..., Any])

UNPARSEABLE = "unparseable"  # malformed input is refused before hashing and never counted
GUARDED = "verification_guarded"  # set in g by guard_verification; Flask-Limiter's hooks then run


def init_app(app: Flask) -> None:
    """Bind Flask-Limiter, with its per-request passes only where a limit applies.

    Flask-Limiter hooks three passes into every request. Before it, it evaluates default,
    application and blueprint limits, and the portal has none: each limit is a view decorator
    (``guard_verification``), checked by the decorator itself, so that pass is dropped. After it,
    it settles ``deduct_when`` deductions and resets its request state, which only a guarded view
    ever has, so those two run for guarded views only. The first cost a seventh of every page, the
    other two a further twelfth. ``tests/test_throttle.py`` fails if a limit of another kind is
    ever declared, if a page runs the two, or if a failure stops being counted.
    """
    limiter.init_app(app)
    before = app.before_request_funcs.get(None, [])
    if limiter._check_request_limit in before:  # absent when RATELIMIT_ENABLED is false
        before.remove(limiter._check_request_limit)
    for hooks in (app.after_request_funcs.get(None, []), app.teardown_request_funcs.get(None, [])):
        hooks[:] = [_for_guarded_views(hook) if _bound_to_limiter(hook) else hook for hook in hooks]


def _bound_to_limiter(hook: Any) -> bool:
    """Flask-Limiter registers a bound method and a ``partial`` with the limiter as first argument."""
    owner = hook.args[0] if isinstance(hook, partial) and hook.args else getattr(hook, "__self__", None)
    return owner is limiter


def _for_guarded_views(hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """An after-request or teardown hook that runs only for a request ``guard_verification`` saw."""

    def hook_when_guarded(value: Any) -> Any:
        return hook(value) if g.get(GUARDED) else value

    return hook_when_guarded


def person_key() -> str:
    """The per-person bucket, from the submitted last name and date of birth (form or JSON)."""
    data: Any = request.get_json(silent=True) if request.is_json else request.form
    if not hasattr(data, "get"):  # a JSON body that is not an object
        return UNPARSEABLE
    try:
        last_name = normalise_last_name(str(data.get("last_name", "")))
        born = parse_birth_date(str(data.get("date_of_birth", "")))
    except InvalidIdentifier:
        return UNPARSEABLE
    return "person:" + services().hasher.person_bucket(last_name, born)


def whole_portal() -> str:
    return "portal"


def note_failure() -> None:
    """Called by a view when a verification did not match: the limits below deduct one."""
    g.verification_failed = True


def _failed(_response: Response) -> bool:
    return bool(g.get("verification_failed"))


def _on_breach(breached: RequestLimit) -> None:
    scope = breached.request_args[-1]  # Flask-Limiter passes (key, scope); the key stays out of the event
    record(Event("verification", f"throttled:{scope}", request.blueprint or "-", client=request.remote_addr))


def seconds_until_retry(default: int) -> int:
    """For the Retry-After of a 429: when the limit this request broke lets the client in again."""
    breached = limiter.current_limit
    try:
        return max(1, breached.reset_at - int(time.time())) if breached else default
    except Exception:  # the limit store went away since the check (Redis lost): any honest hint will do
        return default


def _config_limit(name: str) -> Callable[[], str]:
    return lambda: current_app.config[name]


def guard_verification(view: View) -> View:
    """Apply the three shared failure limits to a verifying view (POST only)."""
    limited = view
    for scope, key_func, setting in (
        ("verify-person", person_key, "VERIFY_LIMIT_PERSON"),
        ("verify-client", None, "VERIFY_LIMIT_CLIENT"),
        ("verify-global", whole_portal, "VERIFY_LIMIT_GLOBAL"),
    ):
        limited = limiter.shared_limit(
            _config_limit(setting),
            scope=scope,
            key_func=key_func,
            methods=["POST"],
            deduct_when=_failed,
            on_breach=_on_breach,
        )(limited)

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        g.setdefault(GUARDED, True)
        return limited(*args, **kwargs)

    return cast(View, guarded)


# --- Budgets counted before the hash ---------------------------------------------------------------
# The interface every verifying surface codes against: each attempt is counted atomically, in every
# budget it belongs to, BEFORE the Argon2 hash, so a burst of simultaneous guesses cannot all get
# through; a success gives back what it reserved in the failure budgets.


class Throttled(Exception):
    """A budget is spent: refuse with 429 and ``Retry-After: retry_after``."""

    def __init__(self, scope: str, retry_after: int) -> None:
        super().__init__(scope)
        self.scope = scope
        self.retry_after = retry_after


class LimitStoreDown(Exception):
    """The limit store cannot be reached: refuse (503) rather than verify uncounted."""

    retry_after = 30


@dataclass(frozen=True)
class Budget:
    """One counter family: ``setting`` names the config key holding its limit string."""

    scope: str
    setting: str
    key: str
    refund_on_success: bool = True


def person_budget(claim: IdentityClaim, surface: str, setting: str) -> Budget:
    """Keyed on the normalised claim's name and birth date: the same whether or not the person exists."""
    return Budget(f"{surface}-person", setting, services().hasher.person_bucket(claim.last_name, claim.date_of_birth))


def client_key(address: str | None) -> str:
    """A client address as a bucket key; IPv6 folded to its /64, which one subscriber usually holds."""
    try:
        parsed = ipaddress.ip_address(address or "")
    except ValueError:
        return "unknown"
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


class Attempt:
    def __init__(self) -> None:
        self.success = False

    def succeeded(self) -> None:
        self.success = True


@contextmanager
def attempt(budgets: list[Budget], channel: str) -> Iterator[Attempt]:
    """Reserve one attempt in every budget (all or none), run the block, refund on success."""
    counter = FixedWindowRateLimiter(limiter.storage)
    prefix = current_app.config["RATELIMIT_KEY_PREFIX"]
    reserved: list[tuple[RateLimitItem, tuple[str, ...], bool]] = []
    try:
        for budget in budgets:
            names = (prefix, budget.scope, budget.key)
            for item in parse_many(current_app.config[budget.setting]):
                reserved.append((item, names, budget.refund_on_success))
                if not counter.hit(item, *names):
                    stats = counter.get_window_stats(item, *names)
                    _give_back(counter, reserved)
                    raise Throttled(budget.scope, max(1, int(stats.reset_time - time.time())))
    except limiter.storage.base_exceptions as error:
        raise LimitStoreDown() from error
    outcome = Attempt()
    yield outcome
    if outcome.success:
        try:
            _give_back(counter, [entry for entry in reserved if entry[2]])
        except limiter.storage.base_exceptions:
            pass  # the store went away: the success stays counted as a failure, which errs on the safe side


def _give_back(counter: FixedWindowRateLimiter, reserved: list[tuple[RateLimitItem, tuple[str, ...], bool]]) -> None:
    for item, names, _refundable in reserved:
        counter.storage.incr(item.key_for(*names), item.get_expiry(), amount=-1)
