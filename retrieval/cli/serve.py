"""`retrieval serve`: the HTTP API and the web page (needs the `serve` extra)."""

from __future__ import annotations

import errno
import re
import socket

import click

from retrieval.cli.app import main
from retrieval.cli.options import INDEX_HELP


@main.command()
@click.option("--index", "indexes", multiple=True, help=INDEX_HELP + " Repeat to serve several. [default: default]")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs a token (one is made if not given).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option("--token", envvar="RETRIEVAL_TOKEN", default=None,
              help="Require this token (Authorization: Bearer, or the cookie set by the page). Also $RETRIEVAL_TOKEN.")
@click.option("--cors-origin", "cors_origins", multiple=True, help="Allow cross-origin requests from this origin (repeatable).")
@click.option("--absolute-paths", is_flag=True, help="Show absolute file paths instead of paths relative to the indexed folder.")
@click.option("--max-upload-mb", default=20.0, show_default=True, type=click.FloatRange(0.01, 1024), help="Largest query image accepted.")
@click.option("--batch-window-ms", default=2.0, show_default=True, type=click.FloatRange(0, 1000),
              help="Text queries queued while the engine is busy are encoded and searched as one batch; after a "
                   "shared batch a lone query waits up to this long for company. 0 turns batching off.")
def serve(indexes, host, port, token, cors_origins, absolute_paths, max_upload_mb, batch_window_ms):
    """Serve indexes over HTTP: a search page at / and a JSON API (see docs/server.md).

    Binds 127.0.0.1 by default. On any other address a token is required; without
    --token one is generated and the URL to open is printed.

    \b
    Example:
        retrieval serve --index demo
        retrieval serve --index photos --index ./other/index --port 8080
        retrieval serve --index photos --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    try:
        from retrieval.server.app import ServerSettings, create_app
        from retrieval.server.listen import listener
        from retrieval.server.security import is_loopback, new_token
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"the server needs {exc.name}: install it with  pip install 'retrieval[serve]'  (or bash scripts/setup.sh)"
        ) from None

    if token is not None and not re.fullmatch(r"[A-Za-z0-9._~+/=-]{8,}", token):
        raise click.BadParameter("use at least 8 letters, digits or ._~+/=- (it goes in a cookie)", param_hint="--token")
    if not is_loopback(host) and not token:
        token = new_token()
        click.echo("no --token given for a non-loopback address: generated one for this run", err=True)
    settings = ServerSettings(
        indexes=list(indexes) or ["default"], host=host, port=port, token=token, cors_origins=list(cors_origins),
        absolute_paths=absolute_paths, max_upload_mb=max_upload_mb, batch_window_ms=batch_window_ms,
    )
    app = create_app(settings)
    # Bound before the model loads: a busy port is one line, and "serving" is never claimed.
    sock = _bind(host, port)
    port = sock.getsockname()[1]  # the port chosen for --port 0
    app.state.query_thread.call(app.state.library.warm)  # the model loads while uvicorn starts
    server = listener(app, host, port)
    shown = "localhost" if is_loopback(host) else f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    click.echo(f"serving {', '.join(app.state.library.names)} at {url}", err=True)
    if token:
        click.echo(f"open this URL to sign in: {url}?token={token}", err=True)
    server.run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, as uvicorn would bind it, or a one-line error saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart is not refused for TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(_why_not(exc, host, port)) from None
    sock.set_inheritable(True)
    return sock


def _why_not(exc: OSError, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use: stop what holds it, or choose another --port"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"not allowed to listen on port {port} on {host}: ports below 1024 need privileges; choose another --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine: choose another --host"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
