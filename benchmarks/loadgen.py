"""A light HTTP load generator for benchmarks/bench_server.py, run in a process of its own.

On a 2-core machine the client shares the cores with the server it measures, so it must
cost little: each simulated client is one keep-alive connection driven by raw asyncio
streams (a hand-written HTTP/1.1 GET, the response read by its Content-Length), with
uvloop when installed. The same code runs 1, 8 and 64 clients, so the comparison is fair,
and it reports its own CPU time per request, so a reader can see what it took.

    echo '{"port": 8000, "index": "exact", "texts": ["a dog"], "clients": 1}' | python -m benchmarks.loadgen

Input (JSON on stdin): port, index, texts (each sent once, in order, taken by whichever
client is free), clients, k (10), repeat (send each text once untimed first, so the timed
request is a cache hit), route ("search": ``GET /api/search?q=...``, the default; "knn":
clip-retrieval's ``POST /knn-service`` with ``{"text", "indice_name", "num_images"}``). Output (JSON on stdout): latencies_ms (in text order), errors,
first_errors, wall_s, cpu_s (this process).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlencode


async def _request(reader, writer, target: bytes) -> tuple[int, bytes]:
    writer.write(target)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def run(port: int, index: str, texts: list[str], clients: int, k: int = 10, repeat: bool = False,
              route: str = "search") -> dict:
    host = f"127.0.0.1:{port}".encode()
    todo = list(enumerate(texts))[::-1]
    latencies: list[float | None] = [None] * len(texts)
    errors, first_errors = 0, []
    if route not in ("search", "knn"):
        raise SystemExit(f"route must be 'search' or 'knn', not {route!r}")

    def target(text: str) -> bytes:
        if route == "knn":
            body = json.dumps({"text": text, "indice_name": index, "num_images": k}).encode()
            return (b"POST /knn-service HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        query = urlencode({"q": text, "index": index, "k": k}).encode()
        return b"GET /api/search?" + query + b" HTTP/1.1\r\nHost: " + host + b"\r\nAccept: */*\r\n\r\n"

    def complete(body: bytes) -> bool:
        """k results: a page's "results" (/api/search) or the list itself (/knn-service)."""
        answer = json.loads(body)
        return len(answer if route == "knn" else answer["results"]) == k

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while todo:
                i, text = todo.pop()
                request = target(text)
                try:
                    if repeat:
                        await _request(reader, writer, request)
                    t = time.perf_counter()
                    status, body = await _request(reader, writer, request)
                    latencies[i] = (time.perf_counter() - t) * 1000
                    ok = status == 200 and complete(body)
                except (OSError, asyncio.IncompleteReadError, ValueError, KeyError) as exc:
                    ok, status, body = False, 0, repr(exc).encode()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                if not ok:
                    errors += 1
                    if len(first_errors) < 5:
                        first_errors.append(f"{status} {body[:200]!r}")
        finally:
            writer.close()

    # A warm-up request per connection is not needed: the server is warmed by the caller.
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - start
    return {"latencies_ms": latencies, "errors": errors, "first_errors": first_errors, "wall_s": wall}


def main() -> None:
    spec = json.load(sys.stdin)
    try:
        from uvloop import run as loop_run
    except ImportError:
        loop_run = asyncio.run
    cpu = time.process_time()
    out = loop_run(run(spec["port"], spec["index"], spec["texts"], spec.get("clients", 1), spec.get("k", 10),
                       spec.get("repeat", False), spec.get("route", "search")))
    out["cpu_s"] = time.process_time() - cpu
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
