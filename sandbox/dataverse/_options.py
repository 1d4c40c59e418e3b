"""Everything a Dataverse simulator can be told at start: data, credentials, limits, rules, clock.

``DataverseOptions`` is the one place a default lives; ``add_arguments`` / ``options_from_args``
map the ``python -m sandbox serve`` flags onto it (the shared ``--no-limits``, ``--seed-leads``
and ``--seed-contacts`` flags are declared by ``sandbox.__main__``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox._faults import FaultRule, add_fault_argument, parse_spec
from sandbox._profile import DataverseProfile
from sandbox.dataverse._schema import INTEGRATION_USER_ID, UI_USER_ID
from sandbox.dataverse._validate import PluginRule, default_plugin_rules

SEVEN_DAYS = 7 * 24 * 3600.0
# The Dataverse fault kind: {"delta_answer": "empty"} answers a delta read (a GET with $deltatoken)
# with an empty body, {"delta_answer": "no_link"} with its rows but without a new @odata.deltaLink.
# Other requests matching the rule are served normally (and use up one of its times).
FAULT_ACTIONS = frozenset({"delta_answer"})
DELTA_ANSWERS = ("empty", "no_link")
BULK_MESSAGES = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")


@dataclass
class DataverseOptions:
    limits: bool = True  # service protection on (off with --no-limits)
    seed_leads: int = 0
    seed_contacts: int = 0
    client_id: str = "sandbox-client-id"
    client_secret: str = "sandbox-client-secret"
    static_token: str | None = "sandbox-token"
    token_ttl: int = 3600  # seconds an issued token is accepted
    change_retention: float = SEVEN_DAYS  # seconds a delta token stays valid (ExpireChangeTrackingInDays)
    max_requests: int = 6000  # per user per window
    window_seconds: float = 300.0
    max_concurrent: int = 52  # per user, requests in flight
    max_execution_ms: float = 1_200_000.0  # per user per window, combined handling time
    max_page_size: int = 5000
    max_batch_requests: int = 1000
    plugin_rules: list[PluginRule] = field(default_factory=default_plugin_rules)
    faults: list[FaultRule | dict[str, Any]] = field(default_factory=list)  # rules armed at start
    # Bulk messages not enabled, as "<table logical name>" (all three) or "<table>/<message>": the
    # message is refused with 0x80040800 and missing from sdkmessagefilters.
    bulk_disabled: list[str] = field(default_factory=list)
    # A broken setup, piece by piece (`python -m sync_core check` shows each): tables whose change
    # tracking is off ("lead", "contact"), and privileges the integration user's role lacks
    # ("prvWriteLead", "prvCreateContact", ...; a request needing one is refused 403 PrivilegeDenied).
    change_tracking_off: list[str] = field(default_factory=list)
    denied_privileges: list[str] = field(default_factory=list)
    integration_user_id: str = INTEGRATION_USER_ID  # who API tokens act as (_modifiedby_value)
    ui_user_id: str = UI_USER_ID  # who the admin and Python APIs act as
    clock: Callable[[], float] = time.time  # wall clock for timestamps, token and change expiry, windows
    profile: DataverseProfile = field(default_factory=DataverseProfile)  # latency model (sandbox._profile)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Dataverse-only command-line flags of ``python -m sandbox serve``."""
    group = parser.add_argument_group("dataverse")
    group.add_argument(
        "--dataverse-plugin-rules",
        default="default",
        metavar="none|default|FILE",
        help="validation plug-in rules: none, the defaults, or a JSON file with a list of rules",
    )
    group.add_argument("--dataverse-change-retention", type=float, default=SEVEN_DAYS, metavar="SECONDS")
    group.add_argument("--dataverse-token-ttl", type=int, default=3600, metavar="SECONDS")
    group.add_argument("--dataverse-max-requests", type=int, default=6000, help="requests per user per window")
    group.add_argument("--dataverse-window", type=float, default=300.0, metavar="SECONDS")
    group.add_argument("--dataverse-max-concurrent", type=int, default=52)
    group.add_argument("--dataverse-max-execution-ms", type=float, default=1_200_000.0)
    group.add_argument(
        "--dataverse-bulk-disabled",
        action="append",
        default=[],
        metavar="TABLE[/MESSAGE]",
        help="a table (or one of its CreateMultiple/UpdateMultiple/UpsertMultiple) without the bulk message",
    )
    group.add_argument(
        "--dataverse-change-tracking-off",
        action="append",
        default=[],
        metavar="TABLE",
        help="a table (lead, contact) whose change tracking is off",
    )
    group.add_argument(
        "--dataverse-deny-privilege",
        action="append",
        default=[],
        metavar="PRIVILEGE",
        help="a privilege the integration user's role lacks, e.g. prvWriteLead (requests needing it get 403)",
    )
    add_fault_argument(group, "--dataverse-fault", parse=parse_fault, example="path=/leads;status=429;retry_after=2")


def parse_fault(spec: str) -> FaultRule:
    return parse_spec(spec, extra_actions=FAULT_ACTIONS)


def bulk_disabled(entries: list[str], logical: str, message: str) -> bool:
    """Whether ``message`` is not enabled on table ``logical`` under the ``bulk_disabled`` option."""
    return logical in entries or f"{logical}/{message}" in entries


def plugin_rules_from(spec: str) -> list[PluginRule]:
    if spec == "none":
        return []
    if spec == "default":
        return default_plugin_rules()
    data = json.loads(Path(spec).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{spec}: expected a JSON list of plug-in rules")
    return [PluginRule.from_json(item) for item in data]


def options_from_args(args: argparse.Namespace) -> DataverseOptions:
    return DataverseOptions(
        limits=not args.no_limits,
        seed_leads=args.seed_leads,
        seed_contacts=getattr(args, "seed_contacts", 0),
        change_retention=getattr(args, "dataverse_change_retention", SEVEN_DAYS),
        token_ttl=getattr(args, "dataverse_token_ttl", 3600),
        max_requests=getattr(args, "dataverse_max_requests", 6000),
        window_seconds=getattr(args, "dataverse_window", 300.0),
        max_concurrent=getattr(args, "dataverse_max_concurrent", 52),
        max_execution_ms=getattr(args, "dataverse_max_execution_ms", 1_200_000.0),
        plugin_rules=plugin_rules_from(getattr(args, "dataverse_plugin_rules", "default")),
        faults=list(getattr(args, "dataverse_fault", [])),
        bulk_disabled=list(getattr(args, "dataverse_bulk_disabled", [])),
        change_tracking_off=list(getattr(args, "dataverse_change_tracking_off", [])),
        denied_privileges=list(getattr(args, "dataverse_deny_privilege", [])),
    )
