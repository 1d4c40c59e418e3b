"""OData literals, identifiers and `$filter` builders: the only way ``sync_core`` puts a value in a query.

Every value that reaches a Dataverse ``$filter`` or a key segment goes through here: strings
become quoted literals with embedded single quotes doubled (so ``x' or 1 eq 1 or 'a`` stays one
string), GUIDs are parsed and written in canonical form, and names (entity sets, columns) must
be plain identifiers. Nothing here does I/O or knows about HTTP; URL encoding is left to httpx.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def quote_literal(value: str) -> str:
    """An OData string literal: wrapped in single quotes, every embedded quote doubled."""
    if not isinstance(value, str):
        raise TypeError(f"an OData string literal needs a str, got {type(value).__name__}")
    return "'" + value.replace("'", "''") + "'"


def guid_literal(value: str) -> str:
    """A GUID as OData writes it (bare, canonical lower-case); anything that is not a GUID is refused."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError as err:
        raise ValueError(f"not a GUID: {value!r:.60}") from err


def identifier(name: str) -> str:
    """A column, table or entity-set name, checked to be a plain identifier (no spaces, quotes, slashes)."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"not a valid OData identifier: {name!r:.60}")
    return name


def select_clause(columns: Iterable[str]) -> str:
    """A ``$select`` value: identifiers, de-duplicated, in the order given."""
    seen: dict[str, None] = {}
    for column in columns:
        seen[identifier(column)] = None
    if not seen:
        raise ValueError("$select needs at least one column")
    return ",".join(seen)


def eq(column: str, literal: str) -> str:
    """``column eq <literal>``; ``literal`` must already be a literal from this module."""
    return f"{identifier(column)} eq {literal}"


def any_of(column: str, literals: Sequence[str]) -> str:
    """``(column eq a or column eq b …)``; literals must come from ``quote_literal``/``guid_literal``."""
    if not literals:
        raise ValueError("any_of needs at least one value")
    return "(" + " or ".join(eq(column, literal) for literal in literals) + ")"


def chunked_any_of(column: str, literals: Sequence[str], *, max_values: int, max_chars: int) -> Iterator[str]:
    """``any_of`` filters over ``literals``, each with at most ``max_values`` values and ``max_chars`` characters.

    URLs have a length limit; a single literal longer than ``max_chars`` still gets its own filter
    rather than being dropped (the service then answers for it, so nothing is silently lost).
    """
    chunk: list[str] = []
    length = 2
    for literal in literals:
        term = len(column) + 4 + len(literal) + 4  # "col eq lit or "
        if chunk and (len(chunk) >= max_values or length + term > max_chars):
            yield any_of(column, chunk)
            chunk, length = [], 2
        chunk.append(literal)
        length += term
    if chunk:
        yield any_of(column, chunk)


def key_segment(entity_set: str, key: Mapping[str, object]) -> str:
    """``leads(<guid>)`` for a primary key, ``leads(emailaddress1='a@b.c')`` for an alternate key.

    A single key column whose value is a GUID string is written bare only when the caller passes
    it under the empty name ``""`` (the primary key); named parts are always typed literals.
    """
    if not key:
        raise ValueError("a key needs at least one part")
    if set(key) == {""}:
        return f"{identifier(entity_set)}({guid_literal(str(key['']))})"
    parts = [f"{identifier(column)}={_typed_literal(value)}" for column, value in key.items()]
    return f"{identifier(entity_set)}({','.join(parts)})"


def _typed_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        return quote_literal(value)
    raise TypeError(f"cannot write a {type(value).__name__} as an OData key value")
