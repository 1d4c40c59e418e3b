"""The Dataverse Web API client (credential auth, paging, change tracking, bulk messages, ``$batch``,
metadata, OData escaping). The only code that speaks HTTP to Dataverse.
"""
