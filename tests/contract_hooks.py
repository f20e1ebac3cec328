"""Schemathesis hooks for tests/test_api_contract.py (loaded through SCHEMATHESIS_HOOKS).

An Idempotency-Key names one request: a client sends a new one with each new request. The fuzzer
draws header values independently of bodies and soon sends one value with two bodies, which the
API rightly refuses (422 ``idempotency-key-reused``); for the data it calls valid, each key it sends
is made unique, as a client's would be. Invalid keys, and every other value, are left as drawn.
"""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    headers = case.headers or {}
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if positive and "Idempotency-Key" in headers:
        headers["Idempotency-Key"] = str(uuid.uuid4())
