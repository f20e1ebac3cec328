"""Interim stand-in for ``portal.throttle``'s Budget/attempt interface, until that lands on main.

Same names and signatures; it checks every budget before the work and counts after it (not
atomic under bursts). When main's throttle arrives, imports switch to it and this file goes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flask import current_app
from limits import parse_many

from portal.extensions import limiter


class Throttled(Exception):
    """A budget is used up; ``retry_after`` says in how many seconds it lets the caller in again."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class LimitStoreDown(Exception):
    """The limit store cannot be reached."""

    retry_after = 30


@dataclass(frozen=True)
class Budget:
    scope: str
    setting: str
    key: str
    refund_on_success: bool = True


class Attempt:
    def __init__(self) -> None:
        self.success = False

    def succeeded(self) -> None:
        self.success = True


def client_key(address: str | None) -> str:
    return f"client:{address or '-'}"


@contextmanager
def attempt(budgets: list[Budget], channel: str) -> Iterator[Attempt]:
    strategy = limiter.limiter
    for budget in budgets:
        for item in parse_many(current_app.config[budget.setting]):
            if not strategy.test(item, budget.scope, budget.key):
                reset = strategy.get_window_stats(item, budget.scope, budget.key).reset_time
                raise Throttled(max(1, int(reset - time.time())))
    outcome = Attempt()
    try:
        yield outcome
    finally:
        for budget in budgets:
            if outcome.success and budget.refund_on_success:
                continue
            for item in parse_many(current_app.config[budget.setting]):
                strategy.hit(item, budget.scope, budget.key)
