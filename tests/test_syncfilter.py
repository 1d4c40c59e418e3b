"""The sync filter's rule (``core.syncfilter``): the native boolean field, the condition language,
and the settings that carry them. Pure: every case is a row."""

from __future__ import annotations

from typing import Any

import pytest

from sync_core.check.run import sync_filter_check
from sync_core.core.errors import ConfigError
from sync_core.core.models import EntityType
from sync_core.core.schema import AttributeMeta, EntityMeta, MarketoFieldMeta
from sync_core.core.syncfilter import FilterSyntaxError, SideFilter, SyncFilter, parse_condition
from sync_core.settings import Settings
from sync_core.wiring.preflight import config_error_payload

NATIVE = SideFilter(field="new_synctomkto")


@pytest.mark.parametrize(
    ("values", "admitted"),
    [
        ({}, True),  # the column missing: sync
        ({"new_synctomkto": None}, True),  # empty: sync
        ({"new_synctomkto": ""}, True),
        ({"new_synctomkto": True}, True),
        ({"new_synctomkto": False}, False),  # only an explicit No skips
        ({"new_synctomkto": "false"}, False),  # Marketo's change feed sends text
        ({"new_synctomkto": "0"}, False),
        ({"new_synctomkto": 0}, False),
        ({"new_synctomkto": "true"}, True),
        ({"new_synctomkto": "maybe"}, True),  # not a No
    ],
)
def test_the_filter_field_skips_only_an_explicit_no(values: dict[str, Any], admitted: bool) -> None:
    assert NATIVE.admits(values) is admitted


@pytest.mark.parametrize(
    ("condition", "values", "expected"),
    [
        ("leadSource eq 'Partner'", {"leadSource": "partner"}, True),  # text ignores case
        ("leadSource eq 'Partner'", {"leadSource": "Web"}, False),
        ("leadSource ne 'Partner'", {}, True),  # null is not 'Partner'
        ("leadSource eq null", {"leadSource": ""}, True),  # empty is null
        ("leadSource ne null", {"leadSource": "Web"}, True),
        ("name eq 'it''s'", {"name": "It's"}, True),  # '' is a quote
        ("statecode eq 0", {"statecode": 0}, True),
        ("statecode eq 0", {"statecode": "0"}, True),  # Marketo's feed: numbers as text
        ("statecode eq 0", {"statecode": None}, False),
        ("score ge 10.5", {"score": 11}, True),
        ("score lt 10", {"score": None}, False),  # order comparisons are false on null
        ("score gt 10", {"score": "high"}, False),  # and on a value of another type
        ("donotemail eq true", {"donotemail": "true"}, True),
        ("donotemail ne true", {"donotemail": "nonsense"}, True),
        ("endswith(email,'@Test.example.com')", {"email": "a@test.EXAMPLE.com"}, True),
        ("startswith(email,'qa+')", {"email": "QA+1@x.com"}, True),
        ("contains(email,'+test')", {"email": None}, False),
        ("not contains(email,'+test')", {"email": "a+test@x.com"}, False),
        ("a eq 1 or b eq 1 and c eq 1", {"a": 1}, True),  # and binds tighter than or
        ("(a eq 1 or b eq 1) and c eq 1", {"a": 1}, False),
        ("not (a eq 1) and NOT b eq 2", {"a": 2, "b": 3}, True),
    ],
)
def test_a_condition_evaluates_like_odata_on_either_sides_values(
    condition: str, values: dict[str, Any], expected: bool
) -> None:
    assert parse_condition(condition)(values) is expected


def test_a_condition_names_every_field_it_reads_once() -> None:
    condition = parse_condition("a eq 1 or (not contains(b,'x') and a ne 2)")
    assert condition.fields == ("a", "b")


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("", "empty condition"),
        ("a eq", "expected a value ('text', a number, true, false or null) at position 5, found the end"),
        ("a eq b", "expected a value ('text', a number, true, false or null) at position 6, found 'b'"),
        ("eq 1", "expected a field name at position 1, found 'eq'"),
        ("a == 1", "unexpected character at position 3: '='"),
        ("a eq 'x", 'unexpected character at position 6: "\'"'),
        ("(a eq 1", "expected ')' at position 8, found the end"),
        ("a eq 1 b", "expected 'and', 'or' or the end at position 8, found 'b'"),
        ("contains(a, 1)", "contains needs a 'text' literal at position 13, found '1'"),
        ("a like 'x'", "expected a comparison (eq, ne, gt, ge, lt, le) at position 3, found 'like'"),
    ],
)
def test_a_condition_that_does_not_parse_says_where(condition: str, message: str) -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse_condition(condition)
    assert str(caught.value) == message


def test_a_record_syncs_only_when_the_field_and_the_condition_both_admit_it() -> None:
    side = SyncFilter.of(dynamics_field="new_synctomkto", dynamics_condition="statecode eq 0").dynamics
    assert side.fields == ("new_synctomkto", "statecode")
    assert side.admits({"statecode": 0})
    assert not side.admits({"statecode": 0, "new_synctomkto": False})
    assert not side.admits({"statecode": 1, "new_synctomkto": True})
    assert not SideFilter().active
    assert SideFilter().admits({"anything": False})


def test_the_filters_key_changes_with_any_part_of_either_side_and_is_none_without_filters() -> None:
    variants = [
        SyncFilter.of(dynamics_field="new_synctomkto"),
        SyncFilter.of(dynamics_field="new_synctomkto", dynamics_condition="statecode eq 0"),
        SyncFilter.of(dynamics_field="new_synctomkto", marketo_field="syncToMicrosoft"),
        SyncFilter.of(marketo_condition="new_synctomkto eq true"),
    ]
    keys = [variant.key for variant in variants]
    assert None not in keys
    assert len(set(keys)) == len(keys)
    assert SyncFilter.of(dynamics_field="new_synctomkto").key == keys[0]  # stable
    assert SyncFilter().key is None


# -- the settings ----------------------------------------------------------------------------

BASE = {
    "MARKETO_BASE_URL": "https://123-abc-456.mktorest.com",
    "MARKETO_CLIENT_ID": "id",
    "MARKETO_CLIENT_SECRET": "secret",
    "DATAVERSE_URL": "https://contoso.crm.dynamics.com",
    "SYNC_TABLES_CONNECTION": "UseDevelopmentStorage=true",
}


def test_the_dynamics_filter_defaults_to_the_native_column_and_an_empty_setting_turns_it_off() -> None:
    assert Settings.from_env(BASE).sync_filter == SyncFilter(dynamics=SideFilter(field="new_synctomkto"))
    assert Settings.from_env({**BASE, "DATAVERSE_SYNC_FILTER_FIELD": " "}).sync_filter == SyncFilter()


def test_both_sides_filters_are_read_from_the_settings() -> None:
    settings = Settings.from_env(
        {
            **BASE,
            "DATAVERSE_SYNC_FILTER_FIELD": "cr123_sync",
            "DATAVERSE_SYNC_FILTER": "statecode eq 0",
            "MARKETO_SYNC_FILTER_FIELD": "syncToMicrosoft",
            "MARKETO_SYNC_FILTER": "leadSource ne 'Partner'",
        }
    )
    flt = settings.sync_filter
    assert flt.dynamics.fields == ("cr123_sync", "statecode")
    assert flt.marketo.fields == ("syncToMicrosoft", "leadSource")
    assert not flt.marketo.admits({"leadSource": "Partner"})


def test_a_bad_filter_is_a_configuration_error_naming_the_setting_with_a_hint() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                **BASE,
                "MARKETO_SYNC_FILTER": "leadSource = 'Partner'",
                "DATAVERSE_SYNC_FILTER": "StateCode eq 0",
                "MARKETO_SYNC_FILTER_FIELD": "sync to microsoft",
            }
        )
    problems = caught.value.problems
    assert any(p.startswith("MARKETO_SYNC_FILTER: ") and "unexpected character at position 12" in p for p in problems)
    assert any(p.startswith("DATAVERSE_SYNC_FILTER: ") and "StateCode: a column's logical name" in p for p in problems)
    assert any(p.startswith("MARKETO_SYNC_FILTER_FIELD: ") and "plain field name" in p for p in problems)
    payload = config_error_payload(caught.value)
    assert payload["setting"] == "DATAVERSE_SYNC_FILTER, MARKETO_SYNC_FILTER, MARKETO_SYNC_FILTER_FIELD"
    assert "Which records sync" in payload["hint"]


# -- the setup check -------------------------------------------------------------------------


def _metadata(*columns: tuple[str, str]) -> dict[EntityType, EntityMeta]:
    attributes = {name: AttributeMeta(logical_name=name, attribute_type=kind) for name, kind in columns}
    return {
        entity: EntityMeta(
            logical_name=entity.value, entity_set=f"{entity.value}s", primary_id="id", attributes=attributes
        )
        for entity in EntityType
    }


DESCRIBED = {
    "syncToMicrosoft": MarketoFieldMeta(name="syncToMicrosoft", data_type="boolean"),
    "leadSource": MarketoFieldMeta(name="leadSource", data_type="string"),
}


@pytest.mark.parametrize(
    ("flt", "columns", "status", "detail"),
    [
        (SyncFilter(), (), "pass", "no filter: every record syncs"),
        (
            SyncFilter.of(dynamics_field="new_synctomkto"),
            (),
            "pass",
            "Dynamics new_synctomkto; new_synctomkto not on lead and contact: every record there syncs "
            "(as the native sync)",
        ),
        (SyncFilter.of(dynamics_field="cr123_sync"), (), "fail", "cr123_sync missing on lead and contact"),
        (
            SyncFilter.of(dynamics_field="new_synctomkto"),
            (("new_synctomkto", "String"),),
            "fail",
            "new_synctomkto on lead is String, expected Boolean (Two Options); new_synctomkto on contact is String, "
            "expected Boolean (Two Options)",
        ),
        (
            SyncFilter.of(dynamics_condition="statecode eq 0", marketo_condition="leadSource ne 'Partner'"),
            (("statecode", "State"),),
            "pass",
            "Dynamics statecode, Marketo leadSource",
        ),
        (
            SyncFilter.of(marketo_field="leadSource", marketo_condition="partnerTier eq 1"),
            (),
            "fail",
            "leadSource is string in Marketo, expected boolean; partnerTier (MARKETO_SYNC_FILTER) missing in Marketo",
        ),
    ],
)
def test_the_setup_check_finds_each_filter_field_where_the_cycle_reads_it(
    flt: SyncFilter, columns: tuple[tuple[str, str], ...], status: str, detail: str
) -> None:
    result = sync_filter_check(flt, DESCRIBED, _metadata(*columns))
    assert (result.status, result.detail) == (status, detail)
    assert (result.hint is not None) is (status == "fail")
