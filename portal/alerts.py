"""Attack detection: a guessing campaign, or a thief who holds the answers, raises an alert while it happens.

Every event goes through ``Detector.observe`` (from ``portal.events.record``). Events are counted
in fixed windows in the rate-limit store (Redis in production, so all workers and servers add to
the same counts); the request that takes a count exactly to its threshold raises the alert, so
each alert is raised once per window whatever the number of processes. Signals, each a setting
(``limits`` notation, as the failure limits):

Failed and refused verifications (someone guessing):

* ``failure-rate``: on the whole site, above ``ALERT_FAILURE_FACTOR`` times the usual rate (the
  last week's hourly counts) and at least ``ALERT_FAILURE_FLOOR``;
* ``person-limits``: refusals by the per-person limit (people being guessed at), ``ALERT_PERSON_LIMITS``;
* ``client-failures``: one client address (IPv6 folded to its /64), ``ALERT_CLIENT_FAILURES``;
* ``partner-failures``: one partner API key, ``ALERT_PARTNER_FAILURES``;
* ``agent-failures``: one call-center agent, ``ALERT_AGENT_FAILURES``.

Successes (someone who holds the stolen records never fails, so only what they succeed at shows):

* ``client-people``: distinct people verified on the public site from one network (IPv4 /24,
  IPv6 /64), ``ALERT_CLIENT_PEOPLE``;
* ``client-claims``: codes claimed on the public site from one network, ``ALERT_CLIENT_CLAIMS``;
* ``partner-claims``: codes claimed with one partner key, ``ALERT_PARTNER_CLAIMS``;
* ``agent-people``: distinct callers verified by one agent, ``ALERT_AGENT_PEOPLE``;
* ``claim-rate``: codes claimed on the whole site, above ``ALERT_CLAIM_FACTOR`` times the usual
  rate and at least ``ALERT_CLAIM_FLOOR``;
* ``success-share``: the share of the site's verifications that succeed, above
  ``ALERT_SUCCESS_SHARE`` once at least ``ALERT_SUCCESS_SHARE_MINIMUM`` succeeded in the window.

The network signals count the public site only: a partner's server and the call center's
address verify many people each by design, and are counted per key and per agent instead.
A success-side alert starts the step-up (``Detector.step_up_active``): claims need the letter's
reference for at least ``ALERT_STEP_UP_SECONDS``, on every process, as the store is shared.

No HTTP here; the store, the usual rates and the client folding are handed in, so a test can replay a history.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from limits import RateLimitItem, parse
from limits.storage import RedisClusterStorage, RedisStorage

from portal.logs import Fields

log = logging.getLogger("portal.alerts")

USUAL_RATE_TTL_SECONDS = 600  # how long a process keeps a usual rate before reading it again
# One counter holds a window's verifications: a success adds 1, a failure this much, so one round
# trip tells both (a window would need a million successes to overflow into the failures).
SHARE_FAILURE = 1 << 20


# What each alert means, in the words the dashboard shows.
KINDS = {
    "failure-rate": "Failed verifications far above their usual rate",
    "person-limits": "Many people reaching their failure limit",
    "client-failures": "One client address failing far more than usual",
    "partner-failures": "One partner key failing far more than usual",
    "agent-failures": "One agent failing verifications repeatedly",
    "client-people": "Many people verified from one network",
    "client-claims": "Many codes claimed from one network",
    "partner-claims": "Many codes claimed with one partner key",
    "agent-people": "One agent verifying callers faster than calls allow",
    "claim-rate": "Codes claimed far above their usual rate",
    "success-share": "Almost no verification failing, unlike people typing",
}
# The signals of a thief who holds the answers: each starts the step-up to the letter's reference.
SUCCESS_KINDS = frozenset(
    {"client-people", "client-claims", "partner-claims", "agent-people", "claim-rate", "success-share"}
)


class Counters(Protocol):
    """A shared store of expiring counters: ``limits``' storages (Redis, memory) are one."""

    def incr(self, key: str, expiry: int, amount: int = 1) -> int: ...

    def get(self, key: str) -> int: ...


@dataclass(frozen=True)
class Thresholds:
    failure_factor: float
    failure_floor: RateLimitItem
    person_limits: RateLimitItem
    client_failures: RateLimitItem
    partner_failures: RateLimitItem
    agent_failures: RateLimitItem
    client_people: RateLimitItem
    client_claims: RateLimitItem
    partner_claims: RateLimitItem
    agent_people: RateLimitItem
    claim_factor: float
    claim_floor: RateLimitItem
    success_share: float  # alert above this share of successes...
    success_share_minimum: RateLimitItem  # ...once this many succeeded in the window
    step_up_seconds: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Thresholds:
        return cls(
            failure_factor=float(config["ALERT_FAILURE_FACTOR"]),
            failure_floor=parse(config["ALERT_FAILURE_FLOOR"]),
            person_limits=parse(config["ALERT_PERSON_LIMITS"]),
            client_failures=parse(config["ALERT_CLIENT_FAILURES"]),
            partner_failures=parse(config["ALERT_PARTNER_FAILURES"]),
            agent_failures=parse(config["ALERT_AGENT_FAILURES"]),
            client_people=parse(config["ALERT_CLIENT_PEOPLE"]),
            client_claims=parse(config["ALERT_CLIENT_CLAIMS"]),
            partner_claims=parse(config["ALERT_PARTNER_CLAIMS"]),
            agent_people=parse(config["ALERT_AGENT_PEOPLE"]),
            claim_factor=float(config["ALERT_CLAIM_FACTOR"]),
            claim_floor=parse(config["ALERT_CLAIM_FLOOR"]),
            success_share=float(config["ALERT_SUCCESS_SHARE"]),
            success_share_minimum=parse(config["ALERT_SUCCESS_SHARE_MINIMUM"]),
            step_up_seconds=int(config["ALERT_STEP_UP_SECONDS"]),
        )


@dataclass(frozen=True)
class Alert:
    kind: str
    channel: str
    count: int  # events in the window when the alert was raised (the threshold)
    window_seconds: int
    window_start: datetime
    # The client /64 or network, partner key id or staff id concerned, for the operator; never a person.
    subject: str | None = None

    def log_fields(self) -> Fields:
        fields = asdict(self)
        return Fields(alert=fields.pop("kind"), **fields)


# A count: its kind, its window and threshold, who it counts (None: the whole site), and the
# site-wide threshold above the item's amount, worked out only once the amount is reached.
Check = tuple[str, RateLimitItem, str | None, Callable[[], int] | None]


@dataclass(frozen=True)
class _Count:
    """One counter an event adds to, and what its new value means (``judge``: the alert, if any).

    With a ``marker`` the counter moves only when the marker is new (a person not yet counted in
    this window); otherwise its new value reads as 0."""

    key: str
    expiry: int
    amount: int
    judge: Callable[[int], Alert | None]
    marker: str | None = None


# Every counter of one event in one round trip: INCRBY, then EXPIRE on a new counter, as the limit
# store's own increment; a counter with a marker moves only when its marker is new.
_ADD_ALL = """
local counts = {}
for i, key in ipairs(KEYS) do
    local expiry = ARGV[3 * i - 2]
    local amount = tonumber(ARGV[3 * i - 1])
    local marker = ARGV[3 * i]
    counts[i] = 0
    local new = true
    if marker ~= "" then
        new = redis.call("incr", marker) == 1
        if new then
            redis.call("expire", marker, expiry)
        end
    end
    if new then
        counts[i] = redis.call("incrby", key, amount)
        if counts[i] == amount then
            redis.call("expire", key, expiry)
        end
    end
end
return counts
"""


def _window(seconds: int, at: datetime) -> int:
    return int(at.timestamp()) // seconds


def _opaque(member: str) -> str:
    """A person's random id as a store key holds it: hashed, so a key dump lists no record ids."""
    return hashlib.sha256(member.encode()).hexdigest()[:24]


class Detector:
    """Counts what an event belongs to and returns the alerts it raises (usually none)."""

    def __init__(
        self,
        thresholds: Thresholds,
        counters: Counters,
        usual_failures_per_minute: Callable[[datetime], float],
        usual_claims_per_minute: Callable[[datetime], float],
        client_key: Callable[[str | None], str],
        client_network: Callable[[str | None], str],
        key_prefix: str = "portal",
    ) -> None:
        self.thresholds = thresholds
        self.counters = counters
        self.usual_failures_per_minute = usual_failures_per_minute
        self.usual_claims_per_minute = usual_claims_per_minute
        self.client_key = client_key  # as the failure limits count a client: IPv6 folded to its /64
        self.client_network = client_network  # as people are counted: its /24 or /64
        self.key_prefix = f"{key_prefix}:alert"
        self._script: Any = None  # _ADD_ALL, registered on the store's Redis at first use
        # The success-share window this process last saw raised: its flag in the store stays set for
        # the rest of the window, so the successes after it need not ask the store again.
        self._share_raised = ""

    def observe(self, action: str, outcome: str, channel: str, client: str | None, actor: str | None,
                at: datetime, patient_ref: str | None = None) -> list[Alert]:  # fmt: skip
        """The event's alerts. Events no signal counts (exposures, sign-outs...) cost no round trip;
        a verification or a claim one (another only when a count reaches its threshold)."""
        counts: list[_Count] = []
        if action == "verification":
            if outcome == "failure" or outcome.startswith("throttled:"):
                counts += self._failures(outcome, channel, client, actor, at)
            if outcome in ("success", "failure"):
                counts.append(self._share(outcome, channel, at))
            if outcome == "success" and patient_ref:
                counts += self._people(channel, client, actor, patient_ref, at)
        elif (action, outcome) == ("claim", "success"):
            counts += self._claims(channel, client, actor, at)
        values = self._add_all(counts)
        raised = [alert for count, value in zip(counts, values, strict=True) if (alert := count.judge(value))]
        if any(alert.kind in SUCCESS_KINDS for alert in raised):
            self._start_step_up(at)
        return raised

    def _add_all(self, counts: list[_Count]) -> list[int]:
        """Add every count: one script on Redis (not a cluster, where one script may not touch keys of
        different slots), else one increment after another (memory://: one process)."""
        if not counts:
            return []
        store = self.counters
        if isinstance(store, RedisStorage) and not isinstance(store, RedisClusterStorage):
            arguments = [
                value
                for count in counts
                for value in (count.expiry, count.amount, store.prefixed_key(count.marker) if count.marker else "")
            ]
            script = self._script or store.get_connection().register_script(_ADD_ALL)
            self._script = script
            values = script([store.prefixed_key(count.key) for count in counts], arguments)
            return [int(value) for value in values]
        return [self._add_one(count) for count in counts]

    def _add_one(self, count: _Count) -> int:
        if count.marker is not None and self.counters.incr(count.marker, count.expiry) != 1:
            return 0
        return self.counters.incr(count.key, count.expiry, count.amount)

    def step_up_active(self, at: datetime) -> bool:
        """True from a success-side alert on, for ``ALERT_STEP_UP_SECONDS`` to twice that (whole
        windows of that length): claims must then ask for the letter's reference. One read of the
        shared store; its errors are the caller's (which should then ask for the reference)."""
        seconds = self.thresholds.step_up_seconds
        return self.counters.get(f"{self.key_prefix}:step-up:{_window(seconds, at)}") > 0

    def _start_step_up(self, at: datetime) -> None:
        """Mark this step-up window and the next, so that an alert late in one still lasts a whole window."""
        seconds = self.thresholds.step_up_seconds
        window = _window(seconds, at)
        for marked in (window, window + 1):
            self.counters.incr(f"{self.key_prefix}:step-up:{marked}", 2 * seconds)

    def _failures(self, outcome: str, channel: str, client: str | None, actor: str | None,
                  at: datetime) -> list[_Count]:  # fmt: skip
        t = self.thresholds
        checks: list[Check] = [
            ("failure-rate", t.failure_floor, None,
             lambda: self._site_threshold(t.failure_floor, t.failure_factor, self.usual_failures_per_minute, at))
        ]  # fmt: skip
        if outcome.startswith("throttled:verify-person"):
            checks.append(("person-limits", t.person_limits, None, None))
        if client:
            checks.append(("client-failures", t.client_failures, self.client_key(client), None))
        if actor and channel == "api":
            checks.append(("partner-failures", t.partner_failures, actor, None))
        if actor and channel == "agent":
            checks.append(("agent-failures", t.agent_failures, actor, None))
        return [self._count(*check, channel=channel, at=at) for check in checks]

    def _claims(self, channel: str, client: str | None, actor: str | None, at: datetime) -> list[_Count]:
        t = self.thresholds
        checks: list[Check] = [
            ("claim-rate", t.claim_floor, None,
             lambda: self._site_threshold(t.claim_floor, t.claim_factor, self.usual_claims_per_minute, at))
        ]  # fmt: skip
        if client and channel == "public":
            checks.append(("client-claims", t.client_claims, self.client_network(client), None))
        if actor and channel == "api":
            checks.append(("partner-claims", t.partner_claims, actor, None))
        return [self._count(*check, channel=channel, at=at) for check in checks]

    def _people(self, channel: str, client: str | None, actor: str | None, patient_ref: str,
                at: datetime) -> list[_Count]:  # fmt: skip
        """Distinct people: a person is counted when their marker for this subject and window is new,
        so the same person verified again (a new lookup, a second tab) is still one."""
        t = self.thresholds
        if client and channel == "public":
            kind, item, subject = "client-people", t.client_people, self.client_network(client)
        elif actor and channel == "agent":
            kind, item, subject = "agent-people", t.agent_people, actor
        else:
            return []
        seconds = item.get_expiry()
        marker = f"{self.key_prefix}:{kind}:{subject}:{_window(seconds, at)}:{_opaque(patient_ref)}"
        return [replace(self._count(kind, item, subject, None, channel=channel, at=at), marker=marker)]

    def _share(self, outcome: str, channel: str, at: datetime) -> _Count:
        """The window's successes and failures in one counter; a success that finds the share too
        high raises the alert if no one has in this window (a second counter, read only then)."""
        t = self.thresholds
        item = t.success_share_minimum
        seconds = item.get_expiry()
        window = _window(seconds, at)
        key = f"{self.key_prefix}:success-share:-:{window}"

        def judge(count: int) -> Alert | None:
            successes, failures = count % SHARE_FAILURE, count // SHARE_FAILURE
            if outcome != "success" or successes < item.amount or successes <= t.success_share * (successes + failures):
                return None
            if self._share_raised == key:
                return None
            first = self.counters.incr(f"{key}:raised", 2 * seconds) == 1
            self._share_raised = key
            if not first:
                return None
            return Alert("success-share", channel, successes, seconds, datetime.fromtimestamp(window * seconds, UTC))

        return _Count(key, 2 * seconds, 1 if outcome == "success" else SHARE_FAILURE, judge)

    @staticmethod
    def _site_threshold(floor: RateLimitItem, factor: float, usual_per_minute: Callable[[datetime], float],
                        at: datetime) -> int:  # fmt: skip
        """``factor`` times the usual count of a window of ``floor``'s length, and at least ``floor``."""
        usual = usual_per_minute(at) * floor.get_expiry() / 60
        return max(floor.amount, math.ceil(factor * usual))

    def _count(self, kind: str, item: RateLimitItem, subject: str | None, threshold: Callable[[], int] | None, *,
               channel: str, at: datetime) -> _Count:  # fmt: skip
        """Count one; an alert when this count is the threshold. ``threshold`` (at least ``item.amount``)
        is only worked out once the count reaches ``item.amount``: quiet traffic never reads the usual rate."""
        seconds = item.get_expiry()
        window = _window(seconds, at)

        def judge(count: int) -> Alert | None:
            # Exactly one caller sees each count: one alert per window.
            if count < item.amount or count != (threshold() if threshold else item.amount):
                return None
            return Alert(kind, channel, count, seconds, datetime.fromtimestamp(window * seconds, UTC), subject)

        return _Count(f"{self.key_prefix}:{kind}:{subject or '-'}:{window}", 2 * seconds, 1, judge)


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
