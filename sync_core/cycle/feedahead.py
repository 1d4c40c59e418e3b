"""Pages of a paged read fetched ahead on a thread of their own.

Each page of Marketo's change feed needs the paging token the page before returned, so the feed is
a chain of requests, and whatever the reader does between two pages (staging, the persons step's
writes started while the feed is read) would lengthen it. ``PagesAhead`` keeps the chain going
while the reader works: a thread asks for each next page as soon as the last arrives, up to
``depth`` pages ahead of the reader. Closing it (the reader stopped early: the time budget, a
failure) stops the thread after the page it is reading; the pages read ahead and not taken are
dropped (the reader's position is the last page it took, so nothing is lost, at the cost of at
most ``depth`` + 1 calls).
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

_T = TypeVar("_T")
_POLL = 0.1  # seconds between the thread's checks for a close while the reader is behind


class PagesAhead(Generic[_T]):
    """Iterate ``pages`` with up to ``depth`` of them read ahead; a context manager that closes."""

    def __init__(self, pages: Iterator[_T], *, depth: int) -> None:
        self._pages = pages
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,), name="feed-ahead", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[_T]:
        while True:
            kind, value = self._queue.get()
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # room, so a thread waiting to put a page sees the stop
                self._queue.get(timeout=_POLL)
        self._thread.join()

    def __enter__(self) -> PagesAhead[_T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            for page in self._pages:
                if not self._put("page", page):
                    return
            self._put("end", None)
        except BaseException as err:  # handed to the reader, which raises it
            self._put("error", err)
        finally:
            close = getattr(self._pages, "close", None)
            if close is not None:
                close()

    def _put(self, kind: str, value: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put((kind, value), timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False
