"""Prometheus metrics: counts and latencies only, labelled by endpoint, surface, outcome or kind.

No label ever holds a person, an address, a key or a code, so ``/metrics`` can be scraped by
anyone the operators trust with traffic figures. Under gunicorn every worker writes its values
to files in ``PROMETHEUS_MULTIPROC_DIR`` (set up by ``portal/gunicorn_config.py``) and a scrape
adds them up, whichever worker answers it; without that variable the values are the process's own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session

from portal.audit import MAC_MIN_HEX, heads
from portal.claims import pool_status

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Requests by endpoint and status are this histogram's _count: one metric to write, not two.
LATENCY = Histogram(
    "portal_request_seconds",
    "Time from the request reaching the app to its response, by endpoint and status.",
    ["endpoint", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
VERIFICATIONS = Counter("portal_verifications", "Verification attempts by surface and outcome.", ["channel", "outcome"])
CLAIMS = Counter("portal_claims", "Code claims by surface and outcome.", ["channel", "outcome"])
REFUSALS = Counter(
    "portal_rate_limit_refusals",
    "Verifications refused by a failure limit, by surface and limit.",
    ["channel", "limit"],
)
HASH_WAIT = Histogram(
    "portal_hash_slot_wait_seconds",
    "How long lookups waited for a hashing slot.",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HASH_BUSY = Counter("portal_hash_busy", "Lookups refused with 503 because no hashing slot came free in time.")
ALERTS = Counter("portal_alerts", "Attack alerts raised, by kind and surface.", ["kind", "channel"])

# Children looked up once per label set: .labels() takes a lock and builds a tuple on every call.
_request_children: dict[tuple[str | None, int], Histogram] = {}


def observe_request(endpoint: str | None, status: int, seconds: float) -> None:
    child = _request_children.get((endpoint, status))
    if child is None:
        child = _request_children[(endpoint, status)] = LATENCY.labels(endpoint or "none", str(status))
    child.observe(seconds)


def observe_event(action: str, outcome: str, channel: str) -> None:
    if action == "verification":
        kind, _, limit = outcome.partition(":")
        VERIFICATIONS.labels(channel, kind).inc()
        if kind == "throttled":
            REFUSALS.labels(channel, limit or "-").inc()
    elif action == "claim":
        CLAIMS.labels(channel, outcome).inc()
    elif action == "alert":
        ALERTS.labels(outcome, channel).inc()


def observe_hash_slot(waited: float, acquired: bool) -> None:
    HASH_WAIT.observe(waited)
    if not acquired:
        HASH_BUSY.inc()


class PoolCollector(Collector):
    """The pool's remaining codes, read from the database at scrape time (one query, every worker agrees)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def collect(self) -> Iterator[Metric]:
        status = pool_status(self.session)
        gauge = GaugeMetricFamily("portal_pool_codes", "Activation codes in the pool, by state.", labels=["state"])
        gauge.add_metric(["available"], status.available)
        gauge.add_metric(["claimed"], status.claimed)
        yield gauge


class AuditHeadCollector(Collector):
    """Each audit lane's head, read from the database at scrape time: what the scraper stores is
    kept outside the database, so a later truncation of the trail shows (``portal audit verify
    --expect-head LANE/POSITION:MAC``, the MAC as ``printf '%012x'`` of the second gauge)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def collect(self) -> Iterator[Metric]:
        position = GaugeMetricFamily(
            "portal_audit_head_position", "Position of each audit lane's newest row.", labels=["lane"]
        )
        mac = GaugeMetricFamily(
            "portal_audit_head_mac48",
            f"The first {MAC_MIN_HEX} hex digits of that row's chain MAC, as an integer.",
            labels=["lane"],
        )
        for head in heads(self.session.connection()):
            position.add_metric([str(head.lane)], head.position)
            mac.add_metric([str(head.lane)], int(head.mac[:MAC_MIN_HEX], 16))
        yield position
        yield mac


def exposition(session: Session) -> bytes:
    """The text a scrape gets: every worker's counters (multiprocess mode), the pool's and the audit heads' gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        workers = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(workers)
    else:
        workers = REGISTRY
    pool = CollectorRegistry()
    pool.register(PoolCollector(session))
    pool.register(AuditHeadCollector(session))
    return generate_latest(workers) + generate_latest(pool)
