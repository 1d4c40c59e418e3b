"""One process's wiring, built once from the settings (Microsoft's guidance for Functions): the
``httpx`` clients, credentials, the API clients and the state store. Everything else takes what
it needs as arguments.
"""
