"""A stand-in for Google's OpenID Connect issuer in tests: an RSA key pair, its JWKS served over real HTTP on
127.0.0.1 (stdlib http.server in a thread), and ID tokens signed with PyJWT exactly as Google signs them (RS256,
`kid` in the header, iss/aud/sub/email/email_verified/iat/exp claims)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

CLIENT_ID = "1234-axiom.apps.googleusercontent.com"
KID = "test-key-1"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk_of(key: rsa.RSAPrivateKey, kid: str) -> dict:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


class FakeGoogleIssuer:
    """Serves {"keys": [...]} at `certs_url` while running (a context manager); `fetches` counts GETs."""

    def __init__(self) -> None:
        self.key = rsa_key()
        self.keys = [jwk_of(self.key, KID)]
        self.fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                issuer.fetches += 1
                body = json.dumps({"keys": issuer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def certs_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/oauth2/v3/certs"

    def __enter__(self) -> FakeGoogleIssuer:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def token(self, email: str = "alice@hospital.org", *, key=None, kid: str = KID, algorithm: str = "RS256",
              lifetime: int = 3600, issued: float | None = None, **claims) -> str:
        """An ID token for `email`; keyword arguments override or add claims (value None removes one)."""
        now = int(time.time() if issued is None else issued)
        payload = {"iss": "https://accounts.google.com", "aud": CLIENT_ID, "azp": CLIENT_ID, "sub": "1098765",
                   "email": email, "email_verified": True, "iat": now, "exp": now + lifetime, **claims}
        payload = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode(payload, key if key is not None else self.key, algorithm=algorithm, headers={"kid": kid})
