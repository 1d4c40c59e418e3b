"""Scripted faults, shared by both simulators: make the next matching calls fail the way a real
service can.

Owns the rule format of the ``/_sandbox/faults`` admin endpoints, the ``faults`` options and the
``--marketo-fault`` / ``--dataverse-fault`` flags: ``{"method": "GET"|null, "path": "<regex
searched in the path>", "times": n|-1, "action": {...}}``. An action is one answer, ``{"status":
502, "body": "..."|{...}, "retry_after": 5}``, ``{"drop": true}`` or a kind the simulator adds
(``FaultBook(extra_actions={"marketo_error"})`` allows ``{"marketo_error": "606", "message":
"..."}``), optionally after a ``"delay": 1.5`` in seconds; a delay alone is served normally
after the wait. Rules are tried in order; the first that matches fires and uses up one of its
``times`` (``-1`` = forever). The admin API appends (POST), lists (GET) and clears (DELETE);
``FaultControls`` gives both apps the same Python API (``set_faults`` replaces, ``add_faults``
appends, ``clear_faults``, ``faults``). This module matches, counts and validates; it must not
know a service: turning an action into a response is each app's job (``status_response`` only
dresses a ``status`` answer).
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sandbox._http import Response

_RULE_KEYS = frozenset({"method", "path", "times", "action"})
_ANSWERS = ("status", "drop")  # the built-in answers; a caller's extra kinds join them


@dataclass(frozen=True)
class FaultAction:
    """What a rule does: wait ``delay`` seconds, then one answer (or none: served normally)."""

    delay: float | None = None
    drop: bool = False
    status: int | None = None
    body: Any = None  # with status: a string is sent as text, a JSON object or list as JSON
    retry_after: float | None = None  # with status: the Retry-After header, in seconds
    kind: str | None = None  # a caller's extra action kind, e.g. "marketo_error"
    value: str | None = None  # its value, e.g. "606"
    message: str | None = None  # with an extra kind: the text the service would give

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.kind is not None:
            out[self.kind] = self.value
        for name in ("message", "status", "body", "retry_after", "delay"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.drop:
            out["drop"] = True
        return out


@dataclass
class FaultRule:
    path: str
    action: FaultAction
    method: str | None = None
    times: int = 1  # left to fire; -1 = forever

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.path)

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and self._pattern.search(path) is not None

    def as_json(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "times": self.times, "action": self.action.as_json()}


def parse_rule(obj: Any, *, extra_actions: Collection[str] = ()) -> FaultRule:
    """A rule from its JSON form (or a copy of a rule); ValueError names what is wrong."""
    if isinstance(obj, FaultRule):
        if obj.action.kind is not None and obj.action.kind not in extra_actions:
            raise ValueError(f"fault action {obj.action.kind!r} is not known to this simulator")
        return replace(obj)  # a copy: using a rule up must not change the options it came from
    if not isinstance(obj, dict):
        raise ValueError("a fault rule must be a JSON object")
    unknown = set(obj) - _RULE_KEYS
    if unknown:
        raise ValueError(f"unknown fault rule keys: {sorted(unknown)}")
    method = obj.get("method")
    if method is not None and not isinstance(method, str):
        raise ValueError("fault 'method' must be a string or null")
    path = obj.get("path", "")
    if not isinstance(path, str):
        raise ValueError("fault 'path' must be a regular expression string")
    try:
        re.compile(path)
    except re.error as err:
        raise ValueError(f"fault 'path' is not a valid regular expression: {err}") from err
    times = obj.get("times", 1)
    if isinstance(times, bool) or not isinstance(times, int) or (times < 1 and times != -1):
        raise ValueError("fault 'times' must be a positive integer or -1 (forever)")
    action = _parse_action(obj.get("action"), frozenset(extra_actions))
    return FaultRule(path=path, action=action, method=method.upper() if method else None, times=times)


def _parse_action(action: Any, extra: frozenset[str]) -> FaultAction:
    if not isinstance(action, dict):
        raise ValueError("fault 'action' must be an object")
    answers = (*_ANSWERS, *sorted(extra))
    companions = {"delay", "body", "retry_after", *(("message",) if extra else ())}
    unknown = set(action) - {*answers, *companions}
    if unknown:
        raise ValueError(f"unknown fault action keys: {sorted(unknown)} (answers: {list(answers)}, or 'delay')")
    chosen = [k for k in answers if k in action]
    if len(chosen) > 1 or not (chosen or "delay" in action):
        raise ValueError(f"fault 'action' needs one answer of {list(answers)}, a 'delay', or a delay then one answer")
    answer = chosen[0] if chosen else None
    # A companion of another answer would be silently ignored: refuse it instead.
    if ("body" in action or "retry_after" in action) and answer != "status":
        raise ValueError("fault 'body' and 'retry_after' go only with 'status'")
    if "message" in action and answer not in extra:
        raise ValueError(f"fault 'message' goes only with one of {sorted(extra)}")
    fields: dict[str, Any] = {"delay": _seconds(action, "delay")}
    if answer == "drop":
        if action["drop"] is not True:
            raise ValueError("fault 'drop' must be true")
        fields["drop"] = True
    elif answer == "status":
        status = action["status"]
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError("fault 'status' must be an HTTP status code (100-599)")
        body = action.get("body")
        if body is not None and not isinstance(body, str | dict | list):
            raise ValueError("fault 'body' must be a string or a JSON object or list")
        fields |= {"status": status, "body": body, "retry_after": _seconds(action, "retry_after")}
    elif answer is not None:
        value, message = action[answer], action.get("message")
        if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
            raise ValueError(f"fault {answer!r} must be a non-empty string or an integer")
        if message is not None and not isinstance(message, str):
            raise ValueError("fault 'message' must be a string")
        fields |= {"kind": answer, "value": str(value), "message": message}
    return FaultAction(**fields)


def _seconds(action: dict[str, Any], key: str) -> float | None:
    value = action.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"fault {key!r} must be a non-negative number of seconds")
    return value


def parse_spec(
    spec: str, *, extra_actions: Collection[str] = (), short_names: Mapping[str, str] | None = None
) -> FaultRule:
    """A rule from the command line: its JSON form, or ``key=value`` pairs separated by ``;``.

    Short form keys: ``path``, ``method``, ``times``, ``delay=1.5`` and one answer among
    ``status=502`` (optional ``body=``, ``retry_after=``), ``drop`` or an extra kind by its name
    or a name in ``short_names`` (optional ``message=``). Example: ``path=leads;status=502;times=2``.
    """
    text = spec.strip()
    if text.startswith("{"):
        try:
            return parse_rule(json.loads(text), extra_actions=extra_actions)
        except json.JSONDecodeError as err:
            raise ValueError(f"fault spec is not valid JSON: {err}") from err
    aliases = {name: name for name in extra_actions} | dict(short_names or {})
    rule: dict[str, Any] = {}
    action: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = (s.strip() for s in part.partition("="))
        if key in ("path", "method"):
            rule[key] = value
        elif key in ("times", "status"):
            (rule if key == "times" else action)[key] = _number(value, key, int)
        elif key in ("delay", "retry_after"):
            action[key] = _number(value, key, float)
        elif key in ("body", "message"):
            action[key] = value
        elif key in aliases:
            action[aliases[key]] = value
        elif key == "drop" and (not sep or value.lower() in ("1", "true", "yes")):
            action["drop"] = True
        else:
            raise ValueError(f"unknown fault spec item {part!r}")
    rule["action"] = action
    return parse_rule(rule, extra_actions=extra_actions)


def _number(value: str, key: str, kind: Callable[[str], Any]) -> Any:
    try:
        return kind(value)
    except ValueError as err:
        raise ValueError(f"fault '{key}' must be a number, not {value!r}") from err


def add_fault_argument(
    group: argparse._ArgumentGroup, flag: str, *, parse: Callable[[str], FaultRule], example: str
) -> None:
    """The repeatable ``--<service>-fault SPEC`` flag; its values are parsed rules."""

    def rule(spec: str) -> FaultRule:
        try:
            return parse(spec)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    group.add_argument(
        flag,
        action="append",
        default=[],
        metavar="SPEC",
        type=rule,
        help=f"arm a fault rule at start (repeatable): JSON, or e.g. '{example}'",
    )


class FaultBook:
    """The pending rules, consumed in order; safe to use from many request threads."""

    def __init__(self, rules: Iterable[Any] = (), *, extra_actions: Collection[str] = ()) -> None:
        self._extra = frozenset(extra_actions)
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = self._parse(rules)

    def _parse(self, rules: Iterable[Any]) -> list[FaultRule]:
        return [parse_rule(r, extra_actions=self._extra) for r in rules]  # all before any is armed

    def add(self, rules: Iterable[Any]) -> None:
        parsed = self._parse(rules)
        with self._lock:
            self._rules.extend(parsed)

    def set(self, rules: Iterable[Any]) -> None:
        parsed = self._parse(rules)
        with self._lock:
            self._rules = parsed

    def clear(self) -> None:
        with self._lock:
            self._rules = []

    def as_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.as_json() for r in self._rules]

    def take(self, method: str, path: str) -> FaultAction | None:
        """The action of the first rule that matches, using up one of its times."""
        with self._lock:
            for i, rule in enumerate(self._rules):
                if rule.matches(method, path):
                    if rule.times > 0:
                        rule.times -= 1
                        if rule.times == 0:
                            del self._rules[i]
                    return rule.action
            return None


class FaultControls:
    """The in-process fault API both simulators offer; the app sets ``_faults`` before serving."""

    _faults: FaultBook

    def set_faults(self, rules: list[Any]) -> None:
        """Replace the armed rules (JSON rules as ``POST /_sandbox/faults`` takes, or ``FaultRule``s)."""
        self._faults.set(rules)

    def add_faults(self, rules: list[Any]) -> None:
        """Append rules after the armed ones, like ``POST /_sandbox/faults``."""
        self._faults.add(rules)

    def clear_faults(self) -> None:
        self._faults.clear()

    def faults(self) -> list[dict[str, Any]]:
        """The armed rules as JSON, like ``GET /_sandbox/faults``."""
        return self._faults.as_json()


def status_response(action: FaultAction, default: Callable[[int], Response]) -> Response:
    """A ``status`` answer: the rule's ``body`` (a string as text, else JSON) or the service's own
    ``default(status)`` page, with the rule's Retry-After."""
    assert action.status is not None
    if action.body is None:
        response = default(action.status)
    elif isinstance(action.body, str):
        response = Response.text(action.body, action.status)
    else:
        response = Response.json(action.body, action.status)
    if action.retry_after is not None:
        response.headers.append(("Retry-After", f"{action.retry_after:g}"))
    return response


def admin_faults(book: FaultBook, method: str, body: Any) -> Response | None:
    """``/_sandbox/faults``: GET lists, POST ``{"rules": [...]}`` appends, DELETE clears.

    Each answers ``{"rules": [...]}`` as armed now; None for another method. A bad body or rule
    raises ValueError and arms nothing.
    """
    if method == "POST":
        rules = body.get("rules") if isinstance(body, dict) else None
        if not isinstance(rules, list):
            raise ValueError('expected {"rules": [...]}')
        book.add(rules)
    elif method == "DELETE":
        book.clear()
    elif method != "GET":
        return None
    return Response.json({"rules": book.as_json()})
