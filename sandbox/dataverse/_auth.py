"""Tokens: an Entra-shaped client-credentials endpoint and the bearer check on the Web API.

Issued tokens are JWT-shaped (header.payload.signature, HMAC-signed with a per-process key) so
clients that peek at ``exp`` work and nothing needs storing; they are accepted until they
expire on the options' clock. The static token (``sandbox-token``) is accepted always. Any
tenant id in the token URL is fine, as design §7 says. Nothing here logs a secret or token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any

from sandbox._http import Request, Response
from sandbox.dataverse._options import DataverseOptions

SANDBOX_TENANT = "8d9f5c1e-1b71-4b7a-9f0e-5a5e2f1c00aa"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Tokens:
    def __init__(self, options: DataverseOptions) -> None:
        self.options = options
        self._key = os.urandom(32)

    # ------------------------------------------------------------------ token endpoint

    def issue(self, request: Request, tenant: str) -> Response:
        if request.method != "POST":
            return _entra_error(
                405, "invalid_request", 900561, "AADSTS900561: The endpoint only accepts POST requests."
            )
        form = (
            {k: v[0] for k, v in request.form().items()}
            if request.content_type.endswith("x-www-form-urlencoded")
            else {}
        )
        for name in ("grant_type", "client_id", "scope"):
            if not form.get(name):
                return _entra_error(
                    400,
                    "invalid_request",
                    900144,
                    f"AADSTS900144: The request body must contain the following parameter: '{name}'.",
                )
        if form["grant_type"] != "client_credentials":
            return _entra_error(
                400,
                "unsupported_grant_type",
                70003,
                f"AADSTS70003: The app requested an unsupported grant type '{form['grant_type']}'.",
            )
        if form["client_id"] != self.options.client_id:
            return _entra_error(
                401,
                "invalid_client",
                700016,
                f"AADSTS700016: Application with identifier '{form['client_id']}' was not found in the directory "
                f"'{tenant}'.",
            )
        if not hmac.compare_digest(form.get("client_secret", "").encode(), self.options.client_secret.encode()):
            return _entra_error(
                401,
                "invalid_client",
                7000215,
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the "
                f"client secret value, not the client secret ID, for a secret added to app '{form['client_id']}'.",
            )
        if not form["scope"].endswith("/.default"):
            return _entra_error(
                400,
                "invalid_scope",
                1002012,
                f"AADSTS1002012: The provided value for scope {form['scope']} is not valid. Client credential flows "
                "must have a scope value with /.default suffixed to the resource identifier (application ID URI).",
            )
        now = int(self.options.clock())
        ttl = self.options.token_ttl
        claims = {
            "aud": form["scope"][: -len("/.default")],
            "iss": f"https://sts.windows.net/{tenant}/",
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "appid": form["client_id"],
            "oid": self.options.integration_user_id,
            "tid": tenant,
            "jti": str(uuid.uuid4()),
        }
        body = {"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl, "access_token": self._sign(claims)}
        return Response.json(
            body, content_type="application/json; charset=utf-8", headers=[("Cache-Control", "no-store, no-cache")]
        )

    @staticmethod
    def discovery(request: Request, tenant: str) -> Response:
        """The tenant's OpenID configuration, so MSAL-based credentials can use this sandbox as authority."""
        base = f"{request.base_url}/{tenant}"
        body = {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "issuer": f"{base}/v2.0",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "tenant_region_scope": "NA",
        }
        return Response.json(body, content_type="application/json; charset=utf-8")

    def _sign(self, claims: dict[str, Any]) -> str:
        head = _b64(json.dumps({"typ": "JWT", "alg": "HS256"}).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._key, f"{head}.{payload}".encode(), hashlib.sha256).digest()
        return f"{head}.{payload}.{_b64(signature)}"

    # ------------------------------------------------------------------ bearer check

    def principal(self, request: Request) -> str | None:
        """The user a request acts as ("client:<id>" or "static"), or None when its token is not valid."""
        header = request.header("Authorization") or ""
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        static = self.options.static_token
        if static and hmac.compare_digest(token.encode(), static.encode()):
            return "static"
        parts = token.split(".")
        if len(parts) != 3:
            return None
        expected = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(_unb64(parts[2]), expected):
                return None
            claims = json.loads(_unb64(parts[1]))
        except (ValueError, json.JSONDecodeError):
            return None
        if not isinstance(claims, dict) or float(claims.get("exp", 0)) <= self.options.clock():
            return None
        return f"client:{claims.get('appid')}"

    @staticmethod
    def challenge(request: Request, *, had_token: bool) -> Response:
        """401 with the ``WWW-Authenticate`` header Dataverse sends (pointing at this sandbox's authority)."""
        parts = []
        if had_token:
            parts.append("error=invalid_token, error_description=Error during token validation!")
        parts.append(f"authorization_uri={request.base_url}/{SANDBOX_TENANT}/oauth2/authorize")
        parts.append(f"resource_id={request.base_url}/")
        return Response(status=401, headers=[("WWW-Authenticate", "Bearer " + ", ".join(parts))])


def _entra_error(status: int, error: str, code: int, description: str) -> Response:
    trace = str(uuid.uuid4())
    correlation = str(uuid.uuid4())
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    body = {
        "error": error,
        "error_description": f"{description}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}"
        f"\r\nTimestamp: {stamp}",
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }
    return Response.json(body, status, content_type="application/json; charset=utf-8")
