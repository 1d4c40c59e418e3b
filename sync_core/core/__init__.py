"""The pure core: the domain's models, rules and conversions (field map, merge, matching, validation,
the run report, schedules, the error tree). No I/O and no clock reads; imports nothing else of the
project (held by the import contract in pyproject.toml).
"""
