"""``python -m sync_core check``: validate the setup, one line per check with a fix (issue 19)."""
