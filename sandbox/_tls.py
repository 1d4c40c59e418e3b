"""A throw-away certificate authority for ``--tls``: some clients insist on https.

The CA and the server certificate (for 127.0.0.1 and localhost) are made in memory with
``trustme``; the CA is written to a PEM file the caller hands to its client
(``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE`` or ``httpx.Client(verify=...)``).
"""

from __future__ import annotations

import ssl
from pathlib import Path


class LocalCA:
    def __init__(self) -> None:
        import trustme  # imported here: only --tls needs it

        self._ca = trustme.CA()
        self._cert = self._ca.issue_cert("127.0.0.1", "localhost")

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._cert.configure_cert(context)
        return context

    def write_ca_bundle(self, path: Path) -> Path:
        self._ca.cert_pem.write_to_path(str(path))
        return path
