"""Which records sync (issue 19): one filter per side, as a pure rule over a record's values.

Each side has up to two parts, and a record syncs only when every part admits it:

- a **boolean field** (Dynamics: ``DATAVERSE_SYNC_FILTER_FIELD``, default ``new_synctomkto``, the
  native sync's Two Options column; Marketo: ``MARKETO_SYNC_FILTER_FIELD``). As in the native sync,
  only an explicit No excludes: a missing or empty value, or Yes, syncs;
- a **condition** (``DATAVERSE_SYNC_FILTER`` / ``MARKETO_SYNC_FILTER``) in a small subset of OData
  ``$filter``, evaluated here rather than sent to the service: Dataverse's change-tracking reads
  refuse ``$filter``, and Marketo has no query language for its change feed. The grammar::

      expr    := term ('or' term)*          term := factor ('and' factor)*
      factor  := 'not' factor | '(' expr ')' | name op literal
               | ('contains' | 'startswith' | 'endswith') '(' name ',' 'text' ')'
      op      := eq | ne | gt | ge | lt | le
      literal := 'text' ('' is a quote) | number | true | false | null

  Text compares ignoring case (as Dataverse does); ``null`` is a missing or empty value; a
  comparison with a value of another type is false (``ne``: true); ``gt``/``ge``/``lt``/``le`` and
  the functions are false on null.

The names a filter reads are ``SideFilter.fields``: the cycle reads them with each record even
when the field map does not map them. Parsing errors are ``FilterSyntaxError`` (a ``ValueError``)
naming the position; ``settings`` turns them into a configuration error at start-up. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

DEFAULT_DATAVERSE_FIELD = "new_synctomkto"  # the native sync's filter column (Two Options)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
_TOKEN = re.compile(
    r"\s*(?:(?P<text>'(?:[^']|'')*')|(?P<number>-?\d+(?:\.\d+)?)(?![A-Za-z_])|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<punct>[(),]))"
)
_COMPARISONS = ("eq", "ne", "gt", "ge", "lt", "le")
_FUNCTIONS = ("contains", "startswith", "endswith")
_KEYWORDS = {"and", "or", "not", "true", "false", "null", *_COMPARISONS, *_FUNCTIONS}
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


class Side(StrEnum):
    """The system whose filter excluded a record."""

    DYNAMICS = "dynamics"
    MARKETO = "marketo"


class FilterSyntaxError(ValueError):
    """A condition that does not parse; the message says where and what was expected."""


# -- the condition ------------------------------------------------------------------------------

Values = Mapping[str, Any]


@dataclass(frozen=True)
class Condition:
    """A parsed condition: its text, the names it reads, and its test."""

    text: str
    fields: tuple[str, ...]
    test: Callable[[Values], bool]

    def __call__(self, values: Values) -> bool:
        return self.test(values)


def parse_condition(text: str) -> Condition:
    """``text`` parsed (see the module docstring); ``FilterSyntaxError`` when it does not parse."""
    parser = _Parser(text)
    test = parser.expression()
    parser.end()
    return Condition(text=text.strip(), fields=tuple(dict.fromkeys(parser.names)), test=test)


@dataclass(frozen=True)
class _Token:
    kind: str  # text, number, name, punct, end
    value: str
    at: int


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while True:
        position += len(text[position:]) - len(text[position:].lstrip())
        if position >= len(text):
            break
        match = _TOKEN.match(text, position)
        if match is None:
            raise FilterSyntaxError(f"unexpected character at position {position + 1}: {text[position]!r}")
        kind = match.lastgroup or "punct"
        tokens.append(_Token(kind, match.group(kind), match.start(kind) + 1))
        position = match.end()
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        if not text.strip():
            raise FilterSyntaxError("empty condition")
        self.tokens = _tokens(text)
        self.i = 0
        self.names: list[str] = []

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token.kind == "name" and token.value.lower() == word:
            self.i += 1
            return True
        return False

    def expect(self, value: str, what: str) -> None:
        token = self.take()
        if token.value != value:
            raise FilterSyntaxError(f"expected {what} at position {token.at}, found {_shown(token)}")

    def end(self) -> None:
        token = self.peek()
        if token.kind != "end":
            raise FilterSyntaxError(f"expected 'and', 'or' or the end at position {token.at}, found {_shown(token)}")

    def expression(self) -> Callable[[Values], bool]:
        parts = [self.term()]
        while self.keyword("or"):
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else (lambda values: any(part(values) for part in parts))

    def term(self) -> Callable[[Values], bool]:
        parts = [self.factor()]
        while self.keyword("and"):
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else (lambda values: all(part(values) for part in parts))

    def factor(self) -> Callable[[Values], bool]:
        if self.keyword("not"):
            inner = self.factor()
            return lambda values: not inner(values)
        token = self.peek()
        if token.value == "(":
            self.take()
            inner = self.expression()
            self.expect(")", "')'")
            return inner
        if token.kind == "name" and token.value.lower() in _FUNCTIONS:
            return self.function(self.take().value.lower())
        name = self.name()
        op = self.take()
        if op.kind != "name" or op.value.lower() not in _COMPARISONS:
            raise FilterSyntaxError(
                f"expected a comparison (eq, ne, gt, ge, lt, le) at position {op.at}, found {_shown(op)}"
            )
        literal = self.literal()
        compare = _COMPARE[op.value.lower()]
        return lambda values: compare(values.get(name), literal)

    def function(self, function: str) -> Callable[[Values], bool]:
        self.expect("(", f"'(' after {function}")
        name = self.name()
        self.expect(",", "','")
        token = self.take()
        if token.kind != "text":
            raise FilterSyntaxError(f"{function} needs a 'text' literal at position {token.at}, found {_shown(token)}")
        needle = _unquote(token.value).casefold()
        self.expect(")", "')'")
        test = {"contains": str.__contains__, "startswith": str.startswith, "endswith": str.endswith}[function]

        def check(values: Values) -> bool:
            value = _present(values.get(name))
            return isinstance(value, str) and test(value.casefold(), needle)

        return check

    def name(self) -> str:
        token = self.take()
        if token.kind != "name" or token.value.lower() in _KEYWORDS:
            raise FilterSyntaxError(f"expected a field name at position {token.at}, found {_shown(token)}")
        self.names.append(token.value)
        return token.value

    def literal(self) -> Any:
        token = self.take()
        if token.kind == "text":
            return _unquote(token.value)
        if token.kind == "number":
            return float(token.value) if "." in token.value else int(token.value)
        if token.kind == "name" and token.value.lower() in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[token.value.lower()]
        raise FilterSyntaxError(
            f"expected a value ('text', a number, true, false or null) at position {token.at}, found {_shown(token)}"
        )


def _shown(token: _Token) -> str:
    return "the end" if token.kind == "end" else repr(token.value)


def _unquote(text: str) -> str:
    return text[1:-1].replace("''", "'")


def _present(value: Any) -> Any:
    """None for a missing or empty value (Marketo and Dataverse both send "" or null for empty)."""
    return None if value is None or (isinstance(value, str) and value.strip() == "") else value


def as_bool(value: Any) -> bool | None:
    """A boolean from either side's wire form (true/false, 1/0, "true"/"false"/"yes"/"no"); else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _same_type(value: Any, literal: Any) -> tuple[Any, Any] | None:
    """``value`` and ``literal`` in one comparable form, or None when they cannot compare."""
    if isinstance(literal, bool):
        found = as_bool(value)
        return None if found is None else (found, literal)
    if isinstance(literal, int | float):
        number = _as_number(value)
        return None if number is None else (number, float(literal))
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value).casefold(), str(literal).casefold()
    return None


def _equal(value: Any, literal: Any) -> bool:
    value = _present(value)
    if literal is None or value is None:
        return value is None and literal is None
    pair = _same_type(value, literal)
    return pair is not None and pair[0] == pair[1]


def _ordered(check: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(value: Any, literal: Any) -> bool:
        value = _present(value)
        if value is None or literal is None or isinstance(literal, bool):
            return False
        pair = _same_type(value, literal)
        return pair is not None and check(pair[0], pair[1])

    return compare


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": _equal,
    "ne": lambda value, literal: not _equal(value, literal),
    "gt": _ordered(lambda a, b: a > b),
    "ge": _ordered(lambda a, b: a >= b),
    "lt": _ordered(lambda a, b: a < b),
    "le": _ordered(lambda a, b: a <= b),
}


# -- a side's filter, and both ------------------------------------------------------------------


def explicit_no(value: Any) -> bool:
    """The native rule for the filter field: only an explicit No (false) excludes a record."""
    return as_bool(_present(value)) is False


def check_field_name(name: str) -> str:
    """A filter field's name, checked: a plain field name (letters, digits, underscore)."""
    if not _NAME.fullmatch(name):
        raise FilterSyntaxError("must be a plain field name (letters, digits, underscore)")
    return name


@dataclass(frozen=True)
class SideFilter:
    """One side's filter: the boolean field and the condition, either or both absent."""

    field: str | None = None
    condition: Condition | None = None

    @property
    def active(self) -> bool:
        return self.field is not None or self.condition is not None

    @property
    def fields(self) -> tuple[str, ...]:
        """Every name the filter reads."""
        names = [self.field] if self.field else []
        names += list(self.condition.fields) if self.condition else []
        return tuple(dict.fromkeys(names))

    def admits(self, values: Values) -> bool:
        """Whether a record with ``values`` (a missing name reads as null) syncs."""
        if self.field is not None and explicit_no(values.get(self.field)):
            return False
        return self.condition is None or self.condition(values)


@dataclass(frozen=True)
class SyncFilter:
    """Both sides' filters (from the settings)."""

    dynamics: SideFilter = SideFilter()
    marketo: SideFilter = SideFilter()

    @classmethod
    def of(
        cls,
        *,
        dynamics_field: str | None = None,
        dynamics_condition: str | None = None,
        marketo_field: str | None = None,
        marketo_condition: str | None = None,
    ) -> SyncFilter:
        """Parsed and checked; ``FilterSyntaxError`` names what is wrong."""
        return cls(
            dynamics=SideFilter(
                check_field_name(dynamics_field) if dynamics_field else None,
                parse_condition(dynamics_condition) if dynamics_condition else None,
            ),
            marketo=SideFilter(
                check_field_name(marketo_field) if marketo_field else None,
                parse_condition(marketo_condition) if marketo_condition else None,
            ),
        )

    def side(self, side: Side) -> SideFilter:
        return self.dynamics if side is Side.DYNAMICS else self.marketo

    @property
    def active(self) -> bool:
        return self.dynamics.active or self.marketo.active

    @property
    def key(self) -> str | None:
        """A short fingerprint of both sides' filters (None when neither has one). A link stores the
        key its verdicts were decided under; after a change to the filters they are decided again."""
        if not self.active:
            return None
        parts = [
            (flt.field or "", flt.condition.text if flt.condition else "") for flt in (self.dynamics, self.marketo)
        ]
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


NO_FILTER = SyncFilter()
