"""Scripted faults: make the next matching calls fail the way the real service can.

Owns the rule format shared by ``MarketoOptions.faults``, the ``--marketo-fault`` flag and the
``/_sandbox/faults`` admin endpoint: ``{"method": "GET"|null, "path": "<regex searched in the
path>", "times": 1, "action": {...}}`` with one action of ``{"marketo_error": "606"}``,
``{"status": 502, "body": "...", "retry_after": 5}``, ``{"delay": 1.5}`` or ``{"drop": true}``.
Rules are tried in order; the first that matches fires and uses up one of its ``times``
(``-1`` = forever). Turning an action into a response is the app's job, not this module's.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class FaultAction:
    marketo_error: str | None = None
    message: str | None = None
    status: int | None = None
    body: str | None = None
    retry_after: float | None = None
    delay: float | None = None
    drop: bool = False

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v is not False}


@dataclass
class FaultRule:
    path: str
    action: FaultAction
    method: str | None = None
    times: int = 1

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.path)

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and self._pattern.search(path) is not None

    def as_json(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "times": self.times, "action": self.action.as_json()}


_ACTION_KEYS = ("marketo_error", "status", "delay", "drop")


def parse_rule(obj: Any) -> FaultRule:
    """A rule from its JSON form (or a copy of a rule); ValueError names what is wrong."""
    if isinstance(obj, FaultRule):
        return replace(obj)  # a copy: using a rule up must not change the options it came from
    if not isinstance(obj, dict):
        raise ValueError("a fault rule must be a JSON object")
    unknown = set(obj) - {"method", "path", "times", "action"}
    if unknown:
        raise ValueError(f"unknown fault rule keys: {sorted(unknown)}")
    method = obj.get("method")
    if method is not None and not isinstance(method, str):
        raise ValueError("fault 'method' must be a string or null")
    path = obj.get("path") or ""
    if not isinstance(path, str):
        raise ValueError("fault 'path' must be a regular expression string")
    try:
        re.compile(path)
    except re.error as err:
        raise ValueError(f"fault 'path' is not a valid regular expression: {err}") from err
    times = obj.get("times", 1)
    if isinstance(times, bool) or not isinstance(times, int) or (times < 1 and times != -1):
        raise ValueError("fault 'times' must be a positive integer or -1 (forever)")
    return FaultRule(
        path=path, action=_parse_action(obj.get("action")), method=method.upper() if method else None, times=times
    )


def _parse_action(action: Any) -> FaultAction:
    if not isinstance(action, dict):
        raise ValueError("fault 'action' must be an object")
    kinds = [k for k in _ACTION_KEYS if k in action]
    if len(kinds) != 1:
        raise ValueError(f"fault 'action' needs exactly one of {list(_ACTION_KEYS)}")
    unknown = set(action) - {*_ACTION_KEYS, "message", "body", "retry_after"}
    if unknown:
        raise ValueError(f"unknown fault action keys: {sorted(unknown)}")
    try:
        if "marketo_error" in action:
            return FaultAction(marketo_error=str(action["marketo_error"]), message=action.get("message"))
        if "status" in action:
            status = int(action["status"])
            if not 100 <= status <= 599:
                raise ValueError("fault 'status' must be an HTTP status code")
            retry_after = action.get("retry_after")
            return FaultAction(
                status=status,
                body=None if action.get("body") is None else str(action["body"]),
                retry_after=None if retry_after is None else float(retry_after),
            )
        if "delay" in action:
            delay = float(action["delay"])
            if delay < 0:
                raise ValueError("fault 'delay' must not be negative")
            return FaultAction(delay=delay)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad fault action {action!r}: {err}") from err
    if action.get("drop") is not True:
        raise ValueError("fault 'drop' must be true")
    return FaultAction(drop=True)


def parse_spec(spec: str) -> FaultRule:
    """A rule from the command line: its JSON form, or ``key=value`` pairs separated by ``;``.

    Short form keys: ``path``, ``method``, ``times`` and one action among ``error=606`` (with
    optional ``message=``), ``status=502`` (optional ``body=``, ``retry_after=``), ``delay=1.5``,
    ``drop``. Example: ``path=leadchanges;error=606;times=2``.
    """
    text = spec.strip()
    if text.startswith("{"):
        try:
            return parse_rule(json.loads(text))
        except json.JSONDecodeError as err:
            raise ValueError(f"fault spec is not valid JSON: {err}") from err
    rule: dict[str, Any] = {}
    action: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if key in ("path", "method"):
            rule[key] = value
        elif key == "times":
            rule["times"] = _int(value, key)
        elif key == "error":
            action["marketo_error"] = value
        elif key in ("message", "body", "status", "retry_after", "delay"):
            action[key] = value
        elif key == "drop" and (not sep or value.lower() in ("1", "true", "yes")):
            action["drop"] = True
        else:
            raise ValueError(f"unknown fault spec item {part!r}")
    rule["action"] = action
    return parse_rule(rule)


def _int(value: str, key: str) -> int:
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"fault '{key}' must be an integer, not {value!r}") from err


class FaultBook:
    """The pending rules, consumed in order; safe to use from many request threads."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()

    def add(self, rules: list[Any]) -> None:
        parsed = [parse_rule(r) for r in rules]  # all or nothing: parse before adding any
        with self._lock:
            self._rules.extend(parsed)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def as_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.as_json() for r in self._rules]

    def take(self, method: str, path: str) -> FaultAction | None:
        with self._lock:
            for i, rule in enumerate(self._rules):
                if rule.matches(method, path):
                    if rule.times > 0:
                        rule.times -= 1
                        if rule.times == 0:
                            del self._rules[i]
                    return rule.action
            return None
