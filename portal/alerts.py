"""Attack detection: a guessing campaign on this site raises an alert while it happens.

Every event goes through ``Detector.observe`` (from ``portal.events.record``). Failed and refused
verifications are counted in fixed windows in the rate-limit store (Redis in production, so all
workers and servers add to the same counts); the request that takes a count exactly to its
threshold raises the alert, so each alert is raised once per window whatever the number of
processes. Signals, each a setting (``limits`` notation, as the failure limits):

* ``failure-rate``: failed or refused verifications on the whole site, above
  ``ALERT_FAILURE_FACTOR`` times the usual rate (the last week's hourly counts) and at least
  ``ALERT_FAILURE_FLOOR``;
* ``person-limits``: refusals by the per-person limit (people being guessed at), ``ALERT_PERSON_LIMITS``;
* ``client-failures``: one client address (IPv6 folded to its /64), ``ALERT_CLIENT_FAILURES``;
* ``partner-failures``: one partner API key, ``ALERT_PARTNER_FAILURES``;
* ``agent-failures``: one call-center agent, ``ALERT_AGENT_FAILURES``.

No HTTP here; the store and the usual rate are handed in, so a test can replay a history.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from limits import RateLimitItem, parse

from portal.logs import Fields

log = logging.getLogger("portal.alerts")

USUAL_RATE_TTL_SECONDS = 600  # how long a process keeps the usual failure rate before reading it again


# What each alert means, in the words the dashboard shows.
KINDS = {
    "failure-rate": "Failed verifications far above their usual rate",
    "person-limits": "Many people reaching their failure limit",
    "client-failures": "One client address failing far more than usual",
    "partner-failures": "One partner key failing far more than usual",
    "agent-failures": "One agent failing verifications repeatedly",
}


class Counters(Protocol):
    """A shared store of expiring counters: ``limits``' storages (Redis, memory) are one."""

    def incr(self, key: str, expiry: int, amount: int = 1) -> int: ...


@dataclass(frozen=True)
class Thresholds:
    failure_factor: float
    failure_floor: RateLimitItem
    person_limits: RateLimitItem
    client_failures: RateLimitItem
    partner_failures: RateLimitItem
    agent_failures: RateLimitItem

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Thresholds:
        return cls(
            failure_factor=float(config["ALERT_FAILURE_FACTOR"]),
            failure_floor=parse(config["ALERT_FAILURE_FLOOR"]),
            person_limits=parse(config["ALERT_PERSON_LIMITS"]),
            client_failures=parse(config["ALERT_CLIENT_FAILURES"]),
            partner_failures=parse(config["ALERT_PARTNER_FAILURES"]),
            agent_failures=parse(config["ALERT_AGENT_FAILURES"]),
        )


@dataclass(frozen=True)
class Alert:
    kind: str
    channel: str
    count: int  # events in the window when the alert was raised (the threshold)
    window_seconds: int
    window_start: datetime
    # The client /64, partner key id or staff id that failed, for the operator; never a person.
    subject: str | None = None

    def log_fields(self) -> Fields:
        fields = asdict(self)
        return Fields(alert=fields.pop("kind"), **fields)


class Detector:
    """Counts the failures an event belongs to and returns the alerts it raises (usually none)."""

    def __init__(
        self,
        thresholds: Thresholds,
        counters: Counters,
        usual_failures_per_minute: Callable[[datetime], float],
        client_key: Callable[[str | None], str],
        key_prefix: str = "portal",
    ) -> None:
        self.thresholds = thresholds
        self.counters = counters
        self.usual_failures_per_minute = usual_failures_per_minute
        self.client_key = client_key  # as the failure limits count a client: IPv6 folded to its /64
        self.key_prefix = f"{key_prefix}:alert"

    def observe(self, action: str, outcome: str, channel: str, client: str | None, actor: str | None,
                at: datetime) -> list[Alert]:  # fmt: skip
        if action != "verification" or not (outcome == "failure" or outcome.startswith("throttled:")):
            return []
        t = self.thresholds

        def site_threshold() -> int:
            usual = self.usual_failures_per_minute(at) * t.failure_floor.get_expiry() / 60
            return max(t.failure_floor.amount, math.ceil(t.failure_factor * usual))

        checks: list[tuple[str, RateLimitItem, str | None, Callable[[], int] | None]] = [
            ("failure-rate", t.failure_floor, None, site_threshold)
        ]
        if outcome.startswith("throttled:verify-person"):
            checks.append(("person-limits", t.person_limits, None, None))
        if client:
            checks.append(("client-failures", t.client_failures, self.client_key(client), None))
        if actor and channel == "api":
            checks.append(("partner-failures", t.partner_failures, actor, None))
        if actor and channel == "agent":
            checks.append(("agent-failures", t.agent_failures, actor, None))
        return [alert for check in checks if (alert := self._count(*check, channel=channel, at=at))]

    def _count(self, kind: str, item: RateLimitItem, subject: str | None, threshold: Callable[[], int] | None, *,
               channel: str, at: datetime) -> Alert | None:  # fmt: skip
        """Count one; an alert when this count is the threshold. ``threshold`` (at least ``item.amount``)
        is only worked out once the count reaches ``item.amount``: quiet traffic never reads the usual rate."""
        seconds = item.get_expiry()
        window = int(at.timestamp()) // seconds
        count = self.counters.incr(f"{self.key_prefix}:{kind}:{subject or '-'}:{window}", 2 * seconds)
        # Exactly one caller sees each count: one alert per window.
        if count < item.amount or count != (threshold() if threshold else item.amount):
            return None
        return Alert(kind, channel, count, seconds, datetime.fromtimestamp(window * seconds, UTC), subject)


class CachedRate:
    """The usual failure rate, read from the database at most every ``ttl`` seconds per process
    (and again when the hour changes, so a replayed history sees its own past)."""

    def __init__(self, read: Callable[[datetime], float], ttl: float = USUAL_RATE_TTL_SECONDS) -> None:
        self._read = read
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cached: tuple[float, datetime, float] | None = None  # (read at, hour, rate)

    def __call__(self, at: datetime) -> float:
        hour = at.replace(minute=0, second=0, microsecond=0)
        with self._lock:
            cached = self._cached
            if cached and cached[1] == hour and time.monotonic() - cached[0] < self._ttl:
                return cached[2]
        rate = self._read(at)
        with self._lock:
            self._cached = (time.monotonic(), hour, rate)
        return rate


def announce(alert: Alert) -> None:
    """One structured WARNING line for the operators' log pipeline."""
    log.warning(alert.log_fields())
