"""Guessing resistance: every verification attempt is counted before it is hashed.

A surface (the public site, the console, the API) describes an attempt as a list of budgets —
per person, per client address, per staff member or key, for the whole portal — and runs the
lookup inside ``attempt``. The attempt takes one unit from every budget *before* the Argon2
hash starts, each with one atomic increment in the shared limit store, and is refused as soon
as one budget is spent. So N simultaneous requests can never be answered more often than the
budgets allow, however many workers, threads or servers take them: the count is settled before
anyone learns an answer.

A success gives back what it took from the *failure* budgets (a person who verifies is never
locked out by their own visits); *attempt* budgets keep it (one address cannot verify its own
identity thousands of times a minute); *people* budgets keep only what successes took: they count
the different people one client verified, because whoever holds the stolen records never fails
(SECURITY.md). An attempt that ends in an error gives everything back: its caller learnt nothing.

The counters are fixed windows (an integer per budget and window, expiring with the window):
unlike a moving window, a counter can be given back atomically. While the limit store cannot be
reached, verifications are refused (``LimitStoreDown``, 503): counting in each process's memory
instead would multiply every budget by the number of processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache, partial, wraps
from typing import Any

from flask import Flask, current_app, g
from limits import RateLimitItem, parse_many
from limits.storage import RedisClusterStorage, RedisStorage, Storage

from portal.events import Event, record
from portal.extensions import limiter
from portal.identity import IdentityClaim
from portal.network import client_key, client_network
from portal.services import services

LIMIT_STORE_RETRY_AFTER = 30  # seconds a client is asked to wait while the limit store is unreachable
LIMITER_HOOKS = "limiter_hooks"  # set in g by views that carry a Flask-Limiter limit of their own


class Throttled(Exception):
    """A budget this attempt belongs to is spent; nothing was hashed. Answer 429 with Retry-After."""

    def __init__(self, scope: str, retry_after: int) -> None:
        super().__init__(scope)
        self.scope = scope
        self.retry_after = retry_after


class LimitStoreDown(Exception):
    """The shared limit store cannot be reached: refuse (503) rather than count per process."""

    retry_after = LIMIT_STORE_RETRY_AFTER


@dataclass(frozen=True)
class Budget:
    """One family of counters: ``setting`` names the limits ("5 per 15 minutes; 100 per year"),
    ``key`` whom they count. ``refund_on_success``: a failure budget (True) or an attempt budget.

    With a ``member`` the budget counts *distinct* members (people) per ``key``: the same member
    again takes nothing, so it is never refused by it. ``refund_on_failure`` makes it count only
    the members whose attempt succeeded. ``hide_window``: a budget strangers share (a person's, keyed
    on a name and birth date anyone may type) answers with its full window, never the seconds left,
    which would tell when someone else last tried."""

    scope: str
    setting: str
    key: str
    refund_on_success: bool = True
    refund_on_failure: bool = False
    member: str | None = None
    hide_window: bool = False


@dataclass(frozen=True)
class _Hold:
    budget: Budget
    counter: str


class Attempt:
    """Handed to the body of ``attempt``: the caller says when the verification succeeded."""

    def __init__(self) -> None:
        self.success = False

    def succeeded(self) -> None:
        self.success = True


# --- Budgets -------------------------------------------------------------------------------------


def person_key(claim: IdentityClaim) -> str:
    """Keyed on exactly the normalised name and birth date the lookup hashes: no spelling, padding
    or encoding of the same person reaches another bucket, and the key is the same whether or not
    the person exists."""
    return services().hasher.person_bucket(claim.last_name, claim.date_of_birth)


def person_budgets(claim: IdentityClaim, surface: str, setting: str) -> list[Budget]:
    """A person's failures: the surface's own short window (``setting``), and the day and year that
    the site, the API and the console share, so that spreading guesses over the three gains nothing."""
    key = person_key(claim)
    return [
        Budget(f"verify-person-{surface}", setting, key, hide_window=True),
        Budget("verify-person", "VERIFY_LIMIT_PERSON_SHARED", key, hide_window=True),
    ]


def people_budget(scope: str, setting: str, key: str, claim: IdentityClaim) -> Budget:
    """The different people ``key`` (a client network, a partner key) verified: only successes count,
    and the same person again never does."""
    return Budget(scope, setting, key, refund_on_success=False, refund_on_failure=True, member=person_key(claim))


PEOPLE_SCOPE = "verify-client-people"  # a refusal by it sends a real person to the call center
GLOBAL_BUDGET = Budget("verify-global", "VERIFY_LIMIT_GLOBAL", "portal")


def public_budgets(claim: IdentityClaim, address: str | None) -> list[Budget]:
    """The public site's budgets: see SECURITY.md for the numbers and why."""
    client = client_key(address)
    return [
        *person_budgets(claim, "public", "VERIFY_LIMIT_PERSON"),
        Budget("verify-client", "VERIFY_LIMIT_CLIENT", client),
        Budget("verify-client-attempts", "VERIFY_LIMIT_CLIENT_ATTEMPTS", client, refund_on_success=False),
        people_budget(PEOPLE_SCOPE, "VERIFY_LIMIT_CLIENT_PEOPLE", client_network(address), claim),
        GLOBAL_BUDGET,
    ]


# --- Counting ------------------------------------------------------------------------------------


@contextmanager
def attempt(
    budgets: Sequence[Budget], channel: str, client: str | None = None, actor: str | None = None
) -> Iterator[Attempt]:
    """Count one attempt in every budget, then run the body (the lookup).

    Raises ``Throttled`` or ``LimitStoreDown`` before the body when the attempt may not proceed
    (``client``, the address, and ``actor``, who acted for the person, go into that event).
    """
    holds = _reserve(budgets, Event("verification", "", channel, client=client, actor=actor))
    outcome = Attempt()
    try:
        yield outcome
    except BaseException:
        _give_back(holds)
        raise
    if outcome.success:
        _give_back([hold for hold in holds if hold.budget.refund_on_success])
    else:
        _give_back([hold for hold in holds if hold.budget.refund_on_failure])


def limit_store() -> Storage:
    """This app's limit store (``PORTAL_RATELIMIT_STORAGE_URI``), made once in ``create_app``: the
    budgets, attack detection, readiness and the purge all count in it. (Flask-Limiter's own
    storage is the extension's, rebound by every app in a process; only the API's key rate uses it.)"""
    return current_app.extensions["portal.limit_store"]


@cache
def _limits(text: str) -> list[RateLimitItem]:
    return parse_many(text)


def _counters(budget: Budget) -> Iterator[tuple[str, RateLimitItem]]:
    prefix = current_app.config["RATELIMIT_KEY_PREFIX"]
    for item in _limits(current_app.config[budget.setting]):
        yield item.key_for(prefix, budget.scope, budget.key), item


def _reserve(budgets: Sequence[Budget], refused: Event) -> list[_Hold]:
    """One unit from every counter at once; when any is past its limit, all are given back."""
    store = limit_store()
    counted = [(_Hold(budget, counter), item) for budget in budgets for counter, item in _counters(budget)]
    holds = [hold for hold, _item in counted]
    counts: list[int] | None = None
    try:
        counts = _add(store, [(hold, item.get_expiry()) for hold, item in counted], 1)
        spent_at = next(((hold, item) for (hold, item), count in zip(counted, counts, strict=True)
                         if count > item.amount), None)  # fmt: skip
        retry_after = _retry_after(store, *spent_at) if spent_at else 0
    except (store.base_exceptions, OSError) as error:  # the store's own errors, and a lost socket
        # Lost while adding, whether the units were taken is not known: they stay counted, erring on
        # the side of counting. Lost after, they were: given back (best effort), as by any refusal.
        if counts is not None:
            _give_back(holds)
        record(replace(refused, outcome="limit-store-down"))
        raise LimitStoreDown() from error
    if spent_at is not None:
        _give_back(holds)
        scope = spent_at[0].budget.scope
        record(replace(refused, outcome=f"throttled:{scope}"))
        raise Throttled(scope, retry_after)
    return holds


def _retry_after(store: Storage, hold: _Hold, item: RateLimitItem) -> int:
    """When the spent counter lets this client in again; the full window for a budget strangers share."""
    if hold.budget.hide_window:
        return item.get_expiry()
    return max(1, int(store.get_expiry(hold.counter) - time.time()) + 1)


def _give_back(holds: Sequence[_Hold]) -> None:
    """Best effort: a unit that cannot be given back (store lost) errs on the side of counting. A
    counter whose window ended meanwhile is made again below zero, for a second only (its expiry)."""
    store = limit_store()
    try:
        _add(store, [(hold, 1) for hold in holds], -1)
    except (store.base_exceptions, OSError):
        return


def _marker(hold: _Hold) -> str:
    """A distinct budget's member counter: how many attempts of this member hold or kept a unit."""
    return f"{hold.counter}/{hold.budget.member}"


# INCRBY then EXPIRE on a new counter, as the limit store's own increment, for every key at once:
# an attempt touches up to ten counters, and one round trip to Redis costs more than the rest of
# the counting. A script runs atomically, so every counter moves together. A distinct budget's
# counter moves only when its member's own counter goes from 0 to 1 (taken) or 1 to 0 (given
# back, and then deleted): concurrent attempts for one member count once, whichever of them is
# given back first.
_ADD_TO_ALL = """
local amount = tonumber(ARGV[1])
local n = #KEYS
local counts = {}
for i, key in ipairs(KEYS) do
    local expiry = ARGV[i + 1]
    local marker = ARGV[n + i + 1]
    local step = amount
    if marker ~= "" then
        local holders = redis.call("incrby", marker, amount)
        if holders == amount then
            redis.call("expire", marker, expiry)
        end
        if not ((amount > 0 and holders == 1) or (amount < 0 and holders == 0)) then
            step = 0
        end
        if holders <= 0 then
            redis.call("del", marker)
        end
    end
    if step == 0 then
        counts[i] = 0
    else
        counts[i] = redis.call("incrby", key, step)
        if counts[i] == step then
            redis.call("expire", key, expiry)
        end
    end
end
return counts
"""


def _add(store: Storage, counters: Sequence[tuple[_Hold, int]], amount: int) -> list[int]:
    """Add ``amount`` to each (counter, expiry in seconds); the new counts (0 for a distinct budget
    whose member was already counted). One round trip on Redis (not on a cluster, where one script
    may not touch keys of different slots)."""
    if not counters:
        return []
    if isinstance(store, RedisStorage) and not isinstance(store, RedisClusterStorage):
        keys = [store.prefixed_key(hold.counter) for hold, _expiry in counters]
        markers = [store.prefixed_key(_marker(hold)) if hold.budget.member is not None else "" for hold, _ in counters]
        counts = _script(store)(keys, [amount, *(expiry for _hold, expiry in counters), *markers])
        return [int(count) for count in counts]
    return [_add_one(store, hold, expiry, amount) for hold, expiry in counters]


def _add_one(store: Storage, hold: _Hold, expiry: int, amount: int) -> int:
    """The script's work for one counter, on a store without scripts (memory://: one process)."""
    if hold.budget.member is not None:
        holders = store.incr(_marker(hold), expiry, amount=amount)
        if holders <= 0:
            store.clear(_marker(hold))  # a failure leaves no trace of the person
        if holders != (1 if amount > 0 else 0):
            return 0
    return store.incr(hold.counter, expiry, amount=amount)


@cache
def _script(store: RedisStorage) -> Any:
    return store.get_connection().register_script(_ADD_TO_ALL)


# --- Flask-Limiter --------------------------------------------------------------------------------


def init_app(app: Flask) -> None:
    """Bind Flask-Limiter (it owns the limit store), with its per-request passes only where used.

    Flask-Limiter hooks three passes into every request. The before-request pass evaluates default,
    application and blueprint limits, and the portal declares none (``tests/test_throttle.py``
    checks), so it is dropped. The after-request and teardown passes only matter to a view that
    carries a Flask-Limiter decorator; such a view is wrapped in ``with_limiter_hooks``, and every
    other page skips them (they cost a fifth of a page).
    """
    limiter.init_app(app)
    before = app.before_request_funcs.get(None, [])
    if limiter._check_request_limit in before:  # absent when RATELIMIT_ENABLED is false
        before.remove(limiter._check_request_limit)
    for hooks in (app.after_request_funcs.get(None, []), app.teardown_request_funcs.get(None, [])):
        hooks[:] = [_only_with_limiter_hooks(hook) if _bound_to_limiter(hook) else hook for hook in hooks]


def with_limiter_hooks(view: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a view whose Flask-Limiter decorators need the after-request and teardown passes.


    Outermost, above the Flask-Limiter decorators, so that a refused request is marked too.
    """

    @wraps(view)
    def marked(*args: Any, **kwargs: Any) -> Any:
        g.setdefault(LIMITER_HOOKS, True)
        return view(*args, **kwargs)

    return marked


def _bound_to_limiter(hook: Any) -> bool:
    """Flask-Limiter registers a bound method and a ``partial`` with the limiter as first argument."""
    owner = hook.args[0] if isinstance(hook, partial) and hook.args else getattr(hook, "__self__", None)
    return owner is limiter


def _only_with_limiter_hooks(hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def hook_when_marked(value: Any) -> Any:
        return hook(value) if g.get(LIMITER_HOOKS) else value

    return hook_when_marked
