"""The server's guard: Host check, token, security headers, and a log filter for tokens.

One pure ASGI middleware in front of every route:
- On a loopback bind, a request whose Host is not localhost, 127.0.0.1 or [::1] is refused
  (a web page on another site cannot reach us through DNS rebinding).
- With a token, every route except the page shell, its assets, the login and the health
  check needs ``Authorization: Bearer T`` or the ``retrieval_token`` cookie (HttpOnly,
  SameSite=Strict). ``/?token=T`` (the URL printed at start-up) sets the cookie and
  redirects to ``/`` without the token, so the token stays out of history and logs.
- Every response carries nosniff, a strict Content-Security-Policy, no-referrer and
  frame-ancestors 'none'.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import secrets
from urllib.parse import parse_qsl, urlencode

from retrieval.errors import RetrievalError

COOKIE = "retrieval_token"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
#: Reachable without the token: the page shell and its assets carry no data.
PUBLIC_PATHS = frozenset({"/", "/favicon.ico", "/api/login", "/api/logout", "/api/health"})
PUBLIC_PREFIXES = ("/static/",)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", CSP.encode()),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def host_name(value: str) -> str:
    """The host part of a Host header: 'example.org:8000' -> 'example.org', '[::1]:80' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def token_matches(given: str | None, token: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def cookie_header(token: str | None) -> bytes:
    if token is None:
        return f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0".encode()
    return f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict".encode()


class TooLarge(RetrievalError):
    """A request body or upload over the size limit (HTTP 413)."""


class Guard:
    """ASGI middleware: host check, token check, body size cap, security headers."""

    def __init__(
        self, app, *, loopback: bool, token: str | None, max_body: int = 32 * 2**20, too_large: str = "request body too large",
        extra_hosts: frozenset[str] = frozenset(),
    ):
        self.app = app
        self.loopback = loopback
        self.token = token
        self.max_body, self.too_large = max_body, too_large
        self.hosts = LOOPBACK_HOSTS | extra_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + HEADERS
            await send(message)

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if self.loopback and host_name(headers.get("host", "")) not in self.hosts:
            return await _json(send_with_headers, 421, "this server answers only to localhost, 127.0.0.1 or [::1]")
        path = scope["path"]
        if self.token is not None:
            if path == "/" and b"token=" in scope.get("query_string", b""):
                return await self._redeem(scope, send_with_headers)
            # A CORS preflight never carries credentials; the CORS middleware inside answers it.
            preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
            public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or preflight
            if not public and not self._authorized(headers):
                return await _json(send_with_headers, 401, "missing or wrong token: send 'Authorization: Bearer TOKEN' "
                                   "or open the URL printed when the server started", [(b"www-authenticate", b"Bearer")])
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            return await _json(send_with_headers, 413, self.too_large)
        await self.app(scope, self._capped(receive), send_with_headers)

    def _capped(self, receive):
        """`receive` that stops a body (chunked, or longer than declared) at the cap: no route holds more in memory."""
        seen = 0

        async def capped():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise TooLarge(self.too_large)
            return message

        return capped

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and token_matches(auth[7:].strip(), self.token):
            return True
        return token_matches(_cookie(headers.get("cookie", ""), COOKIE), self.token)

    async def _redeem(self, scope, send):
        """``/?token=T``: set the cookie when T is right, and drop the token from the URL either way."""
        params = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        given = next((v for k, v in params if k == "token"), None)
        rest = urlencode([(k, v) for k, v in params if k != "token"])
        headers = [(b"location", ("/?" + rest if rest else "/").encode()), (b"cache-control", b"no-store")]
        if token_matches(given, self.token):
            headers.append((b"set-cookie", cookie_header(self.token)))
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


async def _json(send, status: int, message: str, extra: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"]*", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Keeps a token out of access logs, whatever a client put in a query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_IN_URL.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = _TOKEN_IN_URL.sub(r"\1[redacted]", record.msg)
        return True
