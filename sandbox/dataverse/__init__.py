"""The Dataverse (Dynamics 365) Web API simulator: ``leads`` and ``contacts`` (owned by
``systemusers`` and ``teams``) behind
``/api/data/v9.2/``, an Entra-shaped token endpoint, change tracking, bulk messages, ``$batch``,
metadata, QualifyLead, service protection and fault injection (reference Part B).

Public surface: ``DataverseOptions``, ``DataverseSandbox`` (``handle(request)`` plus a Python API
acting as a Dynamics user), ``DataverseError``, ``PluginRule``/``default_plugin_rules`` and the
``python -m sandbox serve`` hooks ``add_arguments``/``options_from_args``. It stands alone: it
never imports ``sync_core``.
"""

from __future__ import annotations

from sandbox.dataverse._app import API_PATH, DataverseSandbox
from sandbox.dataverse._errors import DataverseError
from sandbox.dataverse._options import DataverseOptions, add_arguments, options_from_args
from sandbox.dataverse._schema import INTEGRATION_USER_ID, UI_USER_ID
from sandbox.dataverse._validate import PluginRule, default_plugin_rules

__all__ = [
    "API_PATH",
    "INTEGRATION_USER_ID",
    "UI_USER_ID",
    "DataverseError",
    "DataverseOptions",
    "DataverseSandbox",
    "PluginRule",
    "add_arguments",
    "default_plugin_rules",
    "options_from_args",
]
