"""The three-way merge, the collision rules, the write plan and the new baseline, as tables."""

from __future__ import annotations

from typing import Any

import pytest

from sync_core.core.fieldmap import FieldMapping, FieldType, Unreadable, load_field_map
from sync_core.core.merge import merge_record, plan, settle
from sync_core.core.models import EntityType
from sync_core.core.schema import AttributeMeta, EntityMeta, MarketoFieldMeta, RequiredLevel

LEAD, CONTACT = EntityType.LEAD, EntityType.CONTACT
TITLE = [FieldMapping(marketo="title", lead="jobtitle", contact="jobtitle")]


@pytest.mark.parametrize(
    ("entity", "marketo", "dynamics", "baseline", "to_dynamics", "to_marketo", "winner"),
    [
        # nothing moved, or both moved to the same value (an echo lands here)
        (LEAD, {"title": "a"}, {"title": "a"}, {"title": "a"}, {}, {}, None),
        (LEAD, {"title": "b"}, {"title": "b"}, {"title": "a"}, {}, {}, None),
        # one side moved
        (LEAD, {"title": "b"}, {"title": "a"}, {"title": "a"}, {"title": "b"}, {}, None),
        (CONTACT, {"title": "a"}, {"title": "b"}, {"title": "a"}, {}, {"title": "b"}, None),
        (LEAD, {"title": None}, {"title": "a"}, {"title": "a"}, {"title": None}, {}, None),
        # a side not in its feed is at the baseline
        (LEAD, {"title": "b"}, {}, {"title": "a"}, {"title": "b"}, {}, None),
        (CONTACT, {}, {"title": "b"}, {"title": "a"}, {}, {"title": "b"}, None),
        # both moved, differently: the entity's rule
        (LEAD, {"title": "m"}, {"title": "d"}, {"title": "a"}, {"title": "m"}, {}, "marketo"),
        (CONTACT, {"title": "m"}, {"title": "d"}, {"title": "a"}, {}, {"title": "d"}, "dynamics"),
        # first link (no baseline): an empty side takes the other's value, no collision
        (CONTACT, {"title": None}, {"title": "d"}, {}, {}, {"title": "d"}, None),
        (CONTACT, {"title": "m"}, {"title": None}, {}, {"title": "m"}, {}, None),
        (LEAD, {"title": "m"}, {"title": "d"}, {}, {"title": "m"}, {}, "marketo"),
        # no baseline and a side unknown: nothing concluded
        (LEAD, {"title": "m"}, {}, {}, {}, {}, None),
    ],
)
def test_three_way_merge(
    entity: EntityType,
    marketo: dict[str, Any],
    dynamics: dict[str, Any],
    baseline: dict[str, Any],
    to_dynamics: dict[str, Any],
    to_marketo: dict[str, Any],
    winner: str | None,
) -> None:
    merge = merge_record(TITLE, entity, marketo=marketo, dynamics=dynamics, baseline=baseline)
    assert (merge.to_dynamics, merge.to_marketo) == (to_dynamics, to_marketo)
    assert [c.winner for c in merge.collisions] == ([winner] if winner else [])


def test_collision_records_the_three_values_and_the_rule() -> None:
    merge = merge_record(TITLE, LEAD, marketo={"title": "m"}, dynamics={"title": "d"}, baseline={"title": "a"})
    [collision] = merge.collisions
    assert (collision.marketo_value, collision.dynamics_value, collision.baseline_value) == ("m", "d", "a")
    assert collision.rule == "lead: Marketo wins"


@pytest.mark.parametrize(("entity", "override", "kept"), [(LEAD, "dynamics", "d"), (CONTACT, "marketo", "m")])
def test_a_per_field_override_beats_the_entity_rule(entity: EntityType, override: str, kept: str) -> None:
    mappings = [FieldMapping(marketo="title", lead="jobtitle", contact="jobtitle", winner=override)]  # type: ignore[arg-type]
    merge = merge_record(mappings, entity, marketo={"title": "m"}, dynamics={"title": "d"}, baseline={"title": "a"})
    assert merge.merged == {"title": kept}
    assert merge.collisions[0].rule.startswith("override: title")


def test_fields_not_mapped_for_the_entity_are_left_alone() -> None:
    mappings = load_field_map(None).for_entity(CONTACT)
    merge = merge_record(mappings, CONTACT, marketo={"company": "x"}, dynamics={}, baseline={"company": "y"})
    assert "company" not in merge.merged
    assert not merge.writes_anything


def test_settle_keeps_the_old_baseline_where_a_write_failed() -> None:
    mappings = [
        FieldMapping(marketo="title", lead="jobtitle"),
        FieldMapping(marketo="phone", lead="telephone1"),
    ]
    baseline = {"title": "a", "phone": "1"}
    merge = merge_record(mappings, LEAD, marketo={"title": "b"}, dynamics={"phone": "2"}, baseline=baseline)
    assert settle(baseline, merge, dynamics_written=False, marketo_written=True) == {"title": "a", "phone": "2"}
    assert settle(baseline, merge, dynamics_written=True, marketo_written=False) == {"title": "b", "phone": "1"}
    assert settle(baseline, merge, dynamics_written=True, marketo_written=True) == {"title": "b", "phone": "2"}


def test_an_unreadable_value_never_becomes_a_baseline() -> None:
    merge = merge_record(TITLE, LEAD, marketo={"title": Unreadable("x")}, dynamics={}, baseline={"title": "a"})
    assert settle({"title": "a"}, merge, dynamics_written=True, marketo_written=True) == {"title": "a"}


LEAD_META = EntityMeta(
    logical_name="lead",
    entity_set="leads",
    primary_id="leadid",
    attributes={
        "lastname": AttributeMeta(
            logical_name="lastname",
            attribute_type="String",
            max_length=50,
            required_level=RequiredLevel.APPLICATION_REQUIRED,
        ),
        "emailaddress1": AttributeMeta(
            logical_name="emailaddress1", attribute_type="String", max_length=100, format="Email"
        ),
        "leadsourcecode": AttributeMeta(logical_name="leadsourcecode", attribute_type="Picklist", options={8: "Web"}),
    },
)
DESCRIBED = {
    "lastName": MarketoFieldMeta(name="lastName", data_type="string", length=255),
    "email": MarketoFieldMeta(name="email", data_type="email", length=255),
    "leadSource": MarketoFieldMeta(name="leadSource", data_type="string", length=255),
}
MAPPINGS = [
    FieldMapping(marketo="lastName", lead="lastname"),
    FieldMapping(marketo="email", lead="emailaddress1", type=FieldType.EMAIL),
    FieldMapping(marketo="leadSource", lead="leadsourcecode", type=FieldType.OPTIONSET, options={8: "Web"}),
]


def _plan(marketo: dict[str, Any], dynamics: dict[str, Any], baseline: dict[str, Any]) -> Any:
    from sync_core.core.fieldmap import FieldMap

    field_map = FieldMap(fields=tuple(MAPPINGS))
    values = merge_record(field_map.for_entity(LEAD), LEAD, marketo=marketo, dynamics=dynamics, baseline=baseline)
    return plan(field_map, LEAD, values, metadata=LEAD_META, described=DESCRIBED)


def test_plan_converts_to_each_side_and_finds_nothing_wrong_with_good_values() -> None:
    result = _plan(
        {"leadSource": 8, "lastName": "Lovelace"},
        {"email": "ada@example.com"},
        {"leadSource": None, "lastName": "L", "email": "old@example.com"},
    )
    assert result.dynamics == {"leadsourcecode": 8, "lastname": "Lovelace"}
    assert result.marketo == {"email": "ada@example.com"}
    assert (result.dynamics_problems, result.marketo_problems) == ([], [])


@pytest.mark.parametrize(
    ("marketo", "problem"),
    [
        ({"lastName": "x" * 51}, "lastname: longer than the 50 characters Dynamics allows"),
        ({"lastName": None}, "lastname: required by Dynamics (ApplicationRequired) but empty"),
        ({"email": "not-an-email"}, "emailaddress1: not a valid email address"),
        ({"leadSource": Unreadable("leadSource: not one of the option labels of the field map")}, "leadsourcecode:"),
    ],
)
def test_plan_says_why_dynamics_would_refuse(marketo: dict[str, Any], problem: str) -> None:
    baseline = {"lastName": "L", "email": "a@example.com", "leadSource": None}
    result = _plan(marketo, {}, baseline)
    assert any(p.startswith(problem) for p in result.dynamics_problems), result.dynamics_problems
