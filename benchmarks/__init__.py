"""Benchmarks of the retrieval engine: each module measures one thing and writes its figures.

Run one from the repository root as a module, so that both ``retrieval`` and this package
import without path tricks::

    .venv/bin/python -m benchmarks.bench_search --help
    .venv/bin/python -m benchmarks.bench_search --quick            # smallest sizes: proves it runs
    .venv/bin/python -m benchmarks.bench_search --sizes 100000 --out bench-out/search.json

Every benchmark is a click command built with ``benchmarks.harness.command``: its help comes
from its module docstring, ``--out`` names its JSON report (a markdown table is written
beside it), and ``--quick`` (where offered) swaps the default sizes for a smoke-test size.
What is shared between benchmarks (machine description, load average, timing, percentiles,
synthetic clustered vectors, a filled catalog, the report) lives in ``benchmarks.harness``.
The figures these runs produced, with their dates and machines, are in docs/.
"""
