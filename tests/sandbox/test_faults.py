"""The shared fault rules of both simulators (``sandbox._faults``): parsing and its refusals,
the command-line short form and the rule book. How each app answers an action is tested with
that app (``test_marketo_admin``, ``test_dataverse_protection``)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from sandbox._faults import FaultBook, FaultRule, add_fault_argument, parse_rule, parse_spec

EXTRA = {"service_error"}  # a made-up service-specific kind: the module must not know a real one


@pytest.mark.parametrize(
    ("rule", "complaint"),
    [
        ("not an object", "must be a JSON object"),
        ({"path": "x", "colour": "red", "action": {"drop": True}}, "unknown fault rule keys"),
        ({"method": 1, "action": {"drop": True}}, "'method' must be a string"),
        ({"path": 3, "action": {"drop": True}}, "'path' must be a regular expression"),
        ({"path": "(", "action": {"drop": True}}, "not a valid regular expression"),
        ({"times": 0, "action": {"drop": True}}, "'times' must be a positive integer or -1"),
        ({"times": -2, "action": {"drop": True}}, "'times' must be a positive integer or -1"),
        ({"times": True, "action": {"drop": True}}, "'times' must be a positive integer or -1"),
        ({"times": "2", "action": {"drop": True}}, "'times' must be a positive integer or -1"),
        ({"path": "x"}, "'action' must be an object"),
        ({"action": {}}, "needs one answer"),
        ({"action": {"drop": True, "status": 500}}, "needs one answer"),
        ({"action": {"status": 500, "service_error": "1"}}, "needs one answer"),
        ({"action": {"drop": False}}, "'drop' must be true"),
        ({"action": {"status": 42}}, "HTTP status code"),
        ({"action": {"status": "502"}}, "HTTP status code"),
        ({"action": {"status": True}}, "HTTP status code"),
        ({"action": {"delay": -1}}, "'delay' must be a non-negative number"),
        ({"action": {"delay": "soon"}}, "'delay' must be a non-negative number"),
        ({"action": {"status": 429, "retry_after": -5}}, "'retry_after' must be a non-negative number"),
        ({"action": {"status": 500, "body": 7}}, "'body' must be a string or a JSON object"),
        ({"action": {"drop": True, "retry_after": 5}}, "go only with 'status'"),
        ({"action": {"delay": 1, "body": "x"}}, "go only with 'status'"),
        ({"action": {"status": 500, "message": "x"}}, "'message' goes only with"),
        ({"action": {"service_error": ""}}, "must be a non-empty string"),
        ({"action": {"service_error": "1", "message": 2}}, "'message' must be a string"),
        ({"action": {"marketo_error": "606"}}, "unknown fault action keys"),  # a kind this caller did not add
    ],
)
def test_a_bad_rule_is_refused_with_a_reason(rule: Any, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_rule(rule, extra_actions=EXTRA)


def test_message_is_unknown_where_the_caller_adds_no_kind() -> None:
    with pytest.raises(ValueError, match="unknown fault action keys"):
        parse_rule({"action": {"status": 500, "message": "x"}})


@pytest.mark.parametrize(
    ("rule", "listed"),
    [
        (
            {"method": "get", "path": "/leads$", "times": -1, "action": {"status": 429, "retry_after": 2}},
            {"method": "GET", "path": "/leads$", "times": -1, "action": {"status": 429, "retry_after": 2}},
        ),
        (
            {"action": {"delay": 0.5, "status": 500, "body": {"error": "boom"}}},
            {
                "method": None,
                "path": "",
                "times": 1,
                "action": {"status": 500, "body": {"error": "boom"}, "delay": 0.5},
            },
        ),
        (
            {"path": "x", "action": {"service_error": 606, "message": "busy"}},
            {"method": None, "path": "x", "times": 1, "action": {"service_error": "606", "message": "busy"}},
        ),
        (
            {"action": {"delay": 1, "drop": True}},
            {"method": None, "path": "", "times": 1, "action": {"delay": 1, "drop": True}},
        ),
    ],
    ids=["status-forever", "delay-then-status-with-json-body", "extra-kind", "delay-then-drop"],
)
def test_a_rule_lists_as_the_json_it_was_given(rule: dict[str, Any], listed: dict[str, Any]) -> None:
    assert parse_rule(rule, extra_actions=EXTRA).as_json() == listed


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "path=leadchanges;err=606;times=2",
            {"method": None, "path": "leadchanges", "times": 2, "action": {"service_error": "606"}},
        ),
        (
            "path=x;service_error=601;message=Access token invalid",
            {
                "method": None,
                "path": "x",
                "times": 1,
                "action": {"service_error": "601", "message": "Access token invalid"},
            },
        ),
        (
            "method=post;path=leads;status=502;retry_after=5",
            {"method": "POST", "path": "leads", "times": 1, "action": {"status": 502, "retry_after": 5.0}},
        ),
        ("delay=0.5;times=-1", {"method": None, "path": "", "times": -1, "action": {"delay": 0.5}}),
        ("drop", {"method": None, "path": "", "times": 1, "action": {"drop": True}}),
        ("drop=yes;delay=2", {"method": None, "path": "", "times": 1, "action": {"delay": 2.0, "drop": True}}),
        (
            '{"path": "lead/", "action": {"service_error": "601"}}',
            {"method": None, "path": "lead/", "times": 1, "action": {"service_error": "601"}},
        ),
    ],
)
def test_fault_spec_short_form_and_json(spec: str, expected: dict[str, Any]) -> None:
    assert parse_spec(spec, extra_actions=EXTRA, short_names={"err": "service_error"}).as_json() == expected


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("err=606;colour=red", "unknown fault spec item 'colour=red'"),
        ("times=x;drop", "'times' must be a number"),
        ("status=abc", "'status' must be a number"),
        ("delay=later", "'delay' must be a number"),
        ("drop=no", "unknown fault spec item 'drop=no'"),
        ("{not json", "not valid JSON"),
        ("path=(;drop", "not a valid regular expression"),
    ],
)
def test_a_bad_fault_spec_is_a_clear_error(spec: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_spec(spec, extra_actions=EXTRA, short_names={"err": "service_error"})


def test_the_fault_flag_collects_rules_and_refuses_a_bad_spec(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_fault_argument(parser.add_argument_group("svc"), "--svc-fault", parse=parse_spec, example="drop")

    args = parser.parse_args(["--svc-fault", "path=a;drop", "--svc-fault", '{"path": "b", "action": {"delay": 1}}'])

    assert [rule.as_json()["path"] for rule in args.svc_fault] == ["a", "b"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--svc-fault", "status=abc"])
    assert "'status' must be a number" in capsys.readouterr().err


# ---- the rule book --------------------------------------------------------------------------


def _outcomes(book: FaultBook, calls: list[tuple[str, str]]) -> list[dict[str, Any] | None]:
    taken = [book.take(method, path) for method, path in calls]
    return [None if action is None else action.as_json() for action in taken]


def test_rules_fire_in_order_each_for_its_times_and_forever_rules_stay() -> None:
    book = FaultBook(
        [
            {"path": "lead", "times": 2, "action": {"status": 500}},
            {"path": "lead", "times": 1, "action": {"status": 502}},
            {"method": "POST", "path": "leads", "times": -1, "action": {"drop": True}},
        ]
    )

    gets = _outcomes(book, [("GET", "/lead/1")] * 4)
    posts = _outcomes(book, [("POST", "/leads")] * 3)

    assert gets == [{"status": 500}, {"status": 500}, {"status": 502}, None]
    assert posts == [{"drop": True}] * 3
    assert book.as_json() == [{"method": "POST", "path": "leads", "times": -1, "action": {"drop": True}}]


def test_add_appends_set_replaces_and_clear_empties() -> None:
    book = FaultBook([{"path": "a", "action": {"drop": True}}])

    book.add([{"path": "b", "action": {"drop": True}}])
    appended = [r["path"] for r in book.as_json()]
    book.set([{"path": "c", "action": {"drop": True}}])
    replaced = [r["path"] for r in book.as_json()]
    book.clear()

    assert (appended, replaced, book.as_json()) == (["a", "b"], ["c"], [])


@pytest.mark.parametrize("verb", ["add", "set"])
def test_one_bad_rule_in_a_batch_arms_none_of_it(verb: str) -> None:
    book = FaultBook([{"path": "keep", "action": {"drop": True}}])

    with pytest.raises(ValueError, match="'times'"):
        getattr(book, verb)([{"path": "new", "action": {"drop": True}}, {"times": 0, "action": {"drop": True}}])

    assert [r["path"] for r in book.as_json()] == ["keep"]


def test_a_rule_object_is_copied_so_using_it_up_leaves_the_original_armed() -> None:
    rule = parse_spec("path=x;drop;times=1")
    first, second = FaultBook([rule]), FaultBook([rule])

    assert first.take("GET", "/x") is not None
    assert first.take("GET", "/x") is None
    assert second.take("GET", "/x") is not None
    assert rule.times == 1


def test_a_rule_object_with_a_kind_this_book_does_not_know_is_refused() -> None:
    rule: FaultRule = parse_rule({"action": {"service_error": "1"}}, extra_actions=EXTRA)

    assert FaultBook([rule], extra_actions=EXTRA).as_json()[0]["action"] == {"service_error": "1"}
    with pytest.raises(ValueError, match="'service_error' is not known"):
        FaultBook([rule])
