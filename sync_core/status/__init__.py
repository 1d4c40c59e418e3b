"""The status view an admin reads: ``models`` (typed), ``view`` (built from the state store; JSON,
text, the command; the setup checks on demand), ``html`` (the page and its buttons), ``actions``
(the buttons' HTTP half: ``POST /api/status/actions/{action}`` into ``cycle.operate``).
"""
