"""Dataverse's error answers: one exception type and a factory per error the simulator gives.

Every refusal in the simulator is a ``DataverseError`` carrying the HTTP status, the service's
hex code and its message text, copied from the real service where it is known (reference B8).
Handlers raise; the app turns the exception into ``{"error":{"code","message"}}``. This module
must not know about requests, rows or routing.
"""

from __future__ import annotations

from typing import Any

# Codes whose real value is known (api-protocols.md B8); names follow the SDK's fault names.
OBJECT_DOES_NOT_EXIST = "0x80040217"
DUPLICATE_RECORD = "0x80040237"
DUPLICATE_RECORD_ENTITY_KEY = "0x80060892"
KEY_NOT_FOUND = "0x80060891"
STRING_LENGTH_TOO_LONG = "0x80044331"
PICKLIST_OUT_OF_RANGE = "0x8004431A"
CONCURRENCY_VERSION_MISMATCH = "0x80060882"
ODATA_URI_ERROR = "0x80060888"
ODATA_PAYLOAD_ERROR = "0x80048d19"
PLUGIN_ABORT = "0x80040265"
UNEXPECTED = "0x80040216"
INVALID_ARGUMENT = "0x80040203"
EXPIRED_VERSION_STAMP = "0x80044352"
REQUESTS_LIMIT = "0x80072322"
EXECUTION_TIME_LIMIT = "0x80072321"
CONCURRENCY_LIMIT = "0x80072326"
# SdkEntityDoesNotSupportMessage, as public reports of the fault show it; the HTTP status (400) is assumed.
MESSAGE_NOT_SUPPORTED = "0x80040800"
PRIVILEGE_DENIED = "0x80040220"  # PrivilegeDenied, 403 (api-protocols.md B8)
CHANGE_TRACKING_NOT_ENABLED = "0x80072491"  # a delta read on a table without change tracking; code assumed
NUMBER_OUT_OF_RANGE = "0x80044330"  # a number outside MinValue..MaxValue; code assumed

PAYLOAD_HELP = (
    "Error identified in Payload provided by the user for Entity :'{entity}', For more information on this "
    "error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ---->  "
    "InnerException : Microsoft.OData.ODataException: {inner}"
)


class DataverseError(Exception):
    """A refusal the way the Web API words it: status, hex code, message, extra headers."""

    def __init__(self, status: int, code: str, message: str, *, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = list(headers or [])

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def not_found(logical: str, record_id: str) -> DataverseError:
    return DataverseError(404, OBJECT_DOES_NOT_EXIST, f"{logical} With Id = {record_id} Does Not Exist")


def key_not_found(logical: str) -> DataverseError:
    return DataverseError(
        404, KEY_NOT_FOUND, f"A record with the specified key values does not exist in {logical} entity"
    )


def duplicate_record() -> DataverseError:
    return DataverseError(412, DUPLICATE_RECORD, "A record with matching key values already exists.")


def duplicate_key(key_name: str, column: str) -> DataverseError:
    return DataverseError(
        412,
        DUPLICATE_RECORD_ENTITY_KEY,
        f"Entity Key {key_name} violated. A record with the same value for {column} already exists. "
        "A duplicate record cannot be created. Try again with a different value.",
    )


def version_mismatch() -> DataverseError:
    return DataverseError(
        412,
        CONCURRENCY_VERSION_MISMATCH,
        "The version of the existing record doesn't match the RowVersion property provided.",
    )


def too_long(column: str, logical: str, max_length: int) -> DataverseError:
    # Two spaces after "occurred." are in the real message.
    return DataverseError(
        400,
        STRING_LENGTH_TOO_LONG,
        f"A validation error occurred.  The length of the '{column}' attribute of the '{logical}' entity exceeded "
        f"the maximum allowed length of '{max_length}'.",
    )


def out_of_range(value: object, column: str, logical: str, accepted: list[int]) -> DataverseError:
    return DataverseError(
        400,
        PICKLIST_OUT_OF_RANGE,
        f"A validation error occurred. The value {value} of '{column}' on record of type '{logical}' is outside the "
        f"valid range. Accepted Values: {','.join(str(a) for a in accepted)}",
    )


def out_of_bounds(value: object, column: str, logical: str, low: float, high: float) -> DataverseError:
    """A number outside the column's MinValue..MaxValue (code and wording assumed from the picklist
    one: the real text is not in our references)."""
    return DataverseError(
        400,
        NUMBER_OUT_OF_RANGE,
        f"A validation error occurred. The value {value} of '{column}' on record of type '{logical}' is outside the "
        f"valid range ({low:g} to {high:g}).",
    )


def no_property(name: str, logical: str) -> DataverseError:
    """Unknown property in a URL ($select, $filter, $orderby)."""
    return DataverseError(
        400, ODATA_URI_ERROR, f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{logical}'."
    )


def no_body_property(name: str, logical: str) -> DataverseError:
    """Unknown property in a request body."""
    return DataverseError(
        400,
        ODATA_URI_ERROR,
        f"The property '{name}' does not exist on type 'Microsoft.Dynamics.CRM.{logical}'. Make sure to only use "
        "property names that are defined by the type.",
    )


def message_not_supported(message: str, logical: str) -> DataverseError:
    """A bulk message not (yet) enabled on a table ("some tables may not support them yet")."""
    return DataverseError(
        400,
        MESSAGE_NOT_SUPPORTED,
        f"The '{message}' method does not support entities of type '{logical}'. "
        "MessageProcessorCache returned MessageProcessor.Empty.",
    )


def no_segment(segment: str) -> DataverseError:
    return DataverseError(404, ODATA_URI_ERROR, f"Resource not found for the segment '{segment}'.")


def bad_query(message: str) -> DataverseError:
    return DataverseError(400, ODATA_URI_ERROR, message)


def bad_payload(entity_set: str, inner: str) -> DataverseError:
    return DataverseError(400, ODATA_PAYLOAD_ERROR, PAYLOAD_HELP.format(entity=entity_set, inner=inner))


def bad_argument(message: str) -> DataverseError:
    return DataverseError(400, INVALID_ARGUMENT, message)


def plugin_abort(message: str) -> DataverseError:
    return DataverseError(400, PLUGIN_ABORT, message)


def expired_version_stamp() -> DataverseError:
    return DataverseError(
        400, EXPIRED_VERSION_STAMP, "Version stamp associated with the client has expired. Please perform a full sync."
    )


def privilege_denied(privilege: str, user_id: str) -> DataverseError:
    return DataverseError(
        403,
        PRIVILEGE_DENIED,
        f"Principal user (Id={user_id}, type=8) is missing {privilege} privilege. "
        "The user does not hold the necessary privileges.",
    )


def change_tracking_off(logical: str) -> DataverseError:
    return DataverseError(
        400, CHANGE_TRACKING_NOT_ENABLED, f"Change tracking is not enabled for the entity '{logical}'."
    )


def method_not_allowed(method: str, path: str) -> DataverseError:
    return DataverseError(405, ODATA_URI_ERROR, f"The HTTP method '{method}' is not allowed on '{path}'.")
