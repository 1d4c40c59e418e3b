"""Bearer-token plumbing shared by both API clients: one cached token per process, as an ``httpx.Auth`` flow.

The flow stamps ``Authorization: Bearer`` on each request with the cached token, fetches a new
one only when there is none or it is due for refresh (the lock is held across the fetch, so
concurrent callers wait for one token instead of each fetching their own), and when the service
says the token was refused it drops it, fetches once more and replays the request once. Every
request it lets through is counted under its operation; token fetches are counted apart.

Subclasses say only how a token is fetched (``_fetch``) and how the service refuses one
(``_refused``). This module knows nothing of Marketo or Dataverse and never logs a token.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator

import httpx

from sync_core.http.counters import OPERATION_KEY, ApiCounters


class CachedTokenAuth(httpx.Auth, ABC):
    def __init__(self, *, service: str, clock: Callable[[], float], counters: ApiCounters | None) -> None:
        self._service = service
        self._clock = clock
        self._counters = counters
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0

    @abstractmethod
    def _fetch(self, now: float) -> Generator[httpx.Request, httpx.Response, tuple[str, float]]:
        """A new token and the ``clock`` time from which to fetch another; may yield requests of its own."""

    @abstractmethod
    def _refused(self, response: httpx.Response) -> bool:
        """Whether ``response`` says the token was invalid or expired (drop it and replay once)."""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = yield from self._current_token()
        response = yield self._stamped(request, token)
        if not self._refused(response):
            return
        self._forget(token)
        token = yield from self._current_token()
        yield self._stamped(request, token)

    def _stamped(self, request: httpx.Request, token: str) -> httpx.Request:
        request.headers["Authorization"] = f"Bearer {token}"
        if self._counters is not None:
            self._counters.record_call(self._service, str(request.extensions.get(OPERATION_KEY, request.url.path)))
        return request

    def _forget(self, token: str) -> None:
        with self._lock:
            if self._token == token:  # another thread may have refreshed already
                self._token = None

    def _current_token(self) -> Generator[httpx.Request, httpx.Response, str]:
        # httpx closes the flow (releasing the lock) on any error raised while it is suspended.
        with self._lock:
            now = self._clock()
            if self._token is not None and now < self._refresh_at:
                return self._token
            if self._counters is not None:
                self._counters.record_token_call(self._service)
            token, refresh_at = yield from self._fetch(now)
            self._token, self._refresh_at = token, refresh_at
            return token


class StreamingTokenAuth(httpx.Auth):
    """For one request whose answer is streamed (a bulk file): stamps ``inner``'s cached token, reading
    the token endpoint's answers as usual but never the streamed body itself. Make one per request.

    No replay on a refused token (the body would have to be read to know): the cached token is
    refreshed well before it expires, and a refused download is an error the caller retries."""

    def __init__(self, inner: CachedTokenAuth) -> None:
        self._inner = inner
        self.requires_response_body = True  # while a token is fetched; off for the request itself

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = yield from self._inner._current_token()
        self.requires_response_body = False
        yield self._inner._stamped(request, token)
