"""A pytest plugin of tools/mutate.sh: each test starts with the portal's function caches empty.

mutmut forks each mutant's tests from a process that has already run them: a cached result made
there (the OpenAPI document, built once a day) was made without the mutant, so the functions it
calls never ran with one switched on, and only the first test to reach them was mapped to them.
"""

from __future__ import annotations

import sys

import pytest


@pytest.hookimpl(tryfirst=True)  # before the test's fixtures, which may read a cache
def pytest_runtest_setup(item: pytest.Item) -> None:
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] != "portal":
            continue
        for value in list(vars(module).values()):
            if getattr(value, "__module__", None) == name and hasattr(value, "cache_clear"):
                value.cache_clear()
