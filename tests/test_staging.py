"""The cycle's stage: latest value per person and field, take-once, pending persons, seen ids."""

from __future__ import annotations

import os

from sync_core.cycle.staging import Stage


def test_the_later_value_of_a_field_wins_and_each_person_is_taken_once() -> None:
    with Stage() as stage:
        stage.add_changes([(1, "title", "a"), (2, "phone", "1"), (1, "title", "b"), (1, "firstName", None)])
        stage.add_changes([(1, "title", "c")])
        assert stage.take([1, 3]) == {1: {"title": "c", "firstName": None}}
        assert stage.take([1]) == {}
        assert stage.pending_count() == 1
        assert list(stage.pending_ids(10)) == [[2]]


def test_a_person_untaken_is_pending_again_with_its_staged_changes() -> None:
    with Stage() as stage:
        stage.add_changes([(1, "title", "a"), (2, "phone", "1")])
        assert stage.take([1, 2]) == {1: {"title": "a"}, 2: {"phone": "1"}}
        stage.untake([2])
        assert list(stage.pending_ids(10)) == [[2]]
        assert stage.take([1, 2]) == {2: {"phone": "1"}}


def test_a_person_changed_after_it_was_taken_waits_until_it_is_pending_again() -> None:
    """The feed names a person again after its changes went early: its new changes are not taken
    (nor carried) until ``repend_again``; then all its latest values are."""
    with Stage() as stage:
        stage.add_changes([(1, "title", "a"), (2, "phone", "1"), (3, "title", "x")])
        assert stage.take([1, 3]) == {1: {"title": "a"}, 3: {"title": "x"}}
        stage.add_changes([(1, "title", "b"), (1, "phone", "2"), (2, "phone", "3")])
        assert stage.take([1]) == {}
        assert list(stage.pending_ids(10)) == [[2]]
        assert stage.repend_again() == 1
        assert stage.repend_again() == 0
        assert list(stage.pending_ids(10)) == [[1, 2]]
        assert stage.take([1]) == {1: {"title": "b", "phone": "2"}}
        stage.untake([1])
        stage.add_changes([(1, "title", "c")])  # pending: no mark, just the later value
        assert stage.repend_again() == 0
        assert stage.take([1]) == {1: {"title": "c", "phone": "2"}}


def test_which_persons_are_deleted_or_changed_a_field_among_these() -> None:
    with Stage() as stage:
        stage.add_changes([(1, "company", "a"), (2, "phone", "1"), (3, "title", "t")])
        stage.add_carried([(4, ["company"])])
        stage.add_deleted([2, 9])
        assert stage.changed_among([1, 2, 3, 4, 5], ["company", "industry"]) == {1, 4}
        assert stage.changed_among([1, 2], []) == set()
        assert stage.deleted_among([1, 2, 3, 9]) == {2, 9}


def test_pending_persons_come_in_chunks_in_id_order() -> None:
    with Stage() as stage:
        stage.add_changes((i, "title", str(i)) for i in range(1200, 0, -1))
        chunks = list(stage.pending_ids(500))
        assert [len(c) for c in chunks] == [500, 500, 200]
        assert chunks[0][0] == 1
        assert chunks[-1][-1] == 1200


def test_unseen_ids_are_those_a_full_read_did_not_return_case_aside() -> None:
    with Stage() as stage:
        stage.add_seen("lead", ["AAA", "bbb"])
        assert stage.unseen("lead", ["aaa", "BBB", "ccc"]) == {"ccc"}
        assert stage.unseen("contact", ["aaa"]) == {"aaa"}


def test_the_stage_file_is_removed_when_the_cycle_ends() -> None:
    with Stage() as stage:
        path = stage.path
        stage.add_deleted([3, 1, 2])
        assert list(stage.deleted_ids(2)) == [[1, 2], [3]]
        assert os.path.exists(path)
    assert not os.path.exists(path)
