"""A fake Dataverse Web API: ``leads`` and ``contacts`` with change tracking, metadata and bulk writes;
``accounts`` (change-tracked too), ``systemusers`` and ``teams`` for the owner and company fields.

Answers what ``DataverseClient`` calls in a cycle: ``EntityDefinitions`` (a table, its
``Attributes`` and their String/Picklist casts), change-tracking reads (``Prefer:
odata.track-changes``; ``@odata.deltaLink`` with a ``$deltatoken`` that is a row version;
deletions as ``$deletedEntity`` items), ``$filter`` reads (``col eq literal or …``),
``UpdateMultiple`` (all or nothing, as on standard tables), ``$batch`` with continue-on-error,
``PATCH`` and ``DELETE`` of one row. A write is checked as the service would: the row exists,
the columns exist, text fits ``MaxLength``, and every ``plugin_rules`` entry (a plug-in that
aborts the operation) agrees. A read asking for formatted values (``Prefer:
odata.include-annotations``) gets an option's label from ``labels``; a table in ``denied`` answers
403 as for a role without its read privilege.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.fakes.clock import Clock

API = "/api/data/v9.2"
TOKEN = "dv-unit-token"
NOT_FOUND = "0x80040217"
UNKNOWN_COLUMN = "0x80060888"
TOO_LONG = "0x80044331"
PLUGIN_ABORT = "0x80040265"
EXPIRED = "0x80044352"
MESSAGE_NOT_SUPPORTED = "0x80040800"

_STRINGS = {
    "emailaddress1": 100,
    "firstname": 50,
    "lastname": 50,
    "jobtitle": 100,
    "telephone1": 50,
    "companyname": 100,
    "subject": 300,
}
# entity set -> (logical name, primary id, {column: (type, required level, max length)})
TABLES: dict[str, tuple[str, str, dict[str, tuple[str, str, int | None]]]] = {
    "leads": (
        "lead",
        "leadid",
        {
            "leadid": ("Uniqueidentifier", "SystemRequired", None),
            "createdon": ("DateTime", "None", None),
            "statecode": ("State", "SystemRequired", None),
            "new_synctomkto": ("Boolean", "None", None),
            "_ownerid_value": ("Lookup", "SystemRequired", None),
            **{c: ("String", "ApplicationRequired" if c == "lastname" else "None", n) for c, n in _STRINGS.items()},
        },
    ),
    "contacts": (
        "contact",
        "contactid",
        {
            "contactid": ("Uniqueidentifier", "SystemRequired", None),
            "createdon": ("DateTime", "None", None),
            "_originatingleadid_value": ("Lookup", "None", None),
            "new_synctomkto": ("Boolean", "None", None),
            "_parentcustomerid_value": ("Lookup", "None", None),
            "_ownerid_value": ("Lookup", "SystemRequired", None),
            **{
                c: ("String", "ApplicationRequired" if c == "lastname" else "None", n)
                for c, n in _STRINGS.items()
                if c not in ("companyname", "subject")
            },
        },
    ),
    # the tables the Dynamics-owned person fields come from (core.oneway)
    "accounts": (
        "account",
        "accountid",
        {
            "accountid": ("Uniqueidentifier", "SystemRequired", None),
            "name": ("String", "ApplicationRequired", 160),
            "websiteurl": ("String", "None", 200),
            "industrycode": ("Picklist", "None", None),
            "numberofemployees": ("Integer", "None", None),
            "revenue": ("Money", "None", None),
            "accountnumber": ("String", "None", 20),
        },
    ),
    "systemusers": (
        "systemuser",
        "systemuserid",
        {
            "systemuserid": ("Uniqueidentifier", "SystemRequired", None),
            "fullname": ("String", "None", 200),
            "internalemailaddress": ("String", "None", 100),
        },
    ),
    "teams": (
        "team",
        "teamid",
        {
            "teamid": ("Uniqueidentifier", "SystemRequired", None),
            "name": ("String", "ApplicationRequired", 160),
            "emailaddress": ("String", "None", 100),
        },
    ),
}
INDUSTRIES = {1: "Accounting", 7: "Consulting", 25: "Service Retail"}  # account.industrycode options
FORMATTED = "@OData.Community.Display.V1.FormattedValue"
_EQ = re.compile(r"(\w+) eq ('(?:[^']|'')*'|[0-9a-fA-F-]{36})")
PluginRule = Callable[[str, Mapping[str, Any]], str | None]  # (entity set, row after the write) -> refusal


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> httpx.Response:
        return httpx.Response(self.status, json={"error": {"code": self.code, "message": self.message}})


@dataclass
class FakeDataverse:
    clock: Clock
    rows: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {name: {} for name in TABLES})
    versions: dict[tuple[str, str], int] = field(default_factory=dict)  # (set, id) -> version of its last change
    tombstones: list[tuple[int, str, str]] = field(default_factory=list)  # (version, set, id)
    plugin_rules: list[PluginRule] = field(default_factory=list)
    api_writes: list[tuple[str, str, str]] = field(default_factory=list)  # (operation, set, id) by the sync
    requests: list[httpx.Request] = field(default_factory=list)
    expired_below: int = 0  # delta tokens older than this version are refused as expired
    bulk_disabled: set[str] = field(default_factory=set)  # entity sets where UpdateMultiple is not enabled
    delta_answers: dict[str, str] = field(default_factory=dict)  # entity set -> next delta read: "empty" | "no_link"
    labels: dict[str, dict[int, str]] = field(default_factory=lambda: {"industrycode": dict(INDUSTRIES)})
    denied: set[str] = field(default_factory=set)  # entity sets the sync's role may not read (403)
    _version: int = 0

    # -- acting as a Dynamics user ---------------------------------------------------------------

    def create(self, entity_set: str, **values: Any) -> str:
        row_id = str(uuid.uuid4())
        primary = TABLES[entity_set][1]
        created = self.clock().isoformat().replace("+00:00", "Z")
        state = {"statecode": 0} if entity_set == "leads" else {}
        self.rows[entity_set][row_id] = {primary: row_id, "createdon": created, **state, **values}
        self._touch(entity_set, row_id)
        return row_id

    def update(self, entity_set: str, row_id: str, **values: Any) -> None:
        self.rows[entity_set][row_id].update(values)
        self._touch(entity_set, row_id)

    def delete(self, entity_set: str, row_id: str) -> None:
        del self.rows[entity_set][row_id]
        self.versions.pop((entity_set, row_id), None)
        self._version += 1
        self.tombstones.append((self._version, entity_set, row_id))

    def qualify(self, lead_id: str) -> str:
        """QualifyLead into a contact: the contact remembers its lead, the lead is closed as qualified."""
        lead = self.rows["leads"][lead_id]
        copied = {c: lead.get(c) for c in ("emailaddress1", "firstname", "lastname", "jobtitle", "telephone1")}
        contact_id = self.create("contacts", **copied, _originatingleadid_value=lead_id)
        self.update("leads", lead_id, statecode=1)
        return contact_id

    def expire_change_tracking(self) -> None:
        """Every delta token handed out so far is now too old (the service's retention ran out)."""
        self.expired_below = self._version + 1

    def row(self, entity_set: str, row_id: str) -> dict[str, Any] | None:
        return self.rows[entity_set].get(row_id)

    def _touch(self, entity_set: str, row_id: str) -> None:
        self._version += 1
        self.versions[(entity_set, row_id)] = self._version

    # -- the Web API -----------------------------------------------------------------------------

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401)
        path = request.url.path.removeprefix(API + "/")
        params = {key: request.url.params[key] for key in request.url.params}
        try:
            if path.startswith("EntityDefinitions"):
                return self._metadata(path, params)
            if path == "$batch":
                return self._batch(request)
            entity_set, _, action = path.partition("/")
            if request.method == "POST" and action == "Microsoft.Dynamics.CRM.UpdateMultiple":
                if entity_set in self.bulk_disabled:
                    logical = TABLES[entity_set][0]
                    message = f"The 'UpdateMultiple' method does not support entities of type '{logical}'."
                    raise _Refused(400, MESSAGE_NOT_SUPPORTED, message)
                return self._update_multiple(entity_set, json.loads(request.content)["Targets"])
            if request.method == "GET":
                return self._read(entity_set, params, request.headers.get("Prefer", ""))
            table, row_id = _address(path)
            if request.method == "PATCH":
                self._write(table, row_id, json.loads(request.content))
                return httpx.Response(204, headers={"OData-EntityId": f"{API}/{table}({row_id})"})
            if request.method == "DELETE":
                if row_id not in self.rows[table]:
                    raise _Refused(404, NOT_FOUND, f"{table} With Id = {row_id} Does Not Exist")
                self.delete(table, row_id)
                self.api_writes.append(("delete", table, row_id))
                return httpx.Response(204)
        except _Refused as refused:
            return refused.response()
        return httpx.Response(405)

    def _metadata(self, path: str, params: Mapping[str, str]) -> httpx.Response:
        if path == "EntityDefinitions":  # $filter=LogicalName eq '…' or EntitySetName eq '…'
            column, literal = _EQ.findall(params["$filter"])[0]
            name = literal.strip("'")
            found = [
                {"LogicalName": logical, "EntitySetName": entity_set, "PrimaryIdAttribute": primary}
                for entity_set, (logical, primary, _) in TABLES.items()
                if name == (entity_set if column == "EntitySetName" else logical)
            ]
            return httpx.Response(200, json={"value": found})
        match = re.match(
            r"EntityDefinitions\(LogicalName='(\w+)'\)(/Attributes)?(/Microsoft\.Dynamics\.CRM\.(\w+))?$", path
        )
        assert match is not None, path
        logical, attributes, _, cast = match.groups()
        entity_set = next(s for s, (name, _, _) in TABLES.items() if name == logical)
        _, primary, columns = TABLES[entity_set]
        if attributes is None:
            body = {
                "LogicalName": logical,
                "EntitySetName": entity_set,
                "PrimaryIdAttribute": primary,
                "ChangeTrackingEnabled": True,
            }
            return httpx.Response(200, json=body)
        value: list[dict[str, Any]]
        if cast == "StringAttributeMetadata":
            value = [
                {"LogicalName": c, "MaxLength": n, "Format": "Email" if c == "emailaddress1" else "Text"}
                for c, (kind, _, n) in columns.items()
                if kind == "String"
            ]
        elif cast == "PicklistAttributeMetadata":
            value = []
        else:
            value = [
                {
                    "LogicalName": c,
                    "AttributeType": kind,
                    "RequiredLevel": {"Value": level},
                    "IsValidForCreate": True,
                    "IsValidForUpdate": c != primary,
                }
                for c, (kind, level, _) in columns.items()
            ]
        return httpx.Response(200, json={"value": value})

    def _read(self, entity_set: str, params: Mapping[str, str], prefer: str) -> httpx.Response:
        select = params["$select"].split(",")
        logical, _, columns = TABLES[entity_set]
        unknown = [column for column in select if column not in columns]
        if unknown:
            raise _Refused(
                400,
                UNKNOWN_COLUMN,
                f"Could not find a property named '{unknown[0]}' on type 'Microsoft.Dynamics.CRM.{logical}'.",
            )
        table = self.rows[entity_set]
        if entity_set in self.denied:
            raise _Refused(403, "0x80040220", f"Principal user is missing prvRead{logical.capitalize()} privilege")
        labels = self.labels if "FormattedValue" in prefer else {}
        if "$filter" in params:
            conditions = [(c, _literal(v)) for c, v in _EQ.findall(params["$filter"])]
            found = [
                r for r in table.values() if any(str(r.get(c, "")).casefold() == v.casefold() for c, v in conditions)
            ]
            return httpx.Response(200, json={"value": [_selected(r, select, labels) for r in found]})
        assert "odata.track-changes" in prefer, "a read of a whole table is a change-tracking read"
        since = int(params.get("$deltatoken", 0))
        if "$deltatoken" in params and since < self.expired_below:
            raise _Refused(400, EXPIRED, "Version stamp associated with the client has expired")
        changed = [r for i, r in table.items() if self.versions[(entity_set, i)] > since]
        deleted = [
            {"@odata.context": f"{API}/$metadata#{entity_set}/$deletedEntity", "id": i, "reason": "deleted"}
            for version, s, i in self.tombstones
            if s == entity_set and version > since
        ]
        link = f"{API}/{entity_set}?$select={','.join(select)}&$deltatoken={self._version}"
        body = {"value": [_selected(r, select, labels) for r in changed] + deleted, "@odata.deltaLink": link}
        quirk = self.delta_answers.pop(entity_set, None) if "$deltatoken" in params else None
        if quirk == "empty":
            return httpx.Response(200)
        if quirk == "no_link":
            del body["@odata.deltaLink"]
        return httpx.Response(200, json=body, headers={"Preference-Applied": "odata.track-changes"})

    def _write(self, entity_set: str, row_id: str, values: Mapping[str, Any]) -> None:
        """One update, checked as the service checks it; applied only if nothing refuses it."""
        row = self.rows[entity_set].get(row_id)
        if row is None:
            raise _Refused(404, NOT_FOUND, f"{entity_set} With Id = {row_id} Does Not Exist")
        columns = TABLES[entity_set][2]
        for column, value in values.items():
            if column not in columns:
                raise _Refused(400, UNKNOWN_COLUMN, f"Could not find a property named '{column}'")
            limit = columns[column][2]
            if isinstance(value, str) and limit is not None and len(value) > limit:
                raise _Refused(
                    400, TOO_LONG, f"A validation error occurred. The length of the '{column}' attribute exceeded"
                )
        after = {**row, **values}
        for rule in self.plugin_rules:
            refusal = rule(entity_set, after)
            if refusal:
                raise _Refused(400, PLUGIN_ABORT, refusal)
        self.update(entity_set, row_id, **values)
        self.api_writes.append(("update", entity_set, row_id))

    def _update_multiple(self, entity_set: str, targets: list[dict[str, Any]]) -> httpx.Response:
        primary = TABLES[entity_set][1]
        writes = [(t[primary], {k: v for k, v in t.items() if k != primary and not k.startswith("@")}) for t in targets]
        saved = (
            {i: dict(r) for i, r in self.rows[entity_set].items()},
            dict(self.versions),
            list(self.api_writes),
            self._version,
        )
        try:
            for row_id, values in writes:
                self._write(entity_set, row_id, values)
        except _Refused as refused:  # a standard table rolls the whole message back
            rows, self.versions, self.api_writes, self._version = saved
            self.rows[entity_set] = rows
            return refused.response()
        return httpx.Response(204)

    def _batch(self, request: httpx.Request) -> httpx.Response:
        boundary = request.headers["Content-Type"].split("boundary=")[1]
        answers: list[str] = []
        for part in request.content.decode().split(f"--{boundary}")[1:-1]:
            lines = part.replace("\r\n", "\n").strip("\n").split("\n")
            method, url, _ = next(line for line in lines if " HTTP/1.1" in line).split(" ")
            assert method == "PATCH", "the client isolates updates only"
            body = json.loads(lines[-1]) if lines[-1].startswith("{") else {}
            table, row_id = _address(url.removeprefix(API + "/"))
            try:
                self._write(table, row_id, body)
                answers.append(f"HTTP/1.1 204 No Content\nOData-EntityId: {API}/{table}({row_id})\n\n")
            except _Refused as refused:
                error = json.dumps({"error": {"code": refused.code, "message": refused.message}})
                answers.append(f"HTTP/1.1 {refused.status} Error\nContent-Type: application/json\n\n{error}")
        out = "".join(f"--batchresponse\nContent-Type: application/http\n\n{a}\n" for a in answers)
        content = (out + "--batchresponse--\n").replace("\n", "\r\n").encode()
        return httpx.Response(200, content=content, headers={"Content-Type": "multipart/mixed; boundary=batchresponse"})


def _address(path: str) -> tuple[str, str]:
    match = re.match(r"(\w+)\(([0-9a-fA-F-]{36})\)$", path)
    assert match is not None, path
    return match.group(1), match.group(2)


def _literal(text: str) -> str:
    return text[1:-1].replace("''", "'") if text.startswith("'") else text


def _selected(row: Mapping[str, Any], select: list[str], labels: Mapping[str, Mapping[int, str]]) -> dict[str, Any]:
    out = {"@odata.etag": 'W/"1"', **{column: row.get(column) for column in select}}
    for column in select:  # Prefer odata.include-annotations="OData.Community.Display.V1.FormattedValue"
        if column in labels and row.get(column) in labels[column]:
            out[column + FORMATTED] = labels[column][row[column]]
    return out
