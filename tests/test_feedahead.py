"""Change-feed pages read ahead on a thread (``cycle.feedahead``): the same pages in the same order,
the reader's work between pages overlapping the next requests, a read's error raised to the reader,
and a reader that stops early costing at most ``depth`` + 1 pages more."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from sync_core.cycle.feedahead import PagesAhead


def counted(n: int, asked: list[int], *, delay: float = 0.0, fail_at: int | None = None) -> Iterator[int]:
    for page in range(n):
        asked.append(page)
        if delay:
            time.sleep(delay)
        if page == fail_at:
            raise RuntimeError("page refused")
        yield page


def test_every_page_comes_in_order() -> None:
    asked: list[int] = []
    with PagesAhead(counted(50, asked), depth=3) as pages:
        assert list(pages) == list(range(50))
    assert asked == list(range(50))


def test_the_next_pages_are_asked_for_while_the_reader_works() -> None:
    """Each page takes 50 ms to read and the reader works 50 ms on each: read ahead, ten pages take
    about 0.55 s rather than 1 s."""
    asked: list[int] = []
    began = time.monotonic()
    with PagesAhead(counted(10, asked, delay=0.05), depth=2) as pages:
        for _ in pages:
            time.sleep(0.05)
    assert time.monotonic() - began < 0.9
    assert asked == list(range(10))


def test_a_page_that_fails_raises_in_the_reader_after_the_pages_before() -> None:
    asked: list[int] = []
    got: list[int] = []
    with pytest.raises(RuntimeError, match="page refused"), PagesAhead(counted(10, asked, fail_at=4), depth=2) as pages:
        got.extend(pages)
    assert got == [0, 1, 2, 3]


def test_a_reader_that_stops_early_stops_the_thread_within_depth_pages() -> None:
    asked: list[int] = []
    with PagesAhead(counted(1000, asked, delay=0.005), depth=3) as pages:
        for page in pages:
            if page == 5:
                break
    settled = len(asked)
    time.sleep(0.05)
    assert len(asked) == settled  # the thread has ended
    assert 6 <= settled <= 6 + 3 + 1
    assert not [t for t in threading.enumerate() if t.name == "feed-ahead"]
