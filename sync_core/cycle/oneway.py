"""The Dynamics-owned person values of one cycle's records (``core.oneway``): owners and parent
accounts looked up in bulk and remembered for the cycle.

An owner is looked up among the users first and, for the ids left, among the teams (one call
per 100 ids each, only for ids not seen yet this cycle). An account comes from the accounts'
own change feed when it changed this cycle, else is read (100 ids a call). The caches hold at
most ``CACHE_LIMIT`` entries each (emptied when full), so a cycle's memory stays bounded. A table
the sync may not read (403: the role lacks prvReadUser, prvReadTeam or prvReadAccount; ``check``
says so) leaves those values unknown (an owner: its id only) instead of stopping the cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sync_core.core import oneway
from sync_core.core.errors import ApiError
from sync_core.core.models import EntityType
from sync_core.core.oneway import Principal
from sync_core.core.schema import EntityMeta
from sync_core.dataverse.client import DataverseClient

log = logging.getLogger(__name__)

CACHE_LIMIT = 20_000


class OneWayValues:
    """Owner and company values for Dataverse rows, with per-cycle caches (see the module docstring)."""

    def __init__(self, dataverse: DataverseClient, on_denied: Callable[[str, str], None] | None = None) -> None:
        self._dataverse = dataverse
        self._on_denied = on_denied or (lambda table, reason: None)  # (logical name, reason): reported
        self._owners: dict[str, Principal | None] = {}
        self._accounts: dict[str, Mapping[str, Any] | None] = {}
        self._denied: set[str] = set()  # tables the service refused to let us read (403)

    def remember_accounts(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Accounts read from their change feed: the freshest values there are."""
        for row in rows:
            self._keep(self._accounts, str(row[oneway.ACCOUNT.primary_id]).lower(), row)

    def forget_accounts(self, ids: Iterable[str]) -> None:
        for account_id in ids:
            self._keep(self._accounts, account_id.lower(), None)

    def company(self, account_id: str | None) -> dict[str, Any]:
        """The company values of a (looked-up) account."""
        return oneway.company_values(self._accounts.get(account_id) if account_id else None)

    def owner(self, principal_id: str | None) -> Principal | None:
        """An owner looked up this cycle (None: not looked up, or not found)."""
        return self._owners.get(principal_id) if principal_id else None

    def values_for(
        self,
        entity: EntityType,
        rows: Sequence[Mapping[str, Any]],
        known: Sequence[Principal | None] | None = None,
    ) -> list[dict[str, Any]]:
        """For each row (a lead or contact read with its owner and, for a contact, its parent
        account), the Dynamics-owned person values; ``known``: per row, its owner as the link last
        saw it (``oneway.known_owner``), not looked up again."""
        known = known or [None] * len(rows)
        for principal in known:
            if principal is not None and principal.id not in self._owners:
                self._keep(self._owners, principal.id, principal)
        self._look_up_owners({oid for row in rows if (oid := oneway.owner_id(row)) and oid not in self._owners})
        if entity is EntityType.CONTACT:
            wanted = {aid for row in rows if (aid := oneway.parent_account(row)) and aid not in self._accounts}
            self._look_up_accounts(wanted)
        out = []
        for row in rows:
            principal_id = oneway.owner_id(row)
            values = oneway.owner_values(principal_id, self._owners.get(principal_id) if principal_id else None)
            if entity is EntityType.CONTACT:
                values.update(self.company(oneway.parent_account(row)))
            out.append(values)
        return out

    def _look_up_owners(self, ids: set[str]) -> None:
        if not ids:
            return
        found: dict[str, Principal] = {}
        for row in self._read(oneway.SYSTEMUSER, sorted(ids), oneway.USER_COLUMNS):
            user = str(row["systemuserid"]).lower()
            found[user] = Principal(user, "systemuser", row.get("fullname"), row.get("internalemailaddress"))
        rest = sorted(ids - found.keys())
        if rest:
            for row in self._read(oneway.TEAM, rest, oneway.TEAM_COLUMNS):
                team = str(row["teamid"]).lower()
                found[team] = Principal(team, "team", row.get("name"), row.get("emailaddress"))
        for principal_id in ids:
            self._keep(self._owners, principal_id, found.get(principal_id))

    def _look_up_accounts(self, ids: set[str]) -> None:
        if not ids:
            return
        rows = self._read(oneway.ACCOUNT, sorted(ids), oneway.ACCOUNT_COLUMNS, formatted=True)
        by_id = {str(row[oneway.ACCOUNT.primary_id]).lower(): row for row in rows}
        for account_id in ids:
            self._keep(self._accounts, account_id, by_id.get(account_id))

    def _read(
        self, table: EntityMeta, ids: Sequence[str], columns: Sequence[str], *, formatted: bool = False
    ) -> list[dict[str, Any]]:
        if table.logical_name in self._denied:
            return []
        try:
            return self._dataverse.get_rows(table, ids, select=columns, formatted=formatted)
        except ApiError as err:
            if err.status != 403:
                raise
            log.warning("the sync may not read %s (%s): those person fields stay unknown", table.entity_set, err.code)
            self._denied.add(table.logical_name)
            self._on_denied(table.logical_name, str(err)[:200])
            return []

    @staticmethod
    def _keep(cache: dict[str, Any], key: str, value: Any) -> None:
        if len(cache) >= CACHE_LIMIT and key not in cache:
            cache.clear()
        cache[key] = value
