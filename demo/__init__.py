"""The demo run by ``make demo`` (``python -m demo``).

For now (issue 2) it starts Azurite and walks the Table Storage state store through a short,
printed story, exiting non-zero if any step ends differently than it should. A later issue
replaces it with the full sync demo on the sandbox; it stays self-contained in this package.
"""
