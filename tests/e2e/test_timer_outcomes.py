"""The timer function tells Azure how a cycle ended (issues 16 and 19): a configuration error or a
cycle that ended with outcome ``error`` fails the execution (so the Functions monitor and an alert
see it), with the run report stored first; a transient failure does not (the next tick retries)."""

from __future__ import annotations

from typing import Any

import pytest
from azure.functions.timer import TimerRequest

import function_app
from sync_core.core.errors import ConfigError, CycleFailedError
from tests.e2e.conftest import World


def _fire() -> None:
    function_app.sync_cycle.build().get_user_function()(TimerRequest(past_due=False))


def test_credentials_marketo_refuses_fail_the_execution_after_the_report_is_stored(world_factory: Any) -> None:
    world: World = world_factory(MARKETO_CLIENT_SECRET="not-the-secret")
    world.dynamics_lead(1)

    with pytest.raises(ConfigError):
        _fire()

    [report] = world.store.list_run_reports(limit=1)
    assert report.outcome == "error"
    assert (report.report.error or "").startswith("configuration:")


def test_a_permission_dataverse_refuses_fails_the_execution(world: World) -> None:
    world.dynamics_lead(1)
    world.dataverse.set_faults([{"path": "leads|contacts", "times": -1, "action": {"status": 403}}])

    with pytest.raises(CycleFailedError, match="permission"):
        _fire()

    assert world.store.list_run_reports(limit=1)[0].outcome == "error"


def test_a_transient_outage_does_not_fail_the_execution(world: World) -> None:
    world.dynamics_lead(1)
    world.dataverse.set_faults([{"path": "leads|contacts", "times": -1, "action": {"status": 503, "retry_after": 0}}])

    _fire()  # no exception: the next tick retries by itself

    assert world.store.list_run_reports(limit=1)[0].outcome == "transient"
