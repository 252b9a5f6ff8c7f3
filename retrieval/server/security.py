"""The server's guard: Host check, token, body caps, security headers, and a log filter for tokens.

One pure ASGI middleware in front of every route:
- A request with two Host headers, or one that is not ``name[:port]``, is refused (400, as
  RFC 9110 section 7.2 asks); on a loopback bind, a request whose Host is not localhost,
  127.0.0.1 or [::1] is refused too (421: a web page on another site cannot reach us through
  DNS rebinding).
- With a token, every route except the page shell, its assets, the login and the health
  check needs ``Authorization: Bearer T`` or the ``retrieval_token`` cookie (HttpOnly,
  SameSite=Strict). ``/?token=T`` (the URL printed at start-up) sets the cookie and
  redirects to ``/`` without the token, so the token stays out of history and logs.
- Each route's body is capped at what the route needs (:class:`BodyCaps`): 413 on the
  declared length before anything is read, and while a chunked body arrives.
- Files (originals, thumbnails) are refused to other sites' pages (``Sec-Fetch-Site:
  cross-site`` or ``same-site``: 403), and every response says ``Cross-Origin-Resource-Policy:
  same-origin``, so a page elsewhere cannot embed our photos (unless ``--cors-origin`` names one).
- HEAD is answered on every GET route as the GET would be, without the body.
- Every response carries nosniff, a strict Content-Security-Policy, no-referrer and
  frame-ancestors 'none'.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retrieval.errors import RetrievalError

COOKIE = "retrieval_token"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
#: Reachable without the token: the page shell and its assets carry no data.
PUBLIC_PATHS = frozenset({"/", "/favicon.ico", "/api/login", "/api/logout", "/api/health"})
PUBLIC_PREFIXES = ("/static/",)
#: Routes that answer with the bytes of a picture: not for other sites' pages.
FILE_PREFIXES = ("/api/image/", "/api/thumb/")
#: Sec-Fetch-Site values of a request made by a page of another origin.
FOREIGN_SITES = frozenset({"cross-site", "same-site"})

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", CSP.encode()),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


#: A Host header: a name or IPv4 address, or an IPv6 address in brackets, and an optional port.
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::[0-9]{1,5})?")


def host_name(value: str) -> str | None:
    """The host part of a Host header: 'example.org:8000' -> 'example.org', '[::1]:80' -> '::1';
    None when the value is not ``host[:port]`` ('[::1]evil.com', 'localhost:80@evil.com')."""
    value = value.strip().lower()
    if not value:  # no name at all: foreign to a loopback bind, as any other name
        return ""
    match = _HOST.fullmatch(value)
    if match is None:
        return None
    return match["v6"] if match["v6"] is not None else match["name"]


def token_matches(given: str | None, token: str) -> bool:
    if not given:
        return False
    return hmac.compare_digest(given.encode(), token.encode())


def cookie_header(token: str | None) -> bytes:
    if token is None:
        return f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0".encode()
    return f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict".encode()


class TooLarge(RetrievalError):
    """A request body or upload over the size limit (HTTP 413)."""


@dataclass(frozen=True)
class BodyCap:
    """The largest body a route takes, and what a client is told above it."""

    limit: int
    message: str


@dataclass(frozen=True)
class BodyCaps:
    """Body caps by exact path; every other path takes `default`."""

    routes: dict[str, BodyCap] = field(default_factory=dict)
    default: BodyCap = BodyCap(4 * 1024, "request body over 4 KB: this route takes none")

    def for_path(self, path: str) -> BodyCap:
        return self.routes.get(path, self.default)


class Guard:
    """ASGI middleware: host check, token check, body size caps, files kept to this origin, HEAD, security headers."""

    def __init__(
        self, app: ASGIApp, *, loopback: bool, token: str | None, caps: BodyCaps | None = None,
        extra_hosts: frozenset[str] = frozenset(), cross_origin_files: bool = False,
    ) -> None:
        self.app = app
        self.loopback = loopback
        self.token = token
        self.caps = caps or BodyCaps()
        self.hosts = LOOPBACK_HOSTS | extra_hosts
        #: --cors-origin named a site: its pages may show our pictures (and so may any other site's).
        self.cross_origin_files = cross_origin_files
        self.headers = (*HEADERS, (b"cross-origin-resource-policy", b"cross-origin" if cross_origin_files else b"same-origin"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        head = scope["method"] == "HEAD"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            elif head and message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": b""}
            await send(message)

        if head:  # every GET route answers HEAD: the same status and headers, no body
            scope = {**scope, "method": "GET"}
        # Starlette reads the headers as the routes will (the first of repeated ones counts), and the cookies.
        request = HTTPConnection(scope)
        headers = request.headers
        hosts = [value for name, value in scope["headers"] if name == b"host"]
        host = host_name(hosts[0].decode("latin-1")) if len(hosts) == 1 else None
        if host is None:  # missing, repeated or not host[:port]: which host was meant is unclear
            return await _refuse(scope, receive, send_with_headers, 400,
                                 "give one Host header of the form name[:port]" if hosts else "give a Host header")
        if self.loopback and host not in self.hosts:
            return await _refuse(scope, receive, send_with_headers, 421,
                                 "this server answers only to localhost, 127.0.0.1 or [::1]")
        path = scope["path"]
        if (not self.cross_origin_files and path.startswith(FILE_PREFIXES)
                and headers.get("sec-fetch-site", "").lower() in FOREIGN_SITES):
            return await _refuse(scope, receive, send_with_headers, 403,
                                 "pictures are served to this server's own pages only")
        token = self.token
        if token is not None:
            if path == "/" and b"token=" in scope.get("query_string", b""):
                return await _redeem(token, scope, receive, send_with_headers)
            # A CORS preflight never carries credentials; the CORS middleware inside answers it.
            preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
            public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or preflight
            if not public and not _authorized(token, headers.get("authorization", ""), request.cookies.get(COOKIE)):
                return await _refuse(scope, receive, send_with_headers, 401,
                                     "missing or wrong token: send 'Authorization: Bearer TOKEN' "
                                     "or open the URL printed when the server started", {"www-authenticate": "Bearer"})
        cap = self.caps.for_path(path)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap.limit:
            return await _refuse(scope, receive, send_with_headers, 413, cap.message)
        await self.app(scope, _capped(receive, cap), send_with_headers)


def _capped(receive: Receive, cap: BodyCap) -> Receive:
    """`receive` that stops a body (chunked, or longer than declared) at the cap: no route holds more in memory."""
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > cap.limit:
                raise TooLarge(cap.message)
        return message

    return capped


def _authorized(token: str, auth: str, cookie: str | None) -> bool:
    """The bearer token or the cookie is right."""
    if auth[:7].lower() == "bearer " and token_matches(auth[7:].strip(), token):
        return True
    return token_matches(cookie, token)


async def _redeem(token: str, scope: Scope, receive: Receive, send: Send) -> None:
    """``/?token=T``: set the cookie when T is right, and drop the token from the URL either way."""
    params = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    given = next((v for k, v in params if k == "token"), None)
    rest = urlencode([(k, v) for k, v in params if k != "token"])
    response = RedirectResponse("/?" + rest if rest else "/", status_code=303, headers={"cache-control": "no-store"})
    if token_matches(given, token):
        response.raw_headers.append((b"set-cookie", cookie_header(token)))
    await response(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str,
                  headers: dict[str, str] | None = None) -> None:
    """Answer with ``{"error": message}`` before any route runs."""
    await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)


_TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"]*", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Keeps a token out of access logs, whatever a client put in a query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_IN_URL.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = _TOKEN_IN_URL.sub(r"\1[redacted]", record.msg)
        return True
