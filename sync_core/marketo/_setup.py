"""Setup facts read for ``python -m sync_core check``: a custom activity type as Marketo describes it.

Reads only (``GET .../activities/external/type/{apiName}/describe.json``), through the client's
one request path so tokens, retries and API-call counts stay the client's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from sync_core.core.errors import ApiError
from sync_core.marketo.client import MarketoClient

NOT_FOUND = "1013"  # "Activity type ... not found"


@dataclass(frozen=True)
class ActivityTypeFacts:
    api_name: str
    status: str  # approved, draft, ...
    attributes: tuple[str, ...]  # the attributes' API names, primary first


def describe_activity_type(marketo: MarketoClient, api_name: str) -> ActivityTypeFacts | None:
    """The custom activity type ``api_name`` (its status and attributes), or None when there is none."""
    path = f"/rest/v1/activities/external/type/{quote(api_name, safe='')}/describe.json"
    try:
        envelope = marketo._call("describe_activity_type", "GET", path, idempotent=True)
    except ApiError as err:
        if err.code == NOT_FOUND or err.status == 404:
            return None
        raise
    if not envelope.result:
        return None
    item = envelope.result[0]
    names = [str((item.get("primaryAttribute") or {}).get("apiName") or "")]
    names += [str(attribute.get("apiName") or "") for attribute in item.get("attributes") or []]
    return ActivityTypeFacts(
        api_name=str(item.get("apiName") or api_name),
        status=str(item.get("status") or "").lower(),
        attributes=tuple(name for name in names if name),
    )
