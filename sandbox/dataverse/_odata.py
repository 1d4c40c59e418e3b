"""OData query text: a real tokenizer and parser for ``$filter``, ``$select``, ``$orderby``, key
segments and the ``Prefer`` header, and an evaluator for parsed filters.

String literals are read by the tokenizer (``'`` opens, ``''`` is an escaped quote, the next
lone ``'`` closes), so a value can never change the shape of the expression it sits in: a
literal such as ``'x'' or 1 eq 1 or ''a'`` is one string, compared as one string. Property
names are checked by a resolver the caller passes (the table's columns or a metadata type), so
this module knows nothing of leads, contacts or the store. Comparisons follow Dataverse: text
compares case-insensitively, ``null`` only equals ``null``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sandbox.dataverse import _errors as err

Resolver = Callable[[str], str]  # property path -> Edm type name; raises DataverseError if unknown
Getter = Callable[[str], Any]  # property path -> value of the row being tested

_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_GUID_RE = re.compile(_GUID + r"(?![\w-])")
GUID_RE = re.compile(_GUID)  # a whole GUID, for callers that check one value
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?(?![\w:.-])")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[lLmMdDfF]?(?![\w.])")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:[./][A-Za-z_][A-Za-z0-9_]*)*")
_SYMBOLS = {"(": "lparen", ")": "rparen", ",": "comma", "=": "equals"}
_COMPARISONS = {
    "eq": "Equal",
    "ne": "NotEqual",
    "gt": "GreaterThan",
    "ge": "GreaterThanOrEqual",
    "lt": "LessThan",
    "le": "LessThanOrEqual",
}
_FUNCTIONS = ("contains", "startswith", "endswith")
_NUMERIC = {"Edm.Int32", "Edm.Int64", "Edm.Decimal", "Edm.Double"}


@dataclass(frozen=True)
class Token:
    kind: str  # string, enum, guid, date, number, ident, lparen, rparen, comma, equals, end
    text: str
    pos: int
    value: Any = None


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch in _SYMBOLS:
            tokens.append(Token(_SYMBOLS[ch], ch, i))
            i += 1
            continue
        if ch == "'":
            value, end = _read_string(text, i)
            tokens.append(Token("string", text[i:end], i, value))
            i = end
            continue
        match = _GUID_RE.match(text, i)
        if match:
            tokens.append(Token("guid", match.group(), i, match.group().lower()))
            i = match.end()
            continue
        match = _DATE_RE.match(text, i)
        if match:
            tokens.append(Token("date", match.group(), i, _parse_date(match.group(), text, i)))
            i = match.end()
            continue
        match = _NUMBER_RE.match(text, i)
        if match:
            raw = match.group().rstrip("lLmMdDfF")
            number: int | float = float(raw) if any(c in raw for c in ".eE") else int(raw)
            tokens.append(Token("number", match.group(), i, number))
            i = match.end()
            continue
        match = _IDENT_RE.match(text, i)
        if match:
            end = match.end()
            if end < n and text[end] == "'":  # Namespace.EnumType'Member'
                value, end = _read_string(text, end)
                tokens.append(Token("enum", text[i:end], i, value))
            else:
                tokens.append(Token("ident", match.group(), i))
            i = end
            continue
        raise err.bad_query(f"Syntax error: character '{ch}' is not valid at position {i} in '{text}'.")
    tokens.append(Token("end", "", n))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    """Read a quoted literal from ``start`` (an opening quote); return its value and end index."""
    out: list[str] = []
    i = start + 1
    while i < len(text):
        if text[i] == "'":
            if i + 1 < len(text) and text[i + 1] == "'":
                out.append("'")
                i += 2
                continue
            return "".join(out), i + 1
        out.append(text[i])
        i += 1
    raise err.bad_query(f"There is an unterminated string literal at position {start} in '{text}'.")


def _parse_date(raw: str, text: str, pos: int) -> datetime:
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise err.bad_query(f"Unrecognized 'Edm.DateTimeOffset' literal '{raw}' at '{pos}' in '{text}'.") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ----------------------------------------------------------------------------- filter AST


@dataclass(frozen=True)
class Prop:
    path: str
    edm: str


@dataclass(frozen=True)
class Lit:
    value: Any
    edm: str  # Edm type of the literal, or "null"


Operand = Prop | Lit


@dataclass(frozen=True)
class Compare:
    op: str
    left: Operand
    right: Operand


@dataclass(frozen=True)
class Func:
    name: str
    prop: Prop
    arg: str


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    operand: Node


Node = Compare | Func | BoolOp | Not


class _Parser:
    def __init__(self, text: str, resolve: Resolver, type_name: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.resolve = resolve
        self.type_name = type_name

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, token: Token) -> err.DataverseError:
        if token.kind == "end":
            return err.bad_query(f"Expression expected at position {token.pos} in '{self.text}'.")
        return err.bad_query(f"Syntax error at position {token.pos + len(token.text)} in '{self.text}'.")

    def expect(self, kind: str) -> Token:
        token = self.take()
        if token.kind != kind:
            raise self.fail(token)
        return token

    def parse(self) -> Node:
        node = self.or_expr()
        if self.peek().kind != "end":
            raise self.fail(self.peek())
        return node

    def or_expr(self) -> Node:
        node = self.and_expr()
        while self.peek().kind == "ident" and self.peek().text == "or":
            self.take()
            node = BoolOp("or", node, self.and_expr())
        return node

    def and_expr(self) -> Node:
        node = self.unary()
        while self.peek().kind == "ident" and self.peek().text == "and":
            self.take()
            node = BoolOp("and", node, self.unary())
        return node

    def unary(self) -> Node:
        token = self.peek()
        if token.kind == "ident" and token.text == "not":
            self.take()
            return Not(self.unary())
        if token.kind == "lparen":
            self.take()
            node = self.or_expr()
            self.expect("rparen")
            return node
        if token.kind == "ident" and token.text in _FUNCTIONS and self.tokens[self.i + 1].kind == "lparen":
            return self.function()
        return self.comparison()

    def function(self) -> Node:
        name = self.take().text
        self.expect("lparen")
        prop = self.operand()
        self.expect("comma")
        arg = self.operand()
        self.expect("rparen")
        if (
            not isinstance(prop, Prop)
            or not isinstance(arg, Lit)
            or arg.edm != "Edm.String"
            or prop.edm != "Edm.String"
        ):
            raise err.bad_query(f"The function '{name}' needs a text property and a text literal in '{self.text}'.")
        return Func(name, prop, str(arg.value))

    def comparison(self) -> Node:
        left = self.operand()
        token = self.take()
        if token.kind != "ident" or token.text not in _COMPARISONS:
            raise self.fail(token)
        right = self.operand()
        kind = _COMPARISONS[token.text]
        if isinstance(left, Lit) and isinstance(right, Lit):
            raise err.bad_query(
                f"The comparison at position {token.pos} in '{self.text}' must name a property of "
                f"type '{self.type_name}'."
            )
        if not _compatible(left.edm, right.edm):
            raise err.bad_query(
                "A binary operator with incompatible types was detected. Found operand types "
                f"'{left.edm}' and '{right.edm}' for operator kind '{kind}'."
            )
        return Compare(token.text, left, right)

    def operand(self) -> Operand:
        token = self.take()
        if token.kind == "string":
            return Lit(token.value, "Edm.String")
        if token.kind == "enum":
            return Lit(token.value, "Edm.Enum")
        if token.kind == "guid":
            return Lit(token.value, "Edm.Guid")
        if token.kind == "date":
            return Lit(token.value, "Edm.DateTimeOffset")
        if token.kind == "number":
            return Lit(token.value, "Edm.Double" if isinstance(token.value, float) else "Edm.Int32")
        if token.kind == "ident":
            if token.text == "null":
                return Lit(None, "null")
            if token.text in ("true", "false"):
                return Lit(token.text == "true", "Edm.Boolean")
            if token.text in _COMPARISONS or token.text in ("and", "or", "not"):
                raise self.fail(token)
            if self.peek().kind == "lparen":
                raise err.bad_query(
                    f"An unknown function with name '{token.text}' was found. This may also be a function import "
                    "or a key lookup on a navigation property, which is not allowed."
                )
            return Prop(token.text, self.resolve(token.text))
        raise self.fail(token)


def _compatible(a: str, b: str) -> bool:
    if "null" in (a, b) or a == b:
        return True
    if a in _NUMERIC and b in _NUMERIC:
        return True
    return {a, b} <= {"Edm.String", "Edm.Enum"}


def parse_filter(text: str, resolve: Resolver, type_name: str) -> Node:
    return _Parser(text, resolve, type_name).parse()


def evaluate(node: Node, get: Getter) -> bool:
    if isinstance(node, BoolOp):
        if node.op == "and":
            return evaluate(node.left, get) and evaluate(node.right, get)
        return evaluate(node.left, get) or evaluate(node.right, get)
    if isinstance(node, Not):
        return not evaluate(node.operand, get)
    if isinstance(node, Func):
        value = get(node.prop.path)
        if value is None:
            return False
        hay, needle = str(value).casefold(), node.arg.casefold()
        if node.name == "contains":
            return needle in hay
        if node.name == "startswith":
            return hay.startswith(needle)
        return hay.endswith(needle)
    left = _value(node.left, get)
    right = _value(node.right, get)
    if node.op == "eq":
        return left == right
    if node.op == "ne":
        return left != right
    if left is None or right is None:
        return False
    if node.op == "gt":
        return bool(left > right)
    if node.op == "ge":
        return bool(left >= right)
    if node.op == "lt":
        return bool(left < right)
    return bool(left <= right)


def key_values(node: Node, prop: str) -> frozenset[str] | None:
    """The ``prop`` GUIDs a filter can only match rows among (``prop eq <guid>`` joined by ``or``, or
    one side of an ``and``), so a query by primary key reads those rows, as the real service reads its
    index, instead of every row; None when the filter does not bound them."""
    if isinstance(node, BoolOp):
        left, right = key_values(node.left, prop), key_values(node.right, prop)
        if node.op == "or":
            return None if left is None or right is None else left | right
        if left is None or right is None:
            return left if right is None else right
        return left & right
    if isinstance(node, Compare) and node.op == "eq":
        for side, other in ((node.left, node.right), (node.right, node.left)):
            if isinstance(side, Prop) and side.path == prop and isinstance(other, Lit) and other.edm == "Edm.Guid":
                return frozenset((str(other.value),))
    return None


def _value(operand: Operand, get: Getter) -> Any:
    value = operand.value if isinstance(operand, Lit) else get(operand.path)
    return comparable(value)


def comparable(value: Any) -> Any:
    """The form two values are compared in: text case-folded (Dataverse collation), dates in UTC."""
    if isinstance(value, str):
        return value.casefold()
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return value


# ----------------------------------------------------------------------------- other query options


def parse_select(text: str, resolve: Resolver) -> list[str]:
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise err.bad_query(f"Syntax error: '$select={text}' names an empty property.")
    for name in names:
        resolve(name)
    return list(dict.fromkeys(names))


def parse_orderby(text: str, resolve: Resolver) -> list[tuple[str, bool]]:
    """``a asc, b desc`` -> [(a, False), (b, True)] (True = descending)."""
    out: list[tuple[str, bool]] = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise err.bad_query(f"Syntax error at '{part.strip()}' in '$orderby={text}'.")
        resolve(words[0])
        out.append((words[0], len(words) == 2 and words[1] == "desc"))
    return out


def parse_key(text: str) -> str | dict[str, Any]:
    """The inside of ``entityset(...)``: a GUID, or ``name=literal[,name=literal]``."""
    stripped = text.strip()
    if GUID_RE.fullmatch(stripped):
        return stripped.lower()
    tokens = tokenize(stripped)
    pairs: dict[str, Any] = {}
    i = 0
    while tokens[i].kind != "end":
        name, eq, value = tokens[i], tokens[i + 1], tokens[i + 2] if i + 2 < len(tokens) else tokens[-1]
        if name.kind != "ident" or eq.kind != "equals" or value.kind not in ("string", "number", "guid"):
            raise err.bad_query(f"Bad Request - Error in query syntax: the key '({text})' is not valid.")
        pairs[name.text] = value.value
        i += 3
        if tokens[i].kind == "comma" and tokens[i + 1].kind != "end":
            i += 1
        elif tokens[i].kind != "end":
            raise err.bad_query(f"Bad Request - Error in query syntax: the key '({text})' is not valid.")
    if not pairs:
        raise err.bad_query(f"Bad Request - Error in query syntax: the key '({text})' is not valid.")
    return pairs


def quote_literal(value: str) -> str:
    """An OData string literal: quoted, embedded quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def parse_prefer(header: str | None) -> dict[str, str]:
    """``Prefer`` preferences by lower-cased name; quoted commas stay inside their value."""
    prefs: dict[str, str] = {}
    if not header:
        return prefs
    for part in re.findall(r'(?:[^,"]|"[^"]*")+', header):
        name, _, value = part.strip().partition("=")
        if name:
            prefs[name.strip().lower()] = value.strip()
    return prefs


def split_path(path: str) -> list[str]:
    """Split a decoded resource path on ``/`` outside quoted key values."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in path:
        if ch == "'":
            quoted = not quoted
        if ch == "/" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p != ""]


def split_segment(segment: str) -> tuple[str, str | None]:
    """``leads(abc)`` -> (``leads``, ``abc``); ``leads`` -> (``leads``, None)."""
    if segment.endswith(")") and "(" in segment:
        name, _, rest = segment.partition("(")
        return name, rest[:-1]
    return segment, None
