"""The Marketo simulator: a faithful, loopback-only stand-in for one Marketo Engage instance.

Identity, the Lead-database REST API (leads, activities, custom activities, usage), the limits
(rate, concurrency, daily quota) and scripted faults, served by ``sandbox._http``. Modules:
``_app`` (pipeline, in-process and admin APIs), ``_db`` (leads + activity log), ``_leads`` and
``_activities`` (endpoints), ``_schema`` (fields, types, activity types), ``_limits``,
``_faults``, ``_tokens``, ``_envelope``, ``_options``. It never imports ``sync_core``.
"""

from __future__ import annotations

from sandbox.marketo._app import GZIP_MIN, MarketoSandbox, seed_values
from sandbox.marketo._faults import FaultAction, FaultRule, parse_rule, parse_spec
from sandbox.marketo._options import MarketoOptions, add_arguments, options_from_args

__all__ = [
    "GZIP_MIN",
    "FaultAction",
    "FaultRule",
    "MarketoOptions",
    "MarketoSandbox",
    "add_arguments",
    "options_from_args",
    "parse_rule",
    "parse_spec",
    "seed_values",
]
