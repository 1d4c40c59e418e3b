"""Shared fixtures: a real Azurite for the whole session, fresh sandbox servers per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from sandbox.azurite import AzuriteNotInstalled, run_azurite


@pytest.fixture(scope="session")
def azurite_connection_string() -> Iterator[str]:
    """Azurite's Table service, in memory, on a free loopback port; stopped after the session."""
    try:
        with run_azurite() as conn:
            yield conn
    except AzuriteNotInstalled as err:  # `make test` installs it; a bare pytest may not have it
        pytest.skip(str(err))


@pytest.fixture
def table_prefix() -> str:
    """A unique table-name prefix per test, so tests never see each other's rows."""
    return "t" + uuid.uuid4().hex[:10]
