"""Fault injection: rules that make matching requests fail, stall or lose their connection.

A rule is ``{"method": "GET"|null, "path": "<regex searched in the path>", "times": n|-1,
"action": {...}}`` with actions ``{"status": 429, "retry_after": 2, "body": {...}?}``,
``{"delay": 1.5}`` (then served normally, or with ``status`` if both are given) and
``{"drop": true}``. The same shape as the Marketo simulator's, so tests drive both alike. This
module only matches and counts; the app performs the action.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from sandbox._http import Request


class FaultRuleError(ValueError):
    """A fault rule that cannot be used; the admin API answers 400 with this text."""


@dataclass
class FaultRule:
    method: str | None
    path: str
    times: int
    action: dict[str, Any]

    def __post_init__(self) -> None:
        try:
            self._pattern = re.compile(self.path)
        except re.error as exc:
            raise FaultRuleError(f"path {self.path!r} is not a regular expression: {exc}") from exc
        if not isinstance(self.action, dict) or not ({"status", "delay", "drop"} & set(self.action)):
            raise FaultRuleError("action needs one of status, delay, drop")
        if "status" in self.action and not (
            isinstance(self.action["status"], int) and 100 <= self.action["status"] < 600
        ):
            raise FaultRuleError("action.status must be an HTTP status code")
        if "delay" in self.action and not isinstance(self.action["delay"], int | float):
            raise FaultRuleError("action.delay must be a number of seconds")
        if self.times == 0 or self.times < -1:
            raise FaultRuleError("times must be a positive count or -1 (forever)")

    @classmethod
    def from_json(cls, data: Any) -> FaultRule:
        if not isinstance(data, dict):
            raise FaultRuleError("a fault rule must be a JSON object")
        method = data.get("method")
        times = data.get("times", 1)
        if method is not None and not isinstance(method, str):
            raise FaultRuleError("method must be a string or null")
        if not isinstance(times, int):
            raise FaultRuleError("times must be an integer")
        return cls(method.upper() if method else None, str(data.get("path", "")), times, data.get("action", {}))

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "times": self.times, "action": self.action}

    def matches(self, request: Request) -> bool:
        return (self.method is None or self.method == request.method) and bool(self._pattern.search(request.path))


class FaultInjector:
    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()

    def replace(self, rules: list[Any]) -> None:
        parsed = [FaultRule.from_json(rule) for rule in rules]
        with self._lock:
            self._rules = parsed

    def clear(self) -> None:
        with self._lock:
            self._rules = []

    def to_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.to_json() for rule in self._rules]

    def take(self, request: Request) -> dict[str, Any] | None:
        """The action of the first rule matching ``request``, using up one of its times."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(request):
                    if rule.times > 0:
                        rule.times -= 1
                        if rule.times == 0:
                            self._rules.remove(rule)
                    return dict(rule.action)
        return None
