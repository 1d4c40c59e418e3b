"""The status view an admin reads: ``models`` (typed), ``view`` (built from the state store; JSON,
text, the command), ``html`` (the page).
"""
