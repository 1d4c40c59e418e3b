"""The one request path both API clients send through: build, send with auth, read, retry.

``RetryingSender`` builds each attempt's request (tagged with its operation for the counters),
sends it through the client's auth flow inside the rate budget's slot when there is one, turns
a transport error into a ``RetryableFailure`` (a connection that never opened is REFUSED, a
failed token fetch too: the request itself was never sent) and hands the response to the
client's ``read`` function, which returns the value or raises the typed error the answer stands
for. ``call_with_retries`` then decides whether to try again. It knows nothing of either
service's envelope or error format and never logs a payload.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any, TypeVar

import httpx

from sync_core.core.errors import TransientError
from sync_core.http.counters import OPERATION_KEY, ApiCounters
from sync_core.http.ratebudget import RateBudget
from sync_core.http.retry import Failure, RetryableFailure, RetryPolicy, call_with_retries, transport_failure

T = TypeVar("T")


class RetryingSender:
    """Sends requests of one service with retries; thread-safe when its ``http`` client is."""

    def __init__(
        self,
        http: httpx.Client,
        auth: httpx.Auth,
        *,
        service: str,
        policy: RetryPolicy,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
        counters: ApiCounters | None = None,
        budget: RateBudget | None = None,
    ) -> None:
        self._http = http
        self._auth = auth
        self._service = service
        self._policy = policy
        self._sleep = sleep
        self._clock = clock
        self._counters = counters
        self._budget = budget

    def with_policy(self, policy: RetryPolicy) -> RetryingSender:
        """This sender with other retry rules, sharing its client, auth, budget and counters."""
        other = copy.copy(self)
        other._policy = policy
        return other

    def send(
        self,
        operation: str,
        method: str,
        url: str,
        read: Callable[[httpx.Response], T],
        *,
        idempotent: bool,
        timeout: httpx.Timeout,
        params: Mapping[str, str | int] | None = None,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> T:
        """``read(response)`` of the first attempt that neither fails retryably nor exhausts the policy."""

        def attempt() -> T:
            request = self._http.build_request(
                method,
                url,
                params=params,
                json=json_body,
                data=form,
                content=content,
                headers=headers,
                timeout=timeout,
                extensions={OPERATION_KEY: operation},
            )
            with self._budget.slot() if self._budget is not None else nullcontext():
                try:
                    response = self._http.send(request, auth=self._auth)
                except httpx.TransportError as err:
                    raise transport_failure(err, service=self._service, operation=operation) from err
                except TransientError as err:  # the token fetch failed: the request was never sent
                    raise RetryableFailure(err, failure=Failure.REFUSED) from err
            return read(response)

        return call_with_retries(
            attempt,
            service=self._service,
            operation=operation,
            idempotent=idempotent,
            policy=self._policy,
            sleep=self._sleep,
            clock=self._clock,
            counters=self._counters,
        )
