"""A stand-in for Google Cloud Healthcare in tests, as real HTTP servers on 127.0.0.1 (stdlib http.server threads):

- GoogleTokenServer: the OAuth 2.0 token endpoint of a service account. It takes the JWT bearer grant google-auth
  sends (RFC 7523 2.1: `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`), verifies the
  assertion's RS256 signature with the service account's public key and its claims (iss = the account's email,
  aud = Google's token endpoint https://oauth2.googleapis.com/token — what Google's "Using OAuth 2.0 for Server to
  Server Applications" prescribes and google-auth sends whatever the key's token_uri —, scope = the Cloud Healthcare
  scope, iat/exp; RFC 7523 3), and answers an access token with
  `expires_in` (RFC 6749 5.1), or `invalid_grant` (RFC 6749 5.2) for anything else.
- HealthcareProxy: the Cloud Healthcare API in front of a real Orthanc's DICOMweb root: requests under
  /v1/projects/{P}/locations/{L}/datasets/{D}/dicomStores/{S}/dicomWeb/ carrying `Authorization: Bearer <a live token
  of that token server>` are forwarded to Orthanc; any other is refused with 401 (RFC 6750 3.1).
- service_account_key(): a service-account key file (the JSON Google issues) whose `token_uri` is the token server.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 2.1
HEALTHCARE_SCOPE = "https://www.googleapis.com/auth/cloud-healthcare"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
CLIENT_EMAIL = "axiom-reader@test-project.iam.gserviceaccount.com"
STORE = ("test-project", "europe-west4", "imaging", "archive")  # project, location, dataset, DICOM store


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_of(key: rsa.RSAPrivateKey) -> str:
    """The key as PKCS#8 PEM, as Google writes `private_key` in a service-account key file."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def service_account_key(path: Path, key: rsa.RSAPrivateKey, token_uri: str, *, key_id: str = "key-1") -> Path:
    """Write a service-account key file (the fields of the JSON key Google issues) to `path`."""
    path.write_text(json.dumps({
        "type": "service_account", "project_id": STORE[0], "private_key_id": key_id, "private_key": pem_of(key),
        "client_email": CLIENT_EMAIL, "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_uri,
        "universe_domain": "googleapis.com",
    }))
    return path


class _Server:
    """A ThreadingHTTPServer on a free loopback port, served by a daemon thread while in a `with` block."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class GoogleTokenServer(_Server):
    """The token endpoint of the service account whose public key is `key`; see the module doc.

    `expires_in` is the lifetime of the tokens it issues and `disabled` (RFC 6749 5.2 `invalid_grant` for every
    grant: an account disabled or its key deleted) can be set between requests; `grants` counts the tokens issued,
    `refusals` the grants refused (with `last_refusal` saying why); `live(token)` is True while an issued token has
    not expired."""

    def __init__(self, key: rsa.RSAPrivateKey, *, key_id: str = "key-1", expires_in: int = 3600) -> None:
        self.public_key, self.key_id, self.expires_in = key.public_key(), key_id, expires_in
        self.disabled = False
        self.grants = self.refusals = 0
        self.last_refusal = ""
        self.issued: dict[str, float] = {}  # token -> when it expires (time.time())
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode("ascii"))
                status, body = server.answer(self.path, form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")  # RFC 6749 5.1
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args) -> None:
                pass

        super().__init__(Handler)

    @property
    def token_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def answer(self, path: str, form: dict[str, list[str]]) -> tuple[int, dict]:
        """(status, JSON body) for one token request."""
        try:
            if path != "/token":
                raise ValueError(f"no token endpoint at {path}")
            if self.disabled:
                raise ValueError("the service account is disabled")
            if form.get("grant_type") != [JWT_BEARER_GRANT]:
                raise ValueError(f"grant_type {form.get('grant_type')} is not the JWT bearer grant")
            self.check_assertion((form.get("assertion") or [""])[0])
        except (ValueError, jwt.PyJWTError) as exc:
            with self._lock:
                self.refusals += 1
                self.last_refusal = str(exc)
            return 400, {"error": "invalid_grant", "error_description": f"assertion refused: {exc}"}
        token = "ya29.test-" + secrets.token_urlsafe(32)
        with self._lock:
            self.grants += 1
            self.issued[token] = time.time() + self.expires_in
            expires_in = self.expires_in
        return 200, {"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}

    def check_assertion(self, assertion: str) -> None:
        """ValueError / jwt.PyJWTError unless the assertion is an RS256 JWT of the account for Google's token
        endpoint and the Cloud Healthcare scope (RFC 7523 3: iss, aud, exp, iat)."""
        header = jwt.get_unverified_header(assertion)
        if header.get("alg") != "RS256" or header.get("kid") != self.key_id:
            raise ValueError(f"header {header} is not RS256 with kid {self.key_id}")
        claims = jwt.decode(assertion, self.public_key, algorithms=["RS256"], audience=GOOGLE_TOKEN_AUDIENCE,
                            issuer=CLIENT_EMAIL, options={"require": ["iss", "aud", "exp", "iat", "scope"]})
        if claims["scope"].split() != [HEALTHCARE_SCOPE]:
            raise ValueError(f"scope {claims['scope']!r} is not {HEALTHCARE_SCOPE}")
        if claims["exp"] - claims["iat"] > 3600:
            raise ValueError("an assertion lives at most an hour")

    def live(self, token: str) -> bool:
        with self._lock:
            return self.issued.get(token, 0.0) > time.time()


class HealthcareProxy(_Server):
    """Cloud Healthcare's DICOMweb paths of STORE in front of `dicomweb_url` (Orthanc's /dicom-web), admitting only
    live tokens of `tokens`; `forwarded` and `refused` count the requests, `authorizations` keeps every
    Authorization header seen."""

    def __init__(self, dicomweb_url: str, tokens: GoogleTokenServer) -> None:
        self.target, self.tokens = dicomweb_url.rstrip("/"), tokens
        self.forwarded = self.refused = 0
        self.authorizations: list[str] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=30.0)
        project, location, dataset, store = STORE
        prefix = f"/v1/projects/{project}/locations/{location}/datasets/{dataset}/dicomStores/{store}/dicomWeb/"
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                authorization = self.headers.get("Authorization", "")
                with proxy._lock:
                    proxy.authorizations.append(authorization)
                scheme, _, token = authorization.partition(" ")
                if scheme != "Bearer" or not proxy.tokens.live(token):
                    proxy.count("refused")
                    return self.reply(401, b'{"error": {"code": 401, "status": "UNAUTHENTICATED"}}',
                                      {"Content-Type": "application/json", "WWW-Authenticate": 'Bearer realm="test"'})
                if not self.path.startswith(prefix):
                    return self.reply(404, b"not a DICOMweb path of the test store", {"Content-Type": "text/plain"})
                proxy.count("forwarded")
                upstream = proxy._client.get(proxy.target + "/" + self.path[len(prefix):],
                                             headers={"Accept": self.headers.get("Accept", "*/*")})
                keep = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "warning")}
                self.reply(upstream.status_code, upstream.content, keep)

            def reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        super().__init__(Handler)

    @property
    def api_root(self) -> str:
        """What AXIOM_GOOGLE_HEALTHCARE_URL points at."""
        return f"http://127.0.0.1:{self.port}/v1"

    def count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._client.close()
