"""The settings (design §7) that point the sync at the simulators: one place for the demo, the
end-to-end tests and the benchmarks. The simulators' credentials are their documented ones."""

from __future__ import annotations


def sandbox_settings(
    marketo_url: str, dataverse_url: str, *, tables_connection: str, table_prefix: str, **extra: str
) -> dict[str, str]:
    return {
        "MARKETO_BASE_URL": marketo_url,
        "MARKETO_CLIENT_ID": "sandbox-client-id",
        "MARKETO_CLIENT_SECRET": "sandbox-client-secret",
        "DATAVERSE_URL": dataverse_url,
        "DATAVERSE_STATIC_TOKEN": "sandbox-token",
        "SYNC_TABLES_CONNECTION": tables_connection,
        "SYNC_TABLE_PREFIX": table_prefix,
        **extra,
    }
