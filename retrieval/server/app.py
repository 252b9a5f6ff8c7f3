"""The HTTP API and the page: a thin FastAPI layer over the engine the CLI uses.

    >>> from retrieval.server.app import ServerSettings, create_app   # doctest: +SKIP
    >>> app = create_app(ServerSettings(indexes=["demo"]))            # doctest: +SKIP

Routes hand engine work (catalog reads, model calls, FAISS searches) to the engine thread
(:mod:`retrieval.server.batcher`) and await it, so the event loop never blocks; file work
(thumbnails, originals) runs in the thread pool. Every error is ``{"error": "..."}``.
See docs/server.md for the API with examples.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Annotated, Literal

from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from retrieval import __version__
from retrieval.errors import IndexNotFound, RetrievalError
from retrieval.server import clip_compat, files
from retrieval.server.batcher import EngineThread
from retrieval.server.engine import MAX_ID, Library, NotFound, SearchSpec
from retrieval.server.security import COOKIE, Guard, TooLarge, cookie_header, is_loopback, token_matches

log = logging.getLogger(__name__)

STATIC = FsPath(__file__).parent / "static"
MAX_K = 200
MAX_OFFSET = 1000


@dataclass
class ServerSettings:
    """How `retrieval serve` runs; the CLI fills this from its options."""

    indexes: list[str] = field(default_factory=lambda: ["default"])
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    absolute_paths: bool = False
    max_upload_mb: float = 20.0
    #: Text queries arriving this close together are encoded and searched as one batch; 0 turns it off.
    batch_window_ms: float = 2.0

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


# -- schemas -------------------------------------------------------------------------------
IdInt = Annotated[int, Field(ge=0, le=MAX_ID)]
Text = Annotated[str, Field(max_length=1000)]
Weight = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]


class SearchParams(BaseModel):
    """One search: the same fields in a query string, a JSON body, or upload form fields."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    index: str | None = Field(None, description="Index name [default: the first served].")
    q: Text | None = Field(None, description="Text query.")
    like: list[IdInt] = Field([], max_length=50, description="Image ids: more like these (their stored vectors).")
    like_weights: list[Weight] | None = Field(None, max_length=50, description="One weight per id in like.")
    weight: float = Field(0.5, ge=0, le=1, description="Share of the image part when text and images are both given.")
    not_: list[Text] = Field([], alias="not", max_length=10, description="Concepts to push away.")
    target: Literal["images", "texts"] = Field("images", description="Rank images, or the caption corpus.")
    k: int = Field(24, ge=1, le=MAX_K, description="Results per page.")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="Results to skip (paging).")
    # Filters (retrieval/search/filters.py, docs/photo-library.md); AND-combined.
    after: Text | None = Field(None, description="Taken on or after this date (YYYY-MM-DD or YYYY-MM-DDTHH:MM).")
    before: Text | None = Field(None, description="Taken before this date (excluded).")
    folder: list[Text] = Field([], max_length=20, description="Only images under one of these folders "
                               "(relative to the indexed folder, as result paths are shown, or absolute).")
    camera: Text | None = Field(None, description="Camera make or model contains this (case-insensitive).")
    near: Text | None = Field(None, description="LAT,LON,KM: taken within KM kilometres of LAT,LON.")
    min_width: int | None = Field(None, ge=1, le=10**6, description="At least this many pixels wide.")
    min_height: int | None = Field(None, ge=1, le=10**6, description="At least this many pixels high.")

    def spec(self, image: bytes | None = None) -> SearchSpec:
        from retrieval.search.filters import Filters

        given = (self.after, self.before, self.camera, self.near, self.min_width, self.min_height)
        filters = Filters.parse(  # a bad value is a FilterError: a 400 with its one line
            after=self.after, before=self.before, camera=self.camera,
            near=self.near, min_width=self.min_width, min_height=self.min_height,
        ) if any(v is not None for v in given) else None
        return SearchSpec(
            index=self.index, q=self.q or None, like=list(self.like), like_weights=self.like_weights,
            weight=self.weight, negatives=[n for n in self.not_ if n], target=self.target, k=self.k,
            offset=self.offset, image=image, filters=filters if filters is not None and filters.active else None,
            # Placed by the engine: a relative folder lies under the index's own folders.
            folders=[f for f in self.folder if f],
        )


#: Fields given as repeated query parameters (?like=1&like=2).
LIST_FIELDS = frozenset({"like", "like_weights", "not", "folder"})
#: GET /api/search's parameters as FastAPI would document `Annotated[SearchParams, Query()]`.
QUERY_PARAMETERS = [
    {"name": name, "in": "query", "required": False, "schema": schema, **({"description": schema["description"]}
                                                                          if "description" in schema else {})}
    for name, schema in SearchParams.model_json_schema(by_alias=True)["properties"].items()
]


def query_params(request: Request) -> SearchParams:
    """The URL's search parameters, validated by the model itself.

    Declared as ``Annotated[SearchParams, Query()]`` FastAPI re-inspected every field's type on
    each request: 1-2 ms of the event loop's CPU per search, as much as the rest of the request.
    """
    query = request.query_params
    fields = {name: query.getlist(name) if name in LIST_FIELDS else query.get(name) for name in query.keys()}
    try:
        return SearchParams.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


class Result(BaseModel):
    rank: int
    id: int
    score: float
    path: str | None = None
    text: str | None = None
    thumb: str | None = None
    url: str | None = None
    width: int | None = None
    height: int | None = None


class SearchResponse(BaseModel):
    query: dict
    results: list[Result]
    offset: int
    next_offset: int | None
    note: str | None = None


class Error(BaseModel):
    error: str


class Health(BaseModel):
    status: str
    indexes: int


class IndexSummary(BaseModel):
    name: str
    images: int
    captions: int
    model: str | None
    generation: int
    dim: int | None


class IndexList(BaseModel):
    indexes: list[IndexSummary]


class ImageMeta(BaseModel):
    id: int
    path: str
    width: int | None
    height: int | None
    size: int | None
    thumb: str
    url: str


class Login(BaseModel):
    token: str = Field(max_length=500)


ERRORS = {status: {"model": Error} for status in (400, 401, 404, 422)}
JPEG = {200: {"content": {"image/jpeg": {}}, "description": "A JPEG thumbnail"}, 304: {"description": "Not modified"}}
IMAGE = {200: {"content": {"image/*": {}}, "description": "The original file"}, 304: {"description": "Not modified"}}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"},
                           **{k: v for k, v in SearchParams.model_json_schema(by_alias=True)["properties"].items()}},
        }}},
    }
}


# -- the app -------------------------------------------------------------------------------
def create_app(settings: ServerSettings) -> FastAPI:
    """The ASGI app serving `settings.indexes`; opens them (and fails) before any request."""
    engine = EngineThread(settings.batch_window_ms)
    library: Library = engine.call(lambda: Library(settings.indexes, settings.absolute_paths)).result()
    # Slow reads that must not hold up queries (/api/info checksums every FAISS file) run on a
    # second thread with its own connections to the same catalogs.
    side = EngineThread(0, name="retrieval-side")
    side_library: Library = side.call(lambda: Library(settings.indexes, settings.absolute_paths)).result()

    async def run(fn):
        """fn(library) on the engine thread, awaited."""
        return await asyncio.wrap_future(engine.call(lambda: fn(library)))

    async def search(spec: SearchSpec) -> dict:
        if spec.text_only:
            key = (library.get(spec.index).name, spec.target)
            return await asyncio.wrap_future(engine.batched(key, spec, library.search_texts, library.encode_texts))
        return await run(lambda lib: lib.search(spec))

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app):
        yield
        engine.call(library.close).result(timeout=10)
        engine.close()
        side.call(side_library.close).result(timeout=10)
        side.close()

    app = FastAPI(
        title="retrieval", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Search image indexes by text, by example and both; see docs/server.md.",
    )
    app.state.engine, app.state.library, app.state.settings = engine, library, settings
    _error_handlers(app)
    api = APIRouter(responses=ERRORS)

    @api.get("/api/health", response_model=Health, tags=["server"])
    async def health():
        return {"status": "ok", "indexes": len(library.names)}

    @api.get("/api/indexes", response_model=IndexList, tags=["server"])
    async def indexes():
        """The served indexes with their sizes and current generation."""
        return {"indexes": await run(lambda lib: lib.summaries())}

    @api.get("/api/info", tags=["server"])
    async def info(index: str | None = None) -> dict:
        """What `retrieval info --json` prints for the index."""
        return await asyncio.wrap_future(side.call(lambda: side_library.info(index)))

    @api.get("/api/search", response_model=None, responses={200: {"model": SearchResponse}}, tags=["search"],
             openapi_extra={"parameters": QUERY_PARAMETERS})
    async def search_get(request: Request):
        """Search with the query in the URL (shareable)."""
        return JSONResponse(await search(query_params(request).spec()))

    @api.post("/api/search", response_model=None, responses={200: {"model": SearchResponse}}, tags=["search"])
    async def search_post(params: SearchParams):
        """Search with the query in a JSON body."""
        return JSONResponse(await search(params.spec()))

    @api.post("/api/search/upload", response_model=None, openapi_extra=UPLOAD_BODY, tags=["search"],
              responses={200: {"model": SearchResponse}, 413: {"model": Error}})
    async def search_upload(request: Request):
        """Search by an uploaded image (multipart field `file`), optionally fused with the other fields."""
        data, fields = await read_upload(request, settings.max_upload_bytes)
        try:
            params = SearchParams.model_validate(fields)
        except ValidationError as exc:
            raise RetrievalError(_first_error(exc)) from None
        return JSONResponse(await search(params.spec(image=data)))

    @api.get("/api/thumb/{image_id}", response_class=Response, responses=JPEG, tags=["files"])
    async def thumb(request: Request, image_id: Annotated[int, Path(ge=0, le=MAX_ID)],
                    index: str | None = None, size: int = 256):
        """A JPEG thumbnail (128, 256 or 512 px), made once and cached beside the index."""
        if size not in files.THUMB_SIZES:
            raise RetrievalError(f"size must be one of {', '.join(map(str, files.THUMB_SIZES))}")
        served, real = await _servable(run, index, image_id)
        data, etag = await run_in_threadpool(files.thumbnail, served.folder, image_id, real, size)
        return _cached(request, etag, lambda: Response(data, media_type="image/jpeg"))

    @api.get("/api/image/{image_id}", response_class=Response, responses=IMAGE, tags=["files"])
    async def image(request: Request, image_id: Annotated[int, Path(ge=0, le=MAX_ID)], index: str | None = None):
        """The original file, while it is still inside an indexed folder."""
        _, real = await _servable(run, index, image_id)
        etag = await run_in_threadpool(files.version_key, image_id, real)
        return _cached(request, etag, lambda: FileResponse(real, media_type=files.media_type(real)))

    @api.get("/api/image/{image_id}/meta", response_model=ImageMeta, tags=["files"])
    async def image_meta(image_id: Annotated[int, Path(ge=0, le=MAX_ID)], index: str | None = None):
        """Path (relative unless --absolute-paths), size and pixel dimensions of an image."""
        def meta(lib: Library) -> dict:
            served, row = lib.image_row(index, image_id)
            return {
                "id": image_id, "path": lib.show_path(served, row["path"]), "width": row.get("width"),
                "height": row.get("height"), "size": row.get("size"),
                "thumb": f"/api/thumb/{image_id}?index={served.name}&size=256",
                "url": f"/api/image/{image_id}?index={served.name}",
            }
        return await run(meta)

    @api.post("/api/login", status_code=204, response_class=Response, tags=["server"])
    async def login(body: Login):
        """Exchange the token for an HttpOnly, SameSite=Strict cookie (the page's login form)."""
        if settings.token is not None and not token_matches(body.token, settings.token):
            return JSONResponse({"error": "wrong token"}, status_code=401)
        response = Response(status_code=204)
        if settings.token is not None:
            response.headers["set-cookie"] = cookie_header(settings.token).decode()
        return response

    @api.post("/api/logout", status_code=204, response_class=Response, tags=["server"])
    async def logout():
        response = Response(status_code=204)
        response.headers["set-cookie"] = cookie_header(None).decode()
        return response

    app.include_router(api)
    app.include_router(clip_compat.router(run, lambda: library, settings.max_upload_bytes), responses=ERRORS)
    _page(app)
    return _wrap(app, settings)


def _page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page():
        index = STATIC / "index.html"
        if not index.is_file():
            raise NotFound("the page is not installed (retrieval/server/static/index.html)")
        return FileResponse(index, media_type="text/html; charset=utf-8", headers={"cache-control": "no-cache"})

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _wrap(app: FastAPI, settings: ServerSettings) -> FastAPI:
    """Middleware, outermost last: CORS only when asked for, the guard in front of everything."""
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"], allow_credentials=False,
        )
    # Any request body: the upload limit, grown by a third for base64 (knn-service) plus room for fields.
    max_body = settings.max_upload_bytes * 4 // 3 + 64 * 1024
    too_large = f"request too large: the upload limit is {settings.max_upload_mb:g} MB (--max-upload-mb)"
    app.add_middleware(
        Guard, loopback=is_loopback(settings.host), token=settings.token, max_body=max_body, too_large=too_large
    )
    return app


async def _servable(run, index: str | None, image_id: int):
    """The served index and the real path of an image that may be served; 404 otherwise."""
    served, row, roots = await run(lambda lib: (*lib.image_row(index, image_id), lib.get(index).roots()))
    real = await run_in_threadpool(files.servable_path, row["path"], roots)
    if real is None:
        raise NotFound(f"image {image_id} is no longer inside an indexed folder")
    return served, real


def _cached(request: Request, etag: str, make) -> Response:
    quoted = f'"{etag}"'
    headers = {"etag": quoted, "cache-control": "private, max-age=86400"}
    if quoted in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    response = make()
    response.headers.update(headers)
    return response


async def read_upload(request: Request, limit: int) -> tuple[bytes, dict]:
    """The uploaded file and the form fields, parsed in memory (never spooled to disk), capped at `limit`."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RetrievalError("send the image as multipart/form-data with a field named 'file'")
    slack = 64 * 1024  # room for the form fields and multipart framing
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + slack:
        raise TooLarge(f"upload over the limit of {limit / 2**20:g} MB")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit + slack:
            raise TooLarge(f"upload over the limit of {limit / 2**20:g} MB")

    async def stream():
        yield bytes(body)

    parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=200)
    parser.spool_max_size = len(body) + 1  # the file stays in memory
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise RetrievalError(f"malformed upload: {exc.message}") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise RetrievalError("the upload needs a file field named 'file'")
    data = await upload.read()
    await form.close()
    if len(data) > limit:
        raise TooLarge(f"upload over the limit of {limit / 2**20:g} MB")
    if not data:
        raise RetrievalError("the uploaded file is empty")
    fields: dict = {}
    for name in ("like", "like_weights", "not", "folder"):
        values = [v for v in form.getlist(name) if isinstance(v, str) and v != ""]
        if values:
            fields[name] = values
    for name in ("index", "q", "weight", "target", "k", "offset", "after", "before", "camera", "near", "min_width", "min_height"):
        value = form.get(name)
        if isinstance(value, str) and value != "":
            fields[name] = value
    return data, fields


def _first_error(exc: ValidationError | RequestValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request"))


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RetrievalError)
    async def retrieval_error(_request, exc: RetrievalError):
        status = 404 if isinstance(exc, (NotFound, IndexNotFound)) else 413 if isinstance(exc, TooLarge) else 400
        # The library reads its catalogs on the engine thread only: the message is scrubbed there.
        library: Library = app.state.library
        message = await asyncio.wrap_future(app.state.engine.call(lambda: library.scrub(str(exc))))
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        return JSONResponse({"error": _first_error(exc)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        if isinstance(exc.__cause__, TooLarge):  # FastAPI reports any failure to read a JSON body as a 400
            return JSONResponse({"error": str(exc.__cause__)}, status_code=413)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crash(_request, exc: Exception):
        log.exception("internal error")
        return JSONResponse({"error": "internal error (see the server log)"}, status_code=500)


__all__ = ["COOKIE", "ServerSettings", "create_app"]
