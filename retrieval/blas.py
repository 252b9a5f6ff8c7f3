"""numpy's BLAS on one thread around a block of work, safely from any thread.

Small matrix products (a text query's encoder layers, a batch of queries against 100,000
vectors) gain little from a second BLAS thread and, on a busy 2-core machine, lose a lot:
OpenBLAS's second thread waits for a core that other jobs hold, so a query can take many
times longer with two threads than with one (figures in
docs/serving-speed.md#what-a-warm-query-does-now). FAISS and torch bring their own thread
pools and keep their settings.
"""

from __future__ import annotations

import ctypes
import os
import threading


class OneBlasThread:
    """numpy's BLAS on one thread while any `with OneBlasThread():` block runs, in any thread.

    The setting is process-wide, so blocks are counted: the first one in sets it, the last one
    out restores it, and overlapping blocks in several threads cannot leave it changed. With
    numpy's OpenBLAS it is set through ``openblas_set_num_threads_local``: the plain
    ``openblas_set_num_threads`` called from a worker thread (the server encodes on one)
    after the main thread had changed it was ignored here, and two threads still ran. FAISS
    and torch bring their own BLAS and keep their settings.
    """

    _lock = threading.Lock()
    _loaded = False
    _setters: list = []  # (read the current count, set a count) per numpy BLAS library
    _active = 0
    _saved: list = []

    @classmethod
    def _load(cls) -> None:
        from threadpoolctl import ThreadpoolController

        for lib in ThreadpoolController().lib_controllers:
            if lib.user_api != "blas" or f"{os.sep}numpy" not in lib.filepath:
                continue
            local = getattr(lib.dynlib, "openblas_set_num_threads_local", None) if lib.internal_api == "openblas" else None
            if local is not None:
                local.argtypes, local.restype = [ctypes.c_int], ctypes.c_int
            cls._setters.append((lambda lib=lib: lib.num_threads, local or lib.set_num_threads))
        cls._loaded = True

    def __enter__(self):
        cls = OneBlasThread
        with cls._lock:
            if not cls._loaded:
                cls._load()
            if cls._active == 0:
                cls._saved = [(setter, read()) for read, setter in cls._setters]
                for setter, _ in cls._saved:
                    setter(1)
            cls._active += 1
        return self

    def __exit__(self, *exc) -> None:
        cls = OneBlasThread
        with cls._lock:
            cls._active -= 1
            if cls._active == 0:
                for setter, threads in cls._saved:
                    setter(threads)
