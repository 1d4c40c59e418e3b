"""Writes as the platform performs them, and rows rendered as the Web API shows them.

Create, update, delete and QualifyLead: body checks (``_validate``), state/status pairing,
alternate-key uniqueness, lookups that must exist, plug-in rules, then a new immutable row
with the next ``versionnumber`` and ``modifiedon``/``_modifiedby_value``. The HTTP handlers,
the admin API and the in-process Python API all write through here, so they behave alike.
Callers hold ``Store.lock``; multi-record operations wrap calls in ``Store.atomic``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sandbox.dataverse import _errors as err
from sandbox.dataverse._schema import ACCOUNT, BY_LOGICAL, CONTACT, LEAD, SEEDED_USERS, SYSTEMUSER, Column, Table
from sandbox.dataverse._stats import Stats
from sandbox.dataverse._store import Row, Store, TableStore
from sandbox.dataverse._validate import PluginRule, check_plugins, coerce_body

_STATE_NAMES = {
    "lead": "LeadState",
    "contact": "ContactState",
    "task": "TaskState",
    "campaign": "CampaignState",
    "list": "ListState",
}


def render(
    table: Table,
    row: Row,
    select: list[str] | None = None,
    *,
    annotations: bool = False,
    store: Store | None = None,
) -> dict[str, Any]:
    """A row as JSON: ``@odata.etag``, the selected properties (all by default) and the primary key.

    With ``annotations``, a lookup's formatted value is the primary name of the record it points
    at, read from ``store`` (its id when no store is given or the record is gone)."""
    out: dict[str, Any] = {"@odata.etag": f'W/"{row.version}"'}
    props = list(select) if select else [c.prop for c in table.columns]
    if table.primary_id not in props:
        props.append(table.primary_id)
    for prop in props:
        column = table.by_prop[prop]
        value = row.values.get(column.name)
        if annotations and value is not None:
            _annotate(out, column, value, row, store)
        out[prop] = value.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(value, datetime) else value
    return out


def _annotate(out: dict[str, Any], column: Column, value: Any, row: Row, store: Store | None) -> None:
    prop = column.prop
    if column.options:
        out[f"{prop}@OData.Community.Display.V1.FormattedValue"] = column.label_of(value)
    elif column.kind == "lookup":
        target = row.values.get(column.type_key) or column.targets[0]
        name = store.primary_name(target, value) if store is not None else None
        nav = f"{column.name}_{target}" if column.nav_per_target else column.name
        out[f"{prop}@OData.Community.Display.V1.FormattedValue"] = name if name is not None else value
        out[f"{prop}@Microsoft.Dynamics.CRM.associatednavigationproperty"] = nav
        out[f"{prop}@Microsoft.Dynamics.CRM.lookuplogicalname"] = target
    elif isinstance(value, datetime):
        out[f"{prop}@OData.Community.Display.V1.FormattedValue"] = f"{value.month}/{value.day}/{value.year} " + (
            value.strftime("%I:%M %p").lstrip("0")
        )


def _fullname(values: dict[str, Any]) -> str | None:
    name = " ".join(v for v in (values.get("firstname"), values.get("lastname")) if v)
    return name or None


class Records:
    def __init__(self, store: Store, stats: Stats, rules: list[PluginRule], ui_user: str) -> None:
        self.store = store
        self.stats = stats
        self.rules = rules
        self.ui_user = ui_user

    def table_store(self, table: Table) -> TableStore:
        return self.store.tables[table.logical]

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.store.clock(), UTC).replace(microsecond=0)

    # ------------------------------------------------------------------ lookups

    def find(self, table: Table, key: str | dict[str, Any]) -> Row | None:
        """The row a URL key names: a GUID, ``{primaryid: guid}`` or a declared alternate key."""
        tables = self.table_store(table)
        if isinstance(key, str):
            return tables.get(key)
        if set(key) == {table.primary_id} and isinstance(key[table.primary_id], str):
            return tables.get(key[table.primary_id])
        try:
            return tables.by_key(key)
        except KeyError:
            raise err.bad_query(
                f"The key in the request URI is not valid for resource '{table.odata_type}'. Ensure that the names "
                f"and number of key properties match the declared keys for the resource '{table.odata_type}'."
            ) from None

    def get_or_raise(self, table: Table, key: str | dict[str, Any]) -> Row:
        row = self.find(table, key)
        if row is None:
            raise err.not_found(table.logical, key) if isinstance(key, str) else err.key_not_found(table.logical)
        return row

    # ------------------------------------------------------------------ writes

    def create(
        self,
        table: Table,
        body: Any,
        *,
        user: str,
        bypass_plugins: bool = False,
        record_id: str | None = None,
        key: dict[str, Any] | None = None,
    ) -> Row:
        changed = coerce_body(table, body, creating=True)
        given_id = changed.pop(table.primary_id, None)
        record_id = (record_id or given_id or str(uuid.uuid4())).lower()
        if key:
            changed.update(key)  # upsert by key creating: the key columns come from the URL
        tables = self.table_store(table)
        if tables.get(record_id) is not None:
            raise err.duplicate_record()
        values: dict[str, Any] = {c.name: c.default for c in table.columns}
        values.update(changed)
        for column in table.columns:  # a system-required choice not given takes its default (team: Owner)
            if column.kind == "picklist" and column.required == "SystemRequired" and values[column.name] is None:
                values[column.name] = column.options[0].value
        self._settle_state(table, values, changed, record_id, creating=True)
        if "ownerid" in table.by_name and values.get("ownerid") is None:
            values["ownerid"], values["owneridtype"] = user, SYSTEMUSER.logical
        return self._store_row(table, record_id, values, changed, user, creating=True, bypass_plugins=bypass_plugins)

    def update(
        self,
        table: Table,
        row: Row,
        body: Any,
        *,
        user: str,
        bypass_plugins: bool = False,
        strip_keys: bool = False,
    ) -> Row:
        changed = coerce_body(table, body, creating=False)
        given_id = changed.pop(table.primary_id, None)
        if given_id is not None and given_id != row.id:
            raise err.bad_argument(
                f"The {table.primary_id} in the request body does not match the record addressed by the URL."
            )
        if strip_keys:  # upsert by key updating: the server drops the key columns from the body
            for column in table.key_columns:
                changed.pop(column, None)
        if "ownerid" in changed and changed["ownerid"] is None:
            raise err.bad_argument("ownerid cannot be set to null: every record needs an owner.")
        values = {**row.values, **changed}
        self._settle_state(table, values, changed, row.id, creating=False)
        return self._store_row(table, row.id, values, changed, user, creating=False, bypass_plugins=bypass_plugins)

    def delete(self, table: Table, row: Row, *, user: str) -> None:
        """Delete a row; an account takes its contacts with it (``contact_customer_accounts`` is a
        parental relationship: cascade delete)."""
        with self.store.atomic():
            if table is ACCOUNT:
                contacts = self.table_store(CONTACT)
                for child in [
                    r
                    for r in contacts.rows.values()
                    if r.values.get("parentcustomerid") == row.id and r.values.get("parentcustomeridtype") == "account"
                ]:
                    self.delete(CONTACT, child, user=user)
            self.table_store(table).remove(row, self.store.next_version())
            self.stats.wrote(table.entity_set, "delete", by_user=user == self.ui_user)

    def qualify(self, lead: Row, *, status: int, create_contact: bool, user: str) -> Row | None:
        """QualifyLead: optionally a contact from the lead (``originatingleadid``), lead -> Qualified."""
        if lead.values.get("statecode") != 0:
            raise err.bad_argument("The lead is already closed.")
        status_column = LEAD.by_name["statuscode"]
        if status not in status_column.option_values(1):
            raise err.bad_argument(
                f"{status} is not a valid status code for state code LeadState.Qualified on lead with Id {lead.id}."
            )
        contact = None
        with self.store.atomic():
            if create_contact:
                copied = {
                    c: lead.values.get(c) for c in ("firstname", "lastname", "emailaddress1", "jobtitle", "telephone1")
                }
                body = {k: v for k, v in copied.items() if v is not None}
                body["originatingleadid@odata.bind"] = f"/leads({lead.id})"
                contact = self.create(CONTACT, body, user=user)
            self.update(LEAD, lead, {"statecode": 1, "statuscode": status}, user=user)
            self.stats.wrote(LEAD.entity_set, "qualify", by_user=user == self.ui_user)
        return contact

    # ------------------------------------------------------------------ internals

    def _settle_state(
        self, table: Table, values: dict[str, Any], changed: dict[str, Any], record_id: str, *, creating: bool
    ) -> None:
        """statecode/statuscode must pair up; a new state without a status takes its default status."""
        if "statecode" not in table.by_name:
            return  # users and teams have no state
        state_column = table.by_name["statecode"]
        status_column = table.by_name["statuscode"]
        if values.get("statecode") is None:
            if not creating:
                raise err.bad_argument("statecode cannot be set to null.")
            values["statecode"] = 0
        state = values["statecode"]
        if state not in state_column.option_values():
            raise err.out_of_range(state, "statecode", table.logical, state_column.option_values())
        if values.get("statuscode") is None or ("statecode" in changed and "statuscode" not in changed):
            values["statuscode"] = next(o.default_status for o in state_column.options if o.value == state)
        status = values["statuscode"]
        if status not in status_column.option_values(state):
            if status not in status_column.option_values():
                raise err.out_of_range(status, "statuscode", table.logical, status_column.option_values(state))
            state_name = state_column.label_of(state)
            raise err.bad_argument(
                f"{status} is not a valid status code for state code {_STATE_NAMES[table.logical]}.{state_name} "
                f"on {table.logical} with Id {record_id}."
            )

    def _store_row(
        self,
        table: Table,
        record_id: str,
        values: dict[str, Any],
        changed: dict[str, Any],
        user: str,
        *,
        creating: bool,
        bypass_plugins: bool,
    ) -> Row:
        for column in table.columns:
            if column.kind == "lookup" and column.name in changed and changed[column.name] is not None:
                target = BY_LOGICAL.get(changed.get(column.type_key) or column.targets[0])
                if target is not None and self.table_store(target).get(changed[column.name]) is None:
                    raise err.not_found(target.logical, changed[column.name])
        if not bypass_plugins:
            check_plugins(self.rules, table, values, changed, creating=creating)
        tables = self.table_store(table)
        conflict = tables.key_conflict(values, record_id)
        if conflict is not None:
            raise err.duplicate_key(*conflict)
        now = self.now()
        version = self.store.next_version()
        if "fullname" in table.by_name:
            values["fullname"] = _fullname(values)
        values[table.primary_id] = record_id
        values["modifiedon"] = now
        values["versionnumber"] = version
        if creating:
            values["createdon"] = now
        if "modifiedby" in table.by_name:
            values["modifiedby"] = user
            if creating:
                values["createdby"] = user
        row = Row(record_id, values, version)
        tables.put(row)
        self.stats.wrote(table.entity_set, "create" if creating else "update", by_user=user == self.ui_user)
        return row

    def seed(self, table: Table, count: int, make: Callable[[int], dict[str, Any]], user: str) -> None:
        """Bulk-load ``count`` rows built by ``make(i)`` (1-based) without the write checks."""
        tables = self.table_store(table)
        now = self.now()
        for i in range(1, count + 1):
            values: dict[str, Any] = {c.name: None for c in table.columns}
            values.update(make(i))
            version = self.store.next_version()
            record_id = str(uuid.uuid4())
            state = table.by_name["statecode"].options[0]
            values.update(
                {
                    table.primary_id: record_id,
                    "statecode": state.value,
                    "statuscode": state.default_status,
                    "ownerid": user,
                    "owneridtype": SYSTEMUSER.logical,
                    "createdby": user,
                    "modifiedby": user,
                    "createdon": now,
                    "modifiedon": now,
                    "versionnumber": version,
                    "fullname": _fullname(values),
                }
            )
            tables.put(Row(record_id, values, version))

    def seed_users(self, integration_user: str, ui_user: str) -> None:
        """The org's first users: the integration user and the person the admin API acts as."""
        tables = self.table_store(SYSTEMUSER)
        now = self.now()
        for user_id, (_, first, last, email) in zip((integration_user, ui_user), SEEDED_USERS, strict=True):
            version = self.store.next_version()
            values: dict[str, Any] = {c.name: None for c in SYSTEMUSER.columns}
            user_id = user_id.lower()
            values.update(
                systemuserid=user_id,
                firstname=first,
                lastname=last,
                fullname=_fullname({"firstname": first, "lastname": last}),
                internalemailaddress=email,
                domainname=email,
                createdon=now,
                modifiedon=now,
                versionnumber=version,
            )
            tables.put(Row(user_id, values, version))
