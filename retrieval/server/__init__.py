"""`retrieval serve`: the HTTP API and the web page over the same engine as the CLI.

This subpackage is the only code that imports the web stack (FastAPI, Starlette, uvicorn);
nothing below it imports it. Install it with the ``serve`` extra (scripts/setup.sh does).
"""
