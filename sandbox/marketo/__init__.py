"""The Marketo simulator: a faithful, loopback-only stand-in for one Marketo Engage instance.

Identity, the Lead-database REST API (leads, activities, custom activities, usage), the limits
(rate, concurrency, daily quota) and scripted faults, served by ``sandbox._http``. Modules:
``_app`` (pipeline, in-process and admin APIs), ``_db`` (leads + activity log), ``_leads`` and
``_activities`` (endpoints), ``_schema`` (fields, types, activity types), ``_limits``,
``_tokens``, ``_envelope``, ``_options``; fault rules come from the shared ``sandbox._faults``,
plus Marketo's own ``marketo_error`` answer. It never imports ``sync_core``.
"""

from __future__ import annotations

from sandbox.marketo._app import GZIP_MIN, MarketoSandbox, seed_values
from sandbox.marketo._options import MarketoOptions, add_arguments, options_from_args, parse_fault_spec

__all__ = [
    "GZIP_MIN",
    "MarketoOptions",
    "MarketoSandbox",
    "add_arguments",
    "options_from_args",
    "parse_fault_spec",
    "seed_values",
]
