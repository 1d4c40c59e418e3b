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

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import KW_ONLY, dataclass, replace
from typing import Any, TypedDict, TypeVar, Unpack

import httpx

from sync_core.core.errors import TransientError
from sync_core.http.counters import OPERATION_KEY, ApiCounters
from sync_core.http.ratebudget import CallBudget
from sync_core.http.retry import Failure, RetryableFailure, RetryPolicy, call_with_retries, transport_failure

T = TypeVar("T")


class RequestBody(TypedDict, total=False):
    """What a request carries besides method, URL, headers and timeout (``httpx`` argument names)."""

    params: Mapping[str, str | int] | None
    json: Any
    data: Mapping[str, str] | None  # a form
    content: bytes | None


@dataclass(frozen=True)
class RetryingSender:
    """Sends requests of one service with retries; thread-safe when its ``http`` client is."""

    http: httpx.Client
    auth: httpx.Auth
    _: KW_ONLY
    service: str
    policy: RetryPolicy
    sleep: Callable[[float], None]
    clock: Callable[[], float]
    counters: ApiCounters | None = None
    budget: CallBudget | None = None

    def with_policy(self, policy: RetryPolicy) -> RetryingSender:
        """This sender with other retry rules, sharing its client, auth, budget and counters."""
        return replace(self, policy=policy)

    def send(
        self,
        operation: str,
        method: str,
        url: str,
        read: Callable[[httpx.Response], T],
        *,
        idempotent: bool,
        timeout: httpx.Timeout,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        **body: Unpack[RequestBody],
    ) -> T:
        """``read(response)`` of the first attempt that neither fails retryably nor exhausts the policy.

        ``stream``: the body is not read before ``read`` is called (``read`` consumes it, e.g. a
        bulk file too large to hold); the response is closed after ``read`` either way."""

        def attempt() -> T:
            request = self.http.build_request(
                method, url, headers=headers, timeout=timeout, extensions={OPERATION_KEY: operation}, **body
            )
            with self.budget.slot() if self.budget is not None else nullcontext():
                try:
                    response = self.http.send(request, auth=self.auth, stream=stream)
                except httpx.TransportError as err:
                    raise transport_failure(err, service=self.service, operation=operation) from err
                except TransientError as err:  # the token fetch failed: the request was never sent
                    raise RetryableFailure(err, failure=Failure.REFUSED) from err
            if not stream:
                return read(response)
            try:
                return read(response)
            except httpx.TransportError as err:  # the connection broke while the body streamed
                raise transport_failure(err, service=self.service, operation=operation) from err
            finally:
                response.close()

        return call_with_retries(
            attempt,
            service=self.service,
            operation=operation,
            idempotent=idempotent,
            policy=self.policy,
            sleep=self.sleep,
            clock=self.clock,
            counters=self.counters,
        )
