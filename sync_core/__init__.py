"""Marketo ⇄ Dynamics 365 sync: the shared core behind the Azure Functions in ``function_app.py``.

A functional core (field map, merge, validation, planning: no I/O) and a thin shell (engine,
API clients, state store) that does the I/O. Never imports ``sandbox``.
"""

__version__ = "0.1.0"
