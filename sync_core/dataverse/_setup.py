"""Setup facts read for ``python -m sync_core check``: who the identity is, what its roles let it
do, and whether a table tracks changes. Reads only, no side effects:

- ``WhoAmI()`` gives the calling user's id (the application user behind the credential);
- ``systemusers(<id>)/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()`` lists the privileges the
  user holds through their roles and teams (``RolePrivileges``: ``PrivilegeName`` such as
  ``prvWriteLead``, ``Depth``);
- ``EntityDefinitions(LogicalName='lead')?$select=ChangeTrackingEnabled`` says whether delta
  reads will work on the table.
"""

from __future__ import annotations

from sync_core.dataverse import odata as _odata
from sync_core.dataverse._api import WebApi


def who_am_i(api: WebApi) -> str:
    """The calling user's ``systemuserid``."""
    body = api.send("who_am_i", "GET", api.url("WhoAmI"), idempotent=True).json()
    return str(body["UserId"])


def user_privileges(api: WebApi, user_id: str) -> dict[str, str]:
    """The privileges ``user_id`` holds through their roles: name (e.g. ``prvReadLead``) -> depth."""
    url = api.url(f"systemusers({_odata.guid_literal(user_id)})/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()")
    body = api.send("retrieve_user_privileges", "GET", url, idempotent=True).json()
    held: dict[str, str] = {}
    for item in body.get("RolePrivileges") or []:
        if item.get("PrivilegeName"):
            held[str(item["PrivilegeName"])] = str(item.get("Depth") or "")
    return held


def change_tracking_enabled(api: WebApi, logical_name: str) -> bool:
    """Whether the table has change tracking on (``EntityMetadata.ChangeTrackingEnabled``)."""
    name = _odata.identifier(logical_name)
    url = api.url(f"EntityDefinitions(LogicalName={_odata.quote_literal(name)})")
    body = api.send("get_entity_definition", "GET", url, params={"$select": "ChangeTrackingEnabled"}, idempotent=True)
    return body.json().get("ChangeTrackingEnabled") is True
