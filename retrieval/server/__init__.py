"""`retrieval serve`: the HTTP API and the web page, over the same indexes and searches as the CLI.

Owns: ``app`` (routes, schemas, error handlers, middleware order), ``library`` (the served
indexes and the searches routes ask for), ``batcher`` (the query thread that makes every
catalog, model and FAISS call, and its micro-batching), ``security`` (Host check, token,
body cap, security headers), ``files`` (originals and thumbnails by id), ``decoding`` (the
process that decodes TIFF, whose libtiff prints to stderr, and what it says), ``clip_compat``
(clip-retrieval's routes), ``listen`` (uvicorn around the app) and ``static/`` (the page).

May import: :mod:`retrieval.api` and the layers under it (search, storage, errors), and the web
stack (FastAPI, Starlette, pydantic, uvicorn), which no other package imports. Only
``retrieval.cli.serve`` imports this package. Install it with the ``serve`` extra (scripts/setup.sh does).
"""
