"""The one ``nextPageToken`` paging loop of the Marketo client, with its loop safety.

Get Lead Changes, Get Deleted Leads, Get Leads by Filter Type and the custom activity types
all page alike: send the previous answer's ``nextPageToken`` until ``moreResult`` is false.
``pages`` owns that loop for all of them: it de-duplicates items across pages by a key, raises
when ``moreResult`` comes without a token, and raises when a token comes back on a page that
brought no new item (a pagination loop would otherwise call forever and spend the quota). It
sends nothing itself (``fetch`` does) and does not parse items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sync_core.core.errors import ApiError
from sync_core.marketo._envelope import Envelope

SERVICE = "marketo"


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]  # this page's items not seen on an earlier page
    watermark: str  # nextPageToken, or the token this page was read with when none came back
    more_result: bool


def pages(
    fetch: Callable[[str | None], Envelope],
    *,
    operation: str,
    key: Callable[[Mapping[str, Any]], str | None],
    token: str | None = None,
) -> Iterator[Page]:
    """Every page from ``token`` (or the first page) on; ``fetch(token)`` reads one page.

    An item whose ``key`` is ``None`` is passed on but does not count as progress.
    """
    seen_tokens = {token} if token else set()
    seen_items: set[str] = set()
    current = token
    while True:
        envelope = fetch(current)
        fresh: list[dict[str, Any]] = []
        progressed = False
        for item in envelope.result:
            item_key = key(item)
            if item_key is not None:
                if item_key in seen_items:
                    continue
                seen_items.add(item_key)
                progressed = True
            fresh.append(item)
        next_token = envelope.next_page_token
        if envelope.more_result:
            if next_token is None:
                raise ApiError(
                    f"marketo {operation}: moreResult without nextPageToken",
                    service=SERVICE,
                    request_id=envelope.request_id,
                )
            if next_token in seen_tokens and not progressed:
                raise ApiError(
                    f"marketo {operation}: nextPageToken repeated with nothing new (pagination loop)",
                    service=SERVICE,
                    code="loop",
                    request_id=envelope.request_id,
                )
            seen_tokens.add(next_token)
        yield Page(fresh, next_token or current or "", envelope.more_result)
        if not envelope.more_result:
            return
        current = next_token
