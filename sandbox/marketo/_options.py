"""How the Marketo simulator is configured: the options dataclass and its command-line flags.

Owns the defaults (those of a typical real subscription: 100 calls / 20 s, 10 in flight,
50,000 calls a day, 3600 s tokens, bulk extract's 2 processing / 10 queued jobs and 500 MB of
export files a day) and the ``--marketo-*`` flags of ``python -m sandbox serve``.
It must honour the shared ``--no-limits`` and ``--seed-leads`` flags parsed by ``__main__``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from sandbox._faults import FaultRule, add_fault_argument, parse_spec
from sandbox._profile import MarketoProfile

# Marketo's own fault answer: an HTTP 200 ``success: false`` envelope with this error code.
FAULT_ACTIONS = frozenset({"marketo_error"})


@dataclass
class MarketoOptions:
    limits: bool = True  # False turns off the rate, concurrency and daily limits
    seed_leads: int = 0
    client_id: str = "sandbox-client-id"
    client_secret: str = "sandbox-client-secret"
    scope: str = "sandbox-api@example.com"  # the API-only user the custom service belongs to
    token_ttl: int = 3600
    rate_limit_calls: int = 100
    rate_limit_window: float = 20.0
    max_concurrent: int = 10
    daily_quota: int = 50_000
    allow_query_token: bool = False  # accept the retired ``?access_token=`` parameter
    faults: list[FaultRule | dict[str, Any]] = field(default_factory=list)  # rules armed at start
    profile: MarketoProfile = field(default_factory=MarketoProfile)  # latency model (sandbox._profile)
    # More API users (client id -> secret) of the same instance: bulk export jobs are per user.
    extra_api_users: dict[str, str] = field(default_factory=dict)
    # Bulk extract: simulated seconds a job spends Processing (minutes on the real service).
    bulk_processing_seconds: float = 2.0
    bulk_max_processing: int = 2
    bulk_max_queued: int = 10  # queued and processing jobs together, all users and kinds
    bulk_daily_quota_mb: int = 500  # export file bytes a day (US Central), shared by all kinds
    bulk_unsupported_filters: list[str] = field(default_factory=list)  # e.g. updatedAt -> 1035
    # A broken setup, piece by piece (`python -m sync_core check` shows each): person fields the
    # admin never created (left out of describe and describe2) and custom activity types never
    # created, by API name (e.g. "microsoftSyncFailed": not listed, not described, not accepted).
    missing_fields: list[str] = field(default_factory=list)
    missing_activity_types: list[str] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Marketo-only command-line flags of ``python -m sandbox serve``."""
    group = parser.add_argument_group("Marketo simulator")
    defaults = MarketoOptions()
    group.add_argument("--marketo-client-id", default=defaults.client_id)
    group.add_argument("--marketo-client-secret", default=defaults.client_secret)
    group.add_argument("--marketo-token-ttl", type=int, default=defaults.token_ttl, metavar="SECONDS")
    group.add_argument("--marketo-rate-calls", type=int, default=defaults.rate_limit_calls, metavar="N")
    group.add_argument("--marketo-rate-window", type=float, default=defaults.rate_limit_window, metavar="SECONDS")
    group.add_argument("--marketo-max-concurrent", type=int, default=defaults.max_concurrent, metavar="N")
    group.add_argument("--marketo-daily-quota", type=int, default=defaults.daily_quota, metavar="N")
    group.add_argument(
        "--marketo-allow-query-token", action="store_true", help="still accept the retired ?access_token= parameter"
    )
    group.add_argument(
        "--marketo-bulk-processing-seconds",
        type=float,
        default=defaults.bulk_processing_seconds,
        metavar="SECONDS",
        help="how long a bulk export job stays Processing",
    )
    group.add_argument("--marketo-bulk-daily-quota-mb", type=int, default=defaults.bulk_daily_quota_mb, metavar="MB")
    group.add_argument(
        "--marketo-bulk-unsupported-filter",
        action="append",
        default=[],
        choices=("updatedAt", "smartListId", "smartListName"),
        help="a bulk lead filter this subscription lacks (answered with 1035); repeatable",
    )
    group.add_argument(
        "--marketo-missing-field",
        action="append",
        default=[],
        metavar="NAME",
        help="a person field left out of describe, as if never created (e.g. microsoftId); repeatable",
    )
    group.add_argument(
        "--marketo-missing-activity-type",
        action="append",
        default=[],
        metavar="API_NAME",
        help="a custom activity type that does not exist (e.g. microsoftSyncFailed); repeatable",
    )
    add_fault_argument(group, "--marketo-fault", parse=parse_fault_spec, example="path=leadchanges;error=606;times=2")


def parse_fault_spec(spec: str) -> FaultRule:
    """A ``--marketo-fault`` SPEC as a rule; ``error=606`` is short for ``marketo_error=606``."""
    return parse_spec(spec, extra_actions=FAULT_ACTIONS, short_names={"error": "marketo_error"})


def options_from_args(args: argparse.Namespace) -> MarketoOptions:
    return MarketoOptions(
        limits=not args.no_limits,
        seed_leads=args.seed_leads,
        client_id=args.marketo_client_id,
        client_secret=args.marketo_client_secret,
        token_ttl=args.marketo_token_ttl,
        rate_limit_calls=args.marketo_rate_calls,
        rate_limit_window=args.marketo_rate_window,
        max_concurrent=args.marketo_max_concurrent,
        daily_quota=args.marketo_daily_quota,
        allow_query_token=args.marketo_allow_query_token,
        faults=list(args.marketo_fault),
        bulk_processing_seconds=args.marketo_bulk_processing_seconds,
        bulk_daily_quota_mb=args.marketo_bulk_daily_quota_mb,
        bulk_unsupported_filters=list(args.marketo_bulk_unsupported_filter),
        missing_fields=list(getattr(args, "marketo_missing_field", [])),
        missing_activity_types=list(getattr(args, "marketo_missing_activity_type", [])),
    )
