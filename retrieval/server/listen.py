"""The HTTP server process: uvicorn around the app, its access log kept free of tokens, and
its connections bounded in time.

uvicorn closes a connection that stays idle after a response (``timeout_keep_alive``), but has
no limit on how long a request's headers may take to arrive: a connection that sends nothing,
or a byte every few seconds, stays open as long as the client likes, and enough of them use
up the process's file descriptors. The protocol here adds that limit (``header_timeout_s``),
counted from the connection's start and again from the end of each response.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from fastapi import FastAPI

from retrieval.server.security import RedactTokens

#: Seconds a client has to send a request's headers, from connecting or from the last response.
HEADER_TIMEOUT_S = 10.0
#: Seconds an idle keep-alive connection stays open after a response.
KEEP_ALIVE_S = 5
#: Open connections and requests in progress at most; above it new requests get 503.
MAX_CONNECTIONS = 1000


def listener(
    app: FastAPI, host: str, port: int, header_timeout_s: float = HEADER_TIMEOUT_S, keep_alive_s: int = KEEP_ALIVE_S,
) -> uvicorn.Server:
    """A uvicorn server for `app` on host:port, ready to ``run()``."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", server_header=False, http=_protocol(header_timeout_s),
        timeout_keep_alive=keep_alive_s, limit_concurrency=MAX_CONNECTIONS,
    )
    # uvicorn has set its loggers up by now; the filter keeps a token in a URL out of the access log.
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
    return uvicorn.Server(config)


def _protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11) with a deadline for request headers."""
    base: type[Any]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # httptools is optional (the serve extra installs it)
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    def arm(self: Any) -> None:
        disarm(self)
        self._header_deadline = self.loop.call_later(header_timeout_s, expire, self)

    def disarm(self: Any) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._header_deadline = None

    def expire(self: Any) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self: Any, transport: asyncio.Transport) -> None:
        base.connection_made(self, transport)
        arm(self)

    def data_received(self: Any, data: bytes) -> None:
        cycle = self.cycle
        base.data_received(self, data)
        if self.cycle is not cycle:  # a request's headers are complete: its cycle has begun
            disarm(self)

    def on_response_complete(self: Any) -> None:
        cycle = self.cycle
        base.on_response_complete(self)
        # Idle now (no pipelined request started): the next request's headers are due in time.
        if self.cycle is cycle and self.timeout_keep_alive_task is not None:
            arm(self)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        disarm(self)
        base.connection_lost(self, exc)

    methods = {"connection_made": connection_made, "data_received": data_received,
               "on_response_complete": on_response_complete, "connection_lost": connection_lost}
    return type(f"{base.__name__}WithHeaderDeadline", (base,), methods)
