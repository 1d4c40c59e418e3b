"""The three-way merge and the write plan of one record (design §3 steps 4-5, rules B2, B7).

Per mapped field, three canonical values: Marketo now, Dynamics now, and the baseline (what
both sides last agreed on). A side whose value is not known is taken to be at the baseline:
the engine passes only what the change feeds said, and asks for a full read whenever that
assumption could be wrong (no baseline for a field yet, an open failure on the record). A field
with no baseline and a side unknown is left out: nothing can be concluded about it.

    Marketo == Dynamics            nothing to write (an echo of our own write lands here)
    only Marketo moved             Marketo's value goes to Dynamics
    only Dynamics moved            Dynamics' value goes to Marketo
    both moved, to different values  a collision: the field's override, else lead → Marketo wins,
                                   contact → Dynamics wins; the loser side gets the winner's value

``plan`` turns a merge into wire payloads for both sides and the reasons either side would
refuse them (validation against Dataverse metadata and Marketo describe); ``settle`` says what
the baseline becomes once some writes landed and others did not. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sync_core.core.convert import to_dataverse, to_marketo
from sync_core.core.fieldmap import FieldMap, FieldMapping, Unreadable, Winner
from sync_core.core.models import EntityType
from sync_core.core.schema import EntityMeta, MarketoFieldMeta

ENTITY_WINNER: dict[EntityType, Winner] = {EntityType.LEAD: "marketo", EntityType.CONTACT: "dynamics"}


@dataclass(frozen=True, slots=True)
class FieldCollision:
    key: str
    marketo_value: Any
    dynamics_value: Any
    baseline_value: Any
    winner: Winner
    rule: str  # "lead: Marketo wins", "contact: Dynamics wins", "override: <key> Marketo wins"


@dataclass(frozen=True, slots=True)
class Merge:
    to_dynamics: dict[str, Any]  # key -> canonical value Dynamics should get
    to_marketo: dict[str, Any]  # key -> canonical value Marketo should get
    merged: dict[str, Any]  # key -> the value both hold once the writes land
    collisions: tuple[FieldCollision, ...] = ()

    @property
    def writes_anything(self) -> bool:
        return bool(self.to_dynamics or self.to_marketo)


def collision_rule(
    mapping: FieldMapping, entity: EntityType, *, first_contact: Mapping[EntityType, Winner] | None = None
) -> tuple[Winner, str]:
    """Who wins a collision on this field: the field's override, else (on a first link, when the
    initial sync's policy says so) the first-contact winner of the entity, else B2."""
    if mapping.winner is not None:
        return mapping.winner, f"override: {mapping.key} {_side_name(mapping.winner)} wins"
    if first_contact is not None and entity in first_contact:
        winner = first_contact[entity]
        return winner, f"first contact: {entity.value} {_side_name(winner)} wins"
    winner = ENTITY_WINNER[entity]
    return winner, f"{entity.value}: {_side_name(winner)} wins"


def _side_name(winner: Winner) -> str:
    return "Marketo" if winner == "marketo" else "Dynamics"


def merge_record(
    mappings: Sequence[FieldMapping],
    entity: EntityType,
    *,
    marketo: Mapping[str, Any],
    dynamics: Mapping[str, Any],
    baseline: Mapping[str, Any],
    first_contact: Mapping[EntityType, Winner] | None = None,
) -> Merge:
    """Merge one record field by field; ``marketo``/``dynamics`` hold the values known by key.

    ``first_contact``: who wins, per entity, a field both sides hold with different values and
    no baseline yet (the initial sync's policy); ``None``: the B2 rule, as for any collision."""
    to_dynamics: dict[str, Any] = {}
    to_marketo: dict[str, Any] = {}
    merged: dict[str, Any] = {}
    collisions: list[FieldCollision] = []
    for mapping in mappings:
        key = mapping.key
        if key not in baseline and (key not in marketo or key not in dynamics):
            continue  # no baseline and a side unknown: nothing can be concluded (the engine reads both)
        base = baseline.get(key)
        m = marketo.get(key, base)
        d = dynamics.get(key, base)
        if m == d:
            merged[key] = m
        elif m == base and key in baseline:
            to_marketo[key] = merged[key] = d
        elif d == base and key in baseline:
            to_dynamics[key] = merged[key] = m
        else:
            # Both moved (or there is no baseline for the field yet: a first link, or a field
            # new to the map) to different values.
            winner = _first_link_winner(m, d) if key not in baseline else None
            if winner is None:
                winner, rule = collision_rule(
                    mapping, entity, first_contact=first_contact if key not in baseline else None
                )
                collisions.append(FieldCollision(key, m, d, base, winner, rule))
            if winner == "marketo":
                to_dynamics[key] = merged[key] = m
            else:
                to_marketo[key] = merged[key] = d
    return Merge(to_dynamics, to_marketo, merged, tuple(collisions))


def _first_link_winner(m: Any, d: Any) -> Winner | None:
    """Without a baseline, an empty side simply takes the other's value: that is not a collision."""
    if m is None:
        return "dynamics"
    if d is None:
        return "marketo"
    return None


def settle(
    baseline: Mapping[str, Any], merge: Merge, *, dynamics_written: bool, marketo_written: bool
) -> dict[str, Any]:
    """The new baseline: merged values, except where the write that would have made them true failed.

    A value that could not be read never becomes a baseline."""
    new: dict[str, Any] = {}
    for key, value in merge.merged.items():
        failed = (key in merge.to_dynamics and not dynamics_written) or (
            key in merge.to_marketo and not marketo_written
        )
        if failed or isinstance(value, Unreadable):
            if key in baseline:
                new[key] = baseline[key]
        else:
            new[key] = value
    return new


@dataclass(frozen=True)
class Plan:
    """The wire payloads of one record, and why either side would refuse its part."""

    dynamics: dict[str, Any] = field(default_factory=dict)  # column -> value
    marketo: dict[str, Any] = field(default_factory=dict)  # Marketo field -> value
    dynamics_problems: list[str] = field(default_factory=list)
    marketo_problems: list[str] = field(default_factory=list)


def plan(
    field_map: FieldMap,
    entity: EntityType,
    merge: Merge,
    *,
    metadata: EntityMeta | None,
    described: Mapping[str, MarketoFieldMeta] | None,
    creating: bool = False,
) -> Plan:
    """Payloads for ``merge``'s writes, converted to each side's form and validated (``convert``).

    ``metadata``/``described`` None: that side is not validated here (nothing goes to it, or
    the caller validates elsewhere)."""
    dynamics = to_dataverse(field_map, entity, merge.to_dynamics, metadata=metadata, creating=creating)
    marketo = to_marketo(field_map, entity, merge.to_marketo, described=described)
    return Plan(dynamics.payload, marketo.payload, dynamics.problems, marketo.problems)
