"""Both sandbox servers on loopback for the integration tests, fresh per test, stopped after it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sandbox import DataverseOptions, MarketoOptions, SandboxServers


@pytest.fixture
def sandbox() -> Iterator[SandboxServers]:
    """Marketo and Dataverse simulators with their real limits on, on free 127.0.0.1 ports."""
    with SandboxServers(marketo=MarketoOptions(), dataverse=DataverseOptions()) as servers:
        yield servers


@pytest.fixture
def arm_faults() -> Iterator[Any]:
    """``arm_faults(base_url, *rules)``: set the fault rules of one simulator through its admin API."""
    with httpx.Client(timeout=10) as admin:

        def arm(base_url: str, *rules: dict[str, Any]) -> None:
            admin.delete(f"{base_url}/_sandbox/faults").raise_for_status()
            admin.post(f"{base_url}/_sandbox/faults", json={"rules": list(rules)}).raise_for_status()

        yield arm


def fault_rules_left(base_url: str) -> list[dict[str, Any]]:
    """The armed rules that have not fired their last time yet."""
    rules: list[dict[str, Any]] = httpx.get(f"{base_url}/_sandbox/faults", timeout=10).json()["rules"]
    return rules


def api_writes(base_url: str) -> dict[str, dict[str, int]]:
    """Records the Dataverse simulator wrote for API callers, per entity set and operation
    (rolled-back bulk calls count nothing)."""
    writes: dict[str, dict[str, int]] = httpx.get(f"{base_url}/_sandbox/stats", timeout=10).json()["writes"]
    return writes
