"""A local stand-in for the Azure Functions host (``python -m sync_core host``), for development and
end-to-end tests only: ``.funcignore`` keeps it out of the deployed package and no production code
imports it.
"""
