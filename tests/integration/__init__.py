"""Integration tests: the API clients against the sandbox servers over real HTTP."""
