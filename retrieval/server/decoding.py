"""Decoding for the server: the formats whose C library prints to stderr, in a process of their own.

libtiff reports odd tags and damaged data by printing from C to file descriptor 2, where Pillow
cannot catch it. The indexer's workers point that descriptor at a scratch file around each
decode (:func:`retrieval.media.decode.decoder_messages`); a server cannot, because all its threads
share the descriptor: uvicorn's log and other requests' errors would vanish into the scratch file
meanwhile. So :class:`Decoders` sends those formats (TIFF; and EPS, whose Ghostscript prints too)
to one worker process that runs ``decoder_messages`` around each file and sends back the result
with what was said, which is logged at INFO naming the file. Formats whose decoders keep quiet
(JPEG, PNG, WebP, GIF...) decode in this process as before: no round trip, and Pillow speaks for
them only through Python's warnings, which are logged the same way.

The worker also keeps a C decoder's crash or endless loop on a hostile upload or a damaged file
out of the server: that file's request gets a one-line 422 (:class:`DecoderFailed`), and the next
file starts a fresh worker. The worker starts on the first such file, not with the server.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from PIL import TiffImagePlugin

from retrieval.errors import RetrievalError
from retrieval.media import decode as media_decode
from retrieval.media.transform import ImageTransform
from retrieval.server import files

log = logging.getLogger(__name__)

#: Seconds one file may take in the worker, counting a fresh worker's start (about 0.3 s).
DECODE_TIMEOUT_S = 30.0
#: How files of the formats decoded in the worker begin: TIFF in either byte order, classic and
#: BigTIFF (and the camera RAW formats built on it), and EPS (text or DOS binary header).
OWN_PROCESS_PREFIXES = (*TiffImagePlugin.PREFIXES, b"%!PS", b"\xc5\xd0\xd3\xc6")


#: What the worker process runs, with its end of the socket pair's descriptor as argument.
WORKER = "import sys; from retrieval.server.decoding import work; work(int(sys.argv[1]))"
#: How the log names an uploaded file.
UPLOAD = "uploaded image"


class DecoderFailed(RetrievalError):
    """The decoding worker crashed or ran out of time on one file (HTTP 422)."""


def prints_in_c(head: bytes) -> bool:
    """Whether a file beginning with `head` is of a format whose decoder prints to stderr from C."""
    return head.startswith(OWN_PROCESS_PREFIXES)


class Decoders:
    """The server's decoding of thumbnails, previews and uploads; one per app, closed with it.

    Thread-safe: files for the worker wait their turn (one at a time, as it is one process).
    """

    def __init__(self, timeout_s: float = DECODE_TIMEOUT_S):
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None

    def thumbnail(self, real: Path, size: int) -> bytes:
        """:func:`retrieval.server.files.make_thumbnail`, in the worker for a format that prints."""
        try:
            with open(real, "rb") as file:
                head = file.read(4)
        except OSError:  # make_thumbnail says so, as for any file it cannot read
            head = b""
        if not prints_in_c(head):
            return files.make_thumbnail(real, size)
        data, _ = self.call(str(real), files.jpeg_of, real, size)
        return data

    def pixels(self, data: bytes, transform: ImageTransform) -> np.ndarray:
        """An uploaded image decoded and preprocessed for `transform` (in the worker for a format
        that prints); what the decoders say is logged. Pillow's exceptions come through as they are."""
        if prints_in_c(data[:4]):
            return self.call(UPLOAD, upload_pixels, data, transform)[0]
        notes: list[str] = []
        try:
            with media_decode.warnings_noted(notes):
                return upload_pixels(data, transform)
        finally:
            _log(UPLOAD, notes)

    def call(self, label: str, fn: Callable[..., Any], *args: Any) -> tuple[Any, list[str]]:
        """``fn(*args)`` in the worker: its result and what the decoders said, which is also
        logged at INFO as ``label: words``. `fn`'s exception is raised here; a crash or a run
        past :attr:`timeout_s` raises :class:`DecoderFailed` naming `label`'s file, and the
        worker is replaced by the next call."""
        name = os.path.basename(label)
        with self._lock:
            conn = self._connection()
            try:
                conn.send((fn, args))
                reply = conn.recv() if conn.poll(self.timeout_s) else None
            except (EOFError, OSError):  # the worker died: EOF where the answer should be
                raise DecoderFailed(f"{name}: its decoder crashed ({self._stop()}); the original can still be downloaded") from None
            if reply is None:
                self._stop(hung=True)
                raise DecoderFailed(f"{name}: decoding took longer than {self.timeout_s:g} s and was stopped")
        ok, value, notes = reply
        _log(label, notes)
        if not ok:
            raise value
        return value, notes

    def close(self) -> None:
        """Stop the worker (a later call starts another)."""
        with self._lock:
            self._stop()

    def _connection(self) -> Connection:
        if self._conn is None or self._process is None or self._process.poll() is not None:
            self._stop()
            # A fresh interpreter, not a fork: forking a process that runs threads (the query
            # thread, uvicorn's, BLAS pools) can copy a lock another thread holds, and the child
            # waits on it forever. Nor multiprocessing's spawn, which re-runs the parent's main
            # script in the child: an app embedded in a script without a __main__ guard would
            # start itself again. It gets this interpreter's import path, as spawn would give.
            ours, theirs = socket.socketpair()
            with theirs:
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
                process = subprocess.Popen(
                    [sys.executable, "-c", WORKER, str(theirs.fileno())], pass_fds=[theirs.fileno()], env=env,
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # stderr: collected around each file
                )
            self._process, self._conn = process, Connection(ours.detach())
        return self._conn

    def _stop(self, hung: bool = False) -> str:
        """End the worker (at once when `hung`; else it ends by itself as its pipe closes); how it ended, in words."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()  # the worker reads the end of its pipe and returns
        if process is None:
            return "not started"
        if not hung:
            try:
                process.wait(2)
            except subprocess.TimeoutExpired:
                pass
        if process.poll() is None:
            process.kill()
        code = process.wait()
        return f"signal {-code}" if code < 0 else f"exit code {code}"


def _log(label: str, notes: list[str]) -> None:
    for note in notes:
        log.info("%s: %s", label, note)


def upload_pixels(data: bytes, transform: ImageTransform) -> np.ndarray:
    """Decode an upload (a JPEG at a reduced size where that still covers the input) and preprocess it."""
    image, _ = media_decode.decode(data, draft_to=media_decode.draft_size(transform))
    return transform(image)


def work(fd: int) -> None:
    """The worker process: run each (fn, args) that comes over socket `fd`, with fd 2 and
    warnings collected, and send back (ok, result or exception, words); return when the server closes it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which stops this
    conn = Connection(fd)
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):  # the server closed the pipe, or is gone
            return
        notes: list[str] = []
        try:
            with media_decode.decoder_messages(notes):
                reply = (True, fn(*args), notes)
        except Exception as exc:  # sent back and raised in the server, as it would have been there
            reply = (False, exc, notes)
        try:
            conn.send(reply)
        except Exception as exc:  # an exception that does not pickle: its words still go
            conn.send((False, RetrievalError(f"{type(exc).__name__}: {reply[1]}"), notes))
