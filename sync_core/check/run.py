"""Validate the setup, piece by piece: the native "Validate Sync" checklist, and more.

Each check is one line, pass or fail, with a fix when it fails: Key Vault references resolved;
Marketo reachable with these credentials; the sync's custom person fields and its
``microsoftSyncFailed`` activity type (with ``reason`` and ``direction``); Dataverse reachable;
the identity's role can read and write lead and contact (``WhoAmI`` + ``RetrieveUserPrivileges``);
change tracking on for both tables (the owner and account fields' custom fields, read
privileges and account change tracking are optional: their absence is said in the detail, not
failed); every mapped field on both sides with compatible types (text lengths that differ are
counted, not failed: a longer value fails for its record, as a failure); the sync filter's fields
on both sides (a Dynamics filter column a table lacks is noted: there it means "sync", as in the
native sync; a condition's column, or a Marketo filter field, that is missing fails); the Table
endpoint reachable and writable (a probe row written and deleted). A check that needs a service
found unreachable is skipped. Nothing is written to Marketo or Dataverse.

``run_checks(environ)`` returns the results (the status page shows them too); ``check_main``
prints them (``--json``: one JSON document) and exits 0 when none failed, 1 otherwise. A
configuration error found before any check (a missing setting, a broken field map) is a
``ConfigError`` for the command guard: one JSON line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sync_core.core import oneway
from sync_core.core.errors import ConfigError
from sync_core.core.fieldmap import MICROSOFT_FIELDS
from sync_core.core.models import Cursor, EntityType
from sync_core.core.schema import EntityMeta, MarketoFieldMeta
from sync_core.core.syncfilter import DEFAULT_DATAVERSE_FIELD, SyncFilter
from sync_core.core.validate import drift, type_problems
from sync_core.dataverse.client import DataverseClient
from sync_core.marketo._setup import describe_activity_type
from sync_core.marketo.activity import ACTIVITY_TYPE
from sync_core.settings import Settings
from sync_core.wiring.preflight import (
    KEY_VAULT_HINT,
    check_config,
    check_reachable,
    config_error_payload,
    unresolved_references,
)
from sync_core.wiring.services import Services, build_services

Status = Literal["pass", "fail", "skip"]

# The sync's own person fields (design §7) and the Marketo types that hold them.
MICROSOFT_FIELD_TYPES: dict[str, frozenset[str]] = {
    "microsoftType": frozenset({"string"}),
    "microsoftId": frozenset({"string"}),
    "microsoftIsDeleted": frozenset({"boolean"}),
    "microsoftCreatedDate": frozenset({"datetime"}),
}
ACTIVITY_ATTRIBUTES = ("reason", "direction")
APPROVED = frozenset({"approved", "approved with draft"})
# What the sync does to each table: reads changes, creates, updates (a qualified lead: a new contact).
PRIVILEGES = ("Read", "Create", "Write")
TABLE_NAMES = {EntityType.LEAD: "Lead", EntityType.CONTACT: "Contact"}
PROBE_CURSOR = "check.probe"
# Owners and account company fields (core.oneway): optional; without them those fields stay unfilled.
ONE_WAY_READS = {"User": "owner names", "Team": "team owner names", "Account": "company fields"}
# What each flow-step webhook needs beyond Read/Create/Write on lead and contact (optional: without
# them that step is refused by Dataverse, 403, and answers so; the sync itself is unaffected).
FLOW_PRIVILEGES = {
    "change-owner": ("prvAssignLead", "prvAssignContact"),
    "create-task": ("prvCreateActivity", "prvAppendActivity", "prvAppendToLead", "prvAppendToContact"),
    "add/remove campaign": (
        "prvReadCampaign",
        "prvAppendToCampaign",
        "prvCreateList",
        "prvReadList",
        "prvWriteList",
        "prvAppendList",
        "prvAppendToList",
    ),
}

HINTS = {
    "marketo.fields": "create the missing fields in Marketo Admin > Field Management > New Custom Field "
    "(microsoftType and microsoftId: String; microsoftIsDeleted: Boolean; microsoftCreatedDate: Datetime), "
    "with these API names",
    "marketo.activity_type": f"in Marketo Admin > Marketo Custom Activities create '{ACTIVITY_TYPE}' (primary "
    "attribute 'entity', string attributes 'reason' and 'direction'; API names exactly these) and approve it",
    "dataverse.privileges": "give the application user a security role with Create, Read and Write on Lead and "
    "Contact at Organization level (Power Platform admin center > Environments > Settings > Users + permissions "
    "> Application users > Edit security roles)",
    "dataverse.change_tracking": "turn on 'Track changes' for the table (Power Apps > Tables > the table > "
    "Properties > Advanced options), or set ChangeTrackingEnabled on its EntityMetadata; it cannot be turned off",
    "fieldmap": "fix SYNC_FIELD_MAP (or the field in Marketo/Dynamics) so each mapped field exists on both sides "
    "with a type that holds the mapping's type; until then those fields are not synced",
    "syncfilter": "fix DATAVERSE_SYNC_FILTER_FIELD / DATAVERSE_SYNC_FILTER / MARKETO_SYNC_FILTER_FIELD / "
    "MARKETO_SYNC_FILTER (or add the field: a Two Options column on lead and contact, a Boolean person field in "
    "Marketo); until then a cycle that reads the field fails",
}


@dataclass(frozen=True)
class CheckResult:
    name: str  # stable id, e.g. "dataverse.change_tracking"
    title: str
    status: Status
    detail: str
    hint: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "fail"


@dataclass(frozen=True)
class CheckReport:
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        return not any(check.failed for check in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(check) for check in self.checks]}


TITLES = {
    "keyvault": "Key Vault references resolved",
    "marketo.reachable": "Marketo reachable with these credentials",
    "marketo.fields": "Marketo custom person fields exist",
    "marketo.activity_type": f"Marketo activity type {ACTIVITY_TYPE} exists",
    "dataverse.reachable": "Dataverse reachable with these credentials",
    "dataverse.privileges": "Dataverse role can read and write lead and contact",
    "dataverse.change_tracking": "Dataverse change tracking on for lead and contact",
    "fieldmap": "Mapped fields exist on both sides with compatible types",
    "syncfilter": "Sync filter fields exist on both sides",
    "tables": "Table Storage reachable and writable",
}


def _result(name: str, status: Status, detail: str, hint: str | None = None) -> CheckResult:
    return CheckResult(name, TITLES[name], status, detail, hint if status == "fail" else None)


def _skipped(name: str, because: str) -> CheckResult:
    return _result(name, "skip", f"not checked: {because}")


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:300]


@contextmanager
def _quiet() -> Iterator[None]:
    """A probe's retries and warnings would only repeat what the check line says."""
    logger = logging.getLogger("sync_core")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _reachable(name: str, settings: Settings, **probe: bool) -> CheckResult:
    try:
        check_reachable(settings, **probe)
    except ConfigError as err:
        payload = config_error_payload(err)
        return _result(name, "fail", payload["error"], payload["hint"])
    except Exception as err:  # an answer the preflight does not translate (e.g. an access denial)
        return _result(name, "fail", _error_text(err), config_error_payload(ConfigError([])).get("hint"))
    return _result(name, "pass", "answered")


def _marketo_fields(described: Mapping[str, MarketoFieldMeta]) -> CheckResult:
    problems = []
    for name in MICROSOFT_FIELDS:
        field = described.get(name)
        if field is None:
            problems.append(f"{name} missing")
        elif field.data_type not in MICROSOFT_FIELD_TYPES[name]:
            problems.append(f"{name} is {field.data_type}, expected {'/'.join(sorted(MICROSOFT_FIELD_TYPES[name]))}")
    if problems:
        return _result("marketo.fields", "fail", "; ".join(problems), HINTS["marketo.fields"])
    detail = ", ".join(MICROSOFT_FIELDS)
    missing = [name for name in dict.fromkeys(oneway.fields_for(EntityType.CONTACT)) if name not in described]
    if missing:  # optional: reported as drift by the cycle, the rest is filled
        detail += f"; owner/account fields not filled until created: {', '.join(missing)}"
    return _result("marketo.fields", "pass", detail)


def _activity_type(services: Services) -> CheckResult:
    name = "marketo.activity_type"
    facts = describe_activity_type(services.marketo, ACTIVITY_TYPE)
    if facts is None:
        return _result(name, "fail", f"no custom activity type with API name {ACTIVITY_TYPE}", HINTS[name])
    missing = [attribute for attribute in ACTIVITY_ATTRIBUTES if attribute not in facts.attributes]
    problems = [f"attribute {attribute} missing" for attribute in missing]
    if facts.status and facts.status not in APPROVED:
        problems.append(f"status {facts.status}, not approved")
    if problems:
        return _result(name, "fail", "; ".join(problems), HINTS[name])
    return _result(name, "pass", f"{facts.status or 'approved'}, attributes {', '.join(ACTIVITY_ATTRIBUTES)}")


def _privileges(dataverse: DataverseClient) -> CheckResult:
    name = "dataverse.privileges"
    user_id = dataverse.who_am_i()
    held = dataverse.user_privileges(user_id)
    problems = []
    for entity, table in TABLE_NAMES.items():
        for action in PRIVILEGES:
            privilege = f"prv{action}{table}"
            depth = held.get(privilege)
            if depth is None:
                problems.append(f"{privilege} missing")
            elif depth.lower() not in ("global", "organization"):
                problems.append(f"{privilege} only at {depth} level (the sync sees part of {entity.value})")
    if problems:
        return _result(name, "fail", f"user {user_id}: " + "; ".join(problems), HINTS[name])
    detail = f"user {user_id}: {', '.join(PRIVILEGES)} on lead and contact"
    unread = [f"prvRead{table} ({what})" for table, what in ONE_WAY_READS.items() if f"prvRead{table}" not in held]
    if unread:  # optional: those person fields stay unfilled
        detail += f"; not filled without {', '.join(unread)}"
    refused = [
        f"{step} ({', '.join(name for name in needed if name not in held)})"
        for step, needed in FLOW_PRIVILEGES.items()
        if any(name not in held for name in needed)
    ]
    if refused:  # optional: only those flow steps are refused
        detail += f"; flow steps refused without their privileges: {'; '.join(refused)}"
    return _result(name, "pass", detail)


def _change_tracking(dataverse: DataverseClient) -> CheckResult:
    name = "dataverse.change_tracking"
    off = [entity.value for entity in EntityType if not dataverse.change_tracking_enabled(entity.value)]
    if off:
        return _result(name, "fail", f"off for {', '.join(off)}", HINTS[name])
    if not dataverse.change_tracking_enabled(oneway.ACCOUNT.logical_name):  # optional: account edits
        return _result(name, "pass", "on for lead and contact; off for account (account edits do not reach persons)")
    return _result(name, "pass", "on for lead, contact and account")


def _field_map(
    services: Services, described: Mapping[str, MarketoFieldMeta], metadata: Mapping[EntityType, EntityMeta]
) -> CheckResult:
    name = "fieldmap"
    missing = drift(services.field_map, described=described, metadata=metadata)
    wrong, differing = type_problems(services.field_map, described=described, metadata=metadata)
    problems = [f"{item.name}: {item.detail}" for item in missing] + wrong
    if problems:
        return _result(name, "fail", "; ".join(problems), HINTS[name])
    detail = f"{len(services.field_map.fields)} fields on Marketo, lead and contact"
    if differing:  # e.g. Marketo's 255-character strings against 50-character name columns
        detail += f"; {len(differing)} text lengths differ (a longer value fails for that record, as a failure)"
    return _result(name, "pass", detail)


def sync_filter_check(
    flt: SyncFilter, described: Mapping[str, MarketoFieldMeta], metadata: Mapping[EntityType, EntityMeta]
) -> CheckResult:
    """Each filter field where the cycle reads it, with the type it is read as."""
    name = "syncfilter"
    problems: list[str] = []
    notes: list[str] = []
    field = flt.dynamics.field
    if field is not None:
        lacking = [entity.value for entity in EntityType if field not in metadata[entity].attributes]
        wrong = [
            f"{field} on {entity.value} is {attribute.attribute_type}, expected Boolean (Two Options)"
            for entity in EntityType
            if (attribute := metadata[entity].attributes.get(field)) is not None
            and attribute.attribute_type != "Boolean"
        ]
        problems += wrong
        if len(lacking) == len(EntityType) and field != DEFAULT_DATAVERSE_FIELD:
            problems.append(f"{field} missing on lead and contact")
        elif lacking:
            notes.append(f"{field} not on {' and '.join(lacking)}: every record there syncs (as the native sync)")
    condition = flt.dynamics.condition
    for column in condition.fields if condition else ():
        problems += [
            f"{column} (DATAVERSE_SYNC_FILTER) missing on {entity.value}"
            for entity in EntityType
            if column not in metadata[entity].attributes
        ]
    marketo_field = flt.marketo.field
    if marketo_field is not None:
        meta = described.get(marketo_field)
        if meta is None:
            problems.append(f"{marketo_field} missing in Marketo")
        elif meta.data_type != "boolean":
            problems.append(f"{marketo_field} is {meta.data_type} in Marketo, expected boolean")
    marketo_condition = flt.marketo.condition
    problems += [
        f"{person_field} (MARKETO_SYNC_FILTER) missing in Marketo"
        for person_field in (marketo_condition.fields if marketo_condition else ())
        if person_field not in described
    ]
    if problems:
        return _result(name, "fail", "; ".join(problems), HINTS[name])
    if not flt.dynamics.active and not flt.marketo.active:
        return _result(name, "pass", "no filter: every record syncs")
    found = [f"Dynamics {', '.join(flt.dynamics.fields)}" if flt.dynamics.active else ""]
    found += [f"Marketo {', '.join(flt.marketo.fields)}" if flt.marketo.active else ""]
    return _result(name, "pass", "; ".join([", ".join(part for part in found if part), *notes]))


def _tables(services: Services) -> CheckResult:
    name = "tables"
    reachable = _reachable(name, services.settings, tables=True, marketo=False, dataverse=False)
    if reachable.failed:
        return reachable
    probe = f"{PROBE_CURSOR}.{uuid.uuid4().hex[:12]}"
    try:
        stored = services.store.put_cursor(Cursor(name=probe, value=datetime.now(UTC).isoformat()))
        services.store.delete_cursor(stored)
    except Exception as err:
        return _result(
            name,
            "fail",
            f"a probe row could not be written and deleted ({_error_text(err)})",
            "give the identity 'Storage Table Data Contributor' on the storage account (reading is not enough), "
            "or use a connection string whose key allows writes",
        )
    return _result(name, "pass", "a probe row written and deleted")


def _guard(name: str, run: Callable[[], CheckResult]) -> CheckResult:
    try:
        return run()
    except ConfigError as err:
        payload = config_error_payload(err)
        return _result(name, "fail", payload["error"], HINTS.get(name, payload["hint"]))
    except Exception as err:
        return _result(name, "fail", _error_text(err), HINTS.get(name))


def run_checks(environ: Mapping[str, str], *, services: Services | None = None) -> CheckReport:
    """Every check, in order. ``ConfigError`` when the settings stop it before any check."""
    unresolved = unresolved_references(environ)
    if unresolved:
        checks = [
            _result(
                "keyvault",
                "fail",
                f"still a Key Vault reference, not the secret: {', '.join(unresolved)}",
                KEY_VAULT_HINT,
            )
        ]
        checks += [_skipped(name, "Key Vault references unresolved") for name in list(TITLES)[1:]]
        return CheckReport(checks)
    settings = check_config(environ)
    checks = [_result("keyvault", "pass", "no app setting is an unresolved @Microsoft.KeyVault(...) reference")]
    own = services is None
    wiring = services if services is not None else build_services(settings)
    try:
        with _quiet():
            checks += _run(wiring)
    finally:
        if own:
            wiring.close()
    return CheckReport(checks)


def _run(services: Services) -> list[CheckResult]:
    settings = services.settings
    checks: list[CheckResult] = []
    described: dict[str, MarketoFieldMeta] | None = None
    marketo = _reachable("marketo.reachable", settings, tables=False, marketo=True, dataverse=False)
    checks.append(marketo)
    if marketo.failed:
        checks += [_skipped(name, "Marketo unreachable") for name in ("marketo.fields", "marketo.activity_type")]
    else:
        try:
            described = services.marketo.describe(refresh=True)
            checks.append(_marketo_fields(described))
        except Exception as err:
            checks.append(_result("marketo.fields", "fail", _error_text(err), HINTS["marketo.fields"]))
        checks.append(_guard("marketo.activity_type", lambda: _activity_type(services)))
    metadata: dict[EntityType, EntityMeta] | None = None
    dataverse = _reachable("dataverse.reachable", settings, tables=False, marketo=False, dataverse=True)
    checks.append(dataverse)
    if dataverse.failed:
        checks += [
            _skipped(name, "Dataverse unreachable") for name in ("dataverse.privileges", "dataverse.change_tracking")
        ]
    else:
        checks.append(_guard("dataverse.privileges", lambda: _privileges(services.dataverse)))
        checks.append(_guard("dataverse.change_tracking", lambda: _change_tracking(services.dataverse)))
        try:
            metadata = {
                entity: services.dataverse.get_entity_metadata(entity.value, refresh=True) for entity in EntityType
            }
        except Exception as err:
            checks.append(_result("fieldmap", "fail", f"table metadata unreadable ({_error_text(err)})"))
    if described is not None and metadata is not None:
        checks.append(_guard("fieldmap", lambda: _field_map(services, described, metadata)))
        checks.append(_guard("syncfilter", lambda: sync_filter_check(settings.sync_filter, described, metadata)))
    else:
        if not any(check.name == "fieldmap" for check in checks):
            checks.append(_skipped("fieldmap", "a side is unreachable"))
        checks.append(_skipped("syncfilter", "a side is unreachable"))
    checks.append(_guard("tables", lambda: _tables(services)))
    return checks


MARKS = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}


def render_text(report: CheckReport) -> str:
    lines = []
    for check in report.checks:
        lines.append(f"{MARKS[check.status]}  {check.title}: {check.detail}")
        if check.hint:
            lines.append(f"      fix: {check.hint}")
    failed = sum(1 for check in report.checks if check.failed)
    lines.append("all checks passed" if report.ok else f"{failed} check(s) failed")
    return "\n".join(lines)


def check_main(argv: list[str], *, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sync_core check",
        description="validate the setup: credentials, custom fields and activity type, privileges, change "
        "tracking, the field map against both sides, the state store. Exit 0 when every check passes, 1 when "
        "any fails, 2 for a configuration error found before checking.",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document instead of lines")
    args = parser.parse_args(argv)
    report = run_checks(os.environ if environ is None else environ)
    if args.json:
        print(json.dumps(report.as_json(), ensure_ascii=False))
    else:
        print(render_text(report))
    sys.stdout.flush()
    return 0 if report.ok else 1
