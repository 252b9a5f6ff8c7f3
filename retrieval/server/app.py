"""The HTTP API and the page: a thin FastAPI layer over the engine the CLI uses.

    >>> from retrieval.server.app import ServerSettings, create_app   # doctest: +SKIP
    >>> app = create_app(ServerSettings(indexes=["demo"]))            # doctest: +SKIP

Routes hand their work (catalog reads, model calls, FAISS searches) to the query thread
(:mod:`retrieval.server.batcher`) and await it, so the event loop never blocks; file work
(thumbnails, originals) runs in the thread pool, and a TIFF's decoding in the app's decoding
process (:mod:`retrieval.server.decoding`). Every error is ``{"error": "..."}``.
See docs/server.md for the API with examples.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.routing import Match, Mount

from retrieval import __version__
from retrieval.errors import IndexNotFound, RetrievalError
from retrieval.search.filters import people_in
from retrieval.server import clip_compat, faces, files, ranges, uploads
from retrieval.server.batcher import QueryThread
from retrieval.server.decoding import DecoderFailed, Decoders
from retrieval.server.library import MAX_ID, Library, NotFound, Run, SearchSpec, Served
from retrieval.server.security import (
    COOKIE,
    BodyCap,
    BodyCaps,
    Guard,
    TooLarge,
    cookie_header,
    is_loopback,
    token_matches,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

STATIC = FsPath(__file__).parent / "static"
MAX_K = 200
MAX_OFFSET = 1000
KB = 1024
#: Bodies larger than this are parsed in the thread pool, not on the event loop.
INLINE_BODY = 64 * KB
#: Methods in the order an Allow header lists them.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


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
def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):  # JSON's false would otherwise be id 0
        raise ValueError("an id is a whole number, not true or false")
    return value


def _digits_to_int(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.isdigit() else value


IdInt = Annotated[int, Field(ge=0, le=MAX_ID), BeforeValidator(_not_a_bool)]  # Field first: its bounds reach the schema
#: files.THUMB_SIZES, as the schema lists them (a query string's "256" is the number 256).
ThumbSize = Annotated[Literal[128, 256, 512], BeforeValidator(_digits_to_int)]
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
    # Filters (retrieval/search/filters/, docs/photo-library.md); AND-combined.
    after: Text | None = Field(None, description="Taken on or after this date (YYYY-MM-DD or YYYY-MM-DDTHH:MM).")
    before: Text | None = Field(None, description="Taken before this date (excluded).")
    folder: list[Text] = Field([], max_length=20, description="Only images under one of these folders "
                               "(relative to the indexed folder, as result paths are shown, or absolute).")
    camera: Text | None = Field(None, description="Camera make or model contains this (case-insensitive).")
    near: Text | None = Field(None, description="LAT,LON,KM: taken within KM kilometres of LAT,LON.")
    min_width: int | None = Field(None, ge=1, le=10**6, description="At least this many pixels wide.")
    min_height: int | None = Field(None, ge=1, le=10**6, description="At least this many pixels high.")
    date_source: Literal["any", "exif"] = Field("any", description="Which dates after and before compare: any "
                                                "(the EXIF date, else the file's modification time) or exif (EXIF dates only).")
    person: list[Text] = Field([], max_length=10, description="Only images showing this person, by name "
                               "(case-insensitive) or id (GET /api/people lists them); repeated: all of them. "
                               "Alone, without q or like, a person's photos clearest face first (or by sort).")
    # The order (retrieval/search/ordering.py, docs/search.md#sorted-by-date).
    sort: Literal["score", "date", "date-asc"] = Field(
        "score", description="score: best match first; date: newest first; date-asc: oldest first, by the date "
        "after/before compare (photos without one last). A date sort takes the best 1,000 matches and drops those "
        "under min_score, else the cutoff measured for the index's model (none for a model not measured).")
    min_score: float | None = Field(None, ge=-1, le=1, allow_inf_nan=False,
                                    description="Drop matches scoring below this (any sort).")

    def spec(self) -> SearchSpec:
        from retrieval.search.filters import Filters

        given = (self.after, self.before, self.camera, self.near, self.min_width, self.min_height, self.person or None)
        filters = Filters.parse(  # a bad value is a FilterError: a 400 with its one line
            after=self.after, before=self.before, camera=self.camera,
            near=self.near, min_width=self.min_width, min_height=self.min_height, date_source=self.date_source,
            people=self.person,
        ) if any(v is not None for v in given) else None
        return SearchSpec(
            index=self.index, q=self.q or None, like=list(self.like), like_weights=self.like_weights,
            weight=self.weight, negatives=[n for n in self.not_ if n], target=self.target, k=self.k,
            offset=self.offset, filters=filters if filters is not None and filters.active else None,
            # Placed by Library.filters_for: a relative folder lies under the index's own folders.
            folders=[f for f in self.folder if f],
            sort=self.sort, min_score=self.min_score, date_source=self.date_source,
        )


#: Fields given as repeated query parameters (?like=1&like=2).
LIST_FIELDS = frozenset({"like", "like_weights", "not", "folder", "person"})
#: GET /api/search's parameters as FastAPI would document `Annotated[SearchParams, Query()]`.
QUERY_PARAMETERS = [
    {"name": name, "in": "query", "required": False, "schema": schema, **({"description": schema["description"]}
                                                                          if "description" in schema else {})}
    for name, schema in SearchParams.model_json_schema(by_alias=True)["properties"].items()
]


def query_params(request: Request) -> SearchParams:
    """The URL's search parameters, validated by the model itself.

    Declared as ``Annotated[SearchParams, Query()]`` FastAPI re-inspected every field's type on
    each request, about three times the function calls of validating directly, on the event
    loop's CPU (docs/serving-speed.md#under-load-micro-batching-second-round).
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
    taken: str | None = Field(None, description="With a date filter (after, before) or a date sort: the image's date.")
    date_source: Literal["exif", "file"] | None = Field(
        None, description="With a date filter or sort: where `taken` comes from, the photo's EXIF date or the file's "
        "modification time (date_source=any lets those pass).")
    media: Literal["video"] | None = Field(None, description="\"video\" for a video's moment; absent for a photo.")
    time: float | None = Field(None, description="A video's moment, in seconds from its start (its thumb is that frame).")


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
    videos: int = Field(0, description="How many of the images are videos (each searched by its sampled frames).")
    captions: int
    model: str | None
    generation: int
    dim: int | None
    by_path: bool = Field(False, description="Served by a path, not by a name under the index home: the page then "
                          "writes PATH, not the name, in the commands it suggests.")
    weak_below: float | None = Field(
        None, description="A text search whose best score is below this has no close match (docs/server.md#weak-matches); "
        "null where the model's scale is not measured.")
    date_cutoff: float | None = Field(
        None, description="A date-sorted search without min_score drops matches below this (docs/search.md#sorted-by-date); "
        "null where the model's scale is not measured: then nothing is cut.")


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
    people: list[FaceInImage] = Field([], description="The faces found in it (largest first), hidden people left out.")


class FaceInImage(BaseModel):
    face_id: int
    box: list[int] = Field(description="x, y, width, height in the upright picture's pixels.")
    person_id: int | None = Field(None, description="The person this face was grouped with (null: not grouped yet).")
    name: str | None = Field(None, description="That person's name (null: not named).")
    thumb: str


class Person(BaseModel):
    id: int
    name: str
    count: int = Field(description="Indexed photos showing this person.")
    face_id: int | None = Field(None, description="Their clearest face, for /api/faces/{id}/thumb.")
    thumb: str | None = None


class PeopleList(BaseModel):
    index: str
    people: list[Person]


class Login(BaseModel):
    token: str = Field(max_length=500)


#: OpenAPI response descriptions, in the shape FastAPI's `responses=` takes.
Responses = dict[int | str, dict[str, Any]]
ERRORS: Responses = {status: {"model": Error} for status in (400, 401, 404, 413, 422)}
JPEG: Responses = {200: {"content": {"image/jpeg": {}}, "description": "A JPEG thumbnail"}, 304: {"description": "Not modified"}}
IMAGE: Responses = {200: {"content": {"image/*": {}, "video/*": {}}, "description": "The original file, or a JPEG of it"},
                    206: {"content": {"image/*": {}, "video/*": {}}, "description": "The byte range asked for (Range)"},
                    304: {"description": "Not modified"},
                    416: {"model": Error, "description": "The range starts past the end of the file"}}
#: The longest video whose moment a thumbnail names: a week, in seconds.
MAX_SECONDS = 7 * 24 * 3600


def _form_field(schema: dict[str, Any]) -> dict[str, Any]:
    """A search field's schema as a form field: a form has no null, an absent field is one."""
    alternatives = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    if len(alternatives) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**alternatives[0], **rest}


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"},
                           **{k: _form_field(v) for k, v in SearchParams.model_json_schema(by_alias=True)["properties"].items()}},
        }}},
    }
}


# -- the app -------------------------------------------------------------------------------
def create_app(settings: ServerSettings) -> FastAPI:
    """The ASGI app serving `settings.indexes`; opens them (and fails) before any request."""
    query_thread = QueryThread(settings.batch_window_ms)
    library: Library = query_thread.call(lambda: Library(settings.indexes, settings.absolute_paths)).result()
    # Slow reads that must not hold up queries (/api/info checksums every FAISS file) run on a
    # second thread with its own connections to the same catalogs.
    side = QueryThread(0, name="retrieval-side")
    side_library: Library = side.call(lambda: Library(settings.indexes, settings.absolute_paths)).result()
    # Thumbnails, previews and uploads of formats whose decoder prints (TIFF) decode in a process of
    # its own, started on the first such file.
    decoders = Decoders()

    async def run(fn: Callable[[Library], T]) -> T:
        """fn(library) on the query thread, awaited."""
        return await asyncio.wrap_future(query_thread.call(lambda: fn(library)))

    async def search(spec: SearchSpec) -> dict:
        if spec.text_only:
            key = (library.get(spec.index).name, spec.target)
            return await asyncio.wrap_future(query_thread.batched(key, spec, library.search_texts, library.encode_texts))
        return await run(lambda lib: lib.search(spec))

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app):
        yield
        query_thread.call(library.close).result(timeout=10)
        query_thread.close()
        side.call(side_library.close).result(timeout=10)
        side.close()
        decoders.close()

    app = FastAPI(
        title="retrieval", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Search image indexes by text, by example and both; see docs/server.md.",
    )
    app.state.query_thread, app.state.library, app.state.settings = query_thread, library, settings
    app.state.decoders = decoders
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
        except ValidationError as exc:  # a 422, as the same field is in a query string or a JSON body
            raise RequestValidationError(exc.errors()) from None
        spec = params.spec()
        spec.image = await uploads.prepared(run, spec.index, data, decoders)
        return JSONResponse(await search(spec))

    @api.get("/api/thumb/{image_id}", response_class=Response, responses=JPEG, tags=["files"])
    async def thumb(request: Request, image_id: Annotated[int, Path(ge=0, le=MAX_ID)],
                    index: str | None = None, size: ThumbSize = 256,
                    t: Annotated[float | None, Query(ge=0, le=MAX_SECONDS, allow_inf_nan=False, description=(
                        "A video's moment in seconds (a video hit's `time`): the thumbnail is the frame shown "
                        "then [default: the first]. Ignored for a photo."))] = None):
        """A JPEG thumbnail (128, 256 or 512 px), made once and cached beside the index; of a video, its frame at t."""
        served, real = await _servable(run, index, image_id)
        if files.is_video(real):
            data, etag = await run_in_threadpool(files.video_thumbnail, served.folder, image_id, real, size, t or 0.0)
            return _cached(request, etag, lambda: Response(data, media_type="image/jpeg"))
        data, etag = await run_in_threadpool(files.thumbnail, served.folder, image_id, real, size, decoders.thumbnail)
        return _cached(request, etag, lambda: Response(data, media_type="image/jpeg"))

    @api.get("/api/image/{image_id}", response_class=Response, responses=IMAGE, tags=["files"])
    async def image(request: Request, image_id: Annotated[int, Path(ge=0, le=MAX_ID)], index: str | None = None,
                    download: bool = False):
        """The picture, while it is still inside an indexed folder: the original file where browsers draw its
        format (JPEG, PNG, GIF, WebP, AVIF, BMP) and of a video, else a JPEG of it at most 2048 px a side (TIFF...).
        With download=1, the original file itself, as an attachment, whatever its format. An original is
        sent in the byte range a Range header asks for (206), which is how a browser seeks in a video."""
        served, real = await _servable(run, index, image_id)
        if download or files.browser_draws(real) or files.is_video(real):
            etag = await run_in_threadpool(files.version_key, image_id, real)
            name = real.name if download else None  # sent with its name, as an attachment
            return await _original(request, real, etag, name)
        data, etag = await run_in_threadpool(files.preview, served.folder, image_id, real, decoders.thumbnail)
        return _cached(request, etag, lambda: Response(data, media_type="image/jpeg"))

    @api.get("/api/image/{image_id}/motion", response_class=Response, responses=IMAGE, tags=["files"])
    async def motion(request: Request, image_id: Annotated[int, Path(ge=0, le=MAX_ID)], index: str | None = None):
        """A Live Photo's motion file (its .mov), by the photo's id, under the originals' rules: only from
        inside an indexed folder, in the byte range a Range header asks for; 404 for a photo without one."""
        served, row, roots = await run(lambda lib: (*lib.image_row(index, image_id), lib.get(index).roots()))
        # An index from before roots were recorded: the photo's own folder, never the motion file's.
        allowed = roots or [str(FsPath(row["path"]).parent)]
        real = await run_in_threadpool(files.servable_path, row.get("motion") or "", allowed)
        if real is None:
            raise NotFound(f"image {image_id} has no motion file inside an indexed folder")
        etag = await run_in_threadpool(files.version_key, image_id, real, "motion")
        return await _original(request, real, etag, None)

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
                "people": [{**{k: face[k] for k in ("face_id", "box", "person_id", "name")},
                            "thumb": f"/api/faces/{face['face_id']}/thumb?index={served.name}"}
                           for face in people_in(served.catalog, [image_id])[image_id] if not face["hidden"]],
            }
        return await run(meta)

    @api.get("/api/people", response_model=PeopleList, tags=["people"])
    async def people(index: str | None = None):
        """The index's named people (hidden ones left out), most photos first, each with a face to show.
        Search by one with `person` (its name or id)."""
        def listing(lib: Library) -> dict:
            served = lib.get(index)
            return {"index": served.name, "people": [
                {**p, "thumb": f"/api/faces/{p['face_id']}/thumb?index={served.name}" if p["face_id"] else None}
                for p in faces.named_people(served.catalog)]}
        return await run(listing)

    @api.get("/api/faces/{face_id}/thumb", response_class=Response, responses=JPEG, tags=["people"])
    async def face_thumb(request: Request, face_id: Annotated[int, Path(ge=0, le=MAX_ID)], index: str | None = None,
                         size: Annotated[Literal[64, 128, 256], BeforeValidator(_digits_to_int)] = 128):
        """A face, square (64, 128 or 256 px), cut from a file with its photo's content that is still
        inside an indexed folder; by face id only."""
        def source(lib: Library) -> tuple[int, tuple[int, int, int, int]]:
            served = lib.get(index)
            found = faces.face_source(served.catalog, face_id)
            if found is None:
                raise NotFound(f"no face with id {face_id} in index {served.name}")
            return found
        image_id, box = await run(source)
        served, real = await _servable(run, index, image_id)
        data, etag = await run_in_threadpool(faces.face_thumbnail, served.folder, face_id, image_id, real, box, size)
        return _cached(request, etag, lambda: Response(data, media_type="image/jpeg"))

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
    app.include_router(clip_compat.router(run, search, lambda: library, settings.max_upload_bytes, decoders), responses=ERRORS)
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
    app.add_middleware(
        Guard, loopback=is_loopback(settings.host), token=settings.token, caps=body_caps(settings),
        cross_origin_files=bool(settings.cors_origins),
    )
    return app


def body_caps(settings: ServerSettings) -> BodyCaps:
    """The body each route takes at most (docs/server.md lists them): megabytes only where an image comes.

    A JSON search's text fields hold at most about 35,000 characters (q, 10 `not`, 20 folders of
    1,000 each), plus 50 ids and weights: a whole one of ASCII text fits; /metadata's 1,000 ids
    of up to 16 digits take about 18 KB; a login's token at most 500 characters.
    """
    upload = settings.max_upload_bytes
    too_large = f"request too large: the upload limit is {settings.max_upload_mb:g} MB (--max-upload-mb)"

    def small(kb: int, path: str) -> BodyCap:
        return BodyCap(kb * KB, f"request body over {kb} KB, the most {path} takes")

    return BodyCaps({
        "/api/search/upload": BodyCap(upload + 64 * KB, too_large),  # room for the form fields and framing
        "/knn-service": BodyCap(upload * 4 // 3 + 64 * KB, too_large),  # base64 grows an image by a third
        "/api/search": small(64, "/api/search"),
        "/metadata": small(64, "/metadata"),
        "/api/login": small(4, "/api/login"),
    }, BodyCap(4 * KB, "request body over 4 KB: this route takes none"))


async def _servable(run: Run, index: str | None, image_id: int) -> tuple[Served, FsPath]:
    """The served index and the real path of an image that may be served; 404 otherwise."""
    served, row, roots = await run(lambda lib: (*lib.image_row(index, image_id), lib.get(index).roots()))
    real = await run_in_threadpool(files.servable_path, row["path"], roots)
    if real is None:
        raise NotFound(f"image {image_id} is no longer inside an indexed folder")
    return served, real


async def _original(request: Request, real: FsPath, etag: str, filename: str | None) -> Response:
    """The file itself: whole (200), or the one byte range a Range header asks for (206; see
    retrieval.server.ranges). If-Range with another version's ETag gets the whole file, as RFC 9110 says."""
    header = request.headers.get("range")
    if header is None or _quoted_etag(etag) in request.headers.get("if-none-match", ""):
        return _cached(request, etag, lambda: FileResponse(real, media_type=files.media_type(real), filename=filename))
    if_range = request.headers.get("if-range")
    size = (await run_in_threadpool(real.stat)).st_size
    wanted = ranges.requested(header, size) if if_range is None or if_range.strip() == _quoted_etag(etag) else None
    part = wanted or ranges.ByteRange(0, size - 1, size)
    headers = {"etag": _quoted_etag(etag), "cache-control": "private, max-age=86400", "accept-ranges": "bytes",
               "content-length": str(part.length if size else 0)}
    if wanted is not None:
        headers["content-range"] = wanted.content_range()
    if filename is not None:
        headers["content-disposition"] = f"attachment; filename*=utf-8''{quote(filename)}"
    return StreamingResponse(ranges.read_range(real, part) if size else iter(()), status_code=206 if wanted else 200,
                             media_type=files.media_type(real), headers=headers)


def _quoted_etag(etag: str) -> str:
    return f'"{etag}"'


def _cached(request: Request, etag: str, make: Callable[[], Response]) -> Response:
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
    if len(body) > INLINE_BODY:  # parsing 20 MB takes about 0.1 s of CPU: not on the event loop
        return await run_in_threadpool(_form_in_thread, request.headers, bytes(body), limit)
    return await _form(request.headers, bytes(body), limit)


def _form_in_thread(headers: Headers, body: bytes, limit: int) -> tuple[bytes, dict]:
    return asyncio.run(_form(headers, body, limit))


async def _form(headers: Headers, body: bytes, limit: int) -> tuple[bytes, dict]:
    """The file and the fields of a multipart body held in memory."""

    async def stream():
        yield body

    parser = MultiPartParser(headers, stream(), max_files=1, max_fields=200)
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
    for name in ("like", "like_weights", "not", "folder", "person"):
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


def _allowed(app: FastAPI, request: Request) -> list[str]:
    """Every method some route of this path answers: HEAD with GET (the Guard answers it), OPTIONS always."""
    methods = {"OPTIONS"}
    for method in METHODS:
        scope = {**request.scope, "method": method}
        for route in app.router.routes:
            if route.matches(scope)[0] == Match.FULL:
                # A mount (the page's static files) takes every method, and answers GET and HEAD.
                methods |= {"GET", "HEAD"} if isinstance(route, Mount) else {method}
    if "GET" in methods:
        methods.add("HEAD")
    return [m for m in METHODS if m in methods]


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RetrievalError)
    async def retrieval_error(_request, exc: RetrievalError):
        status = 404 if isinstance(exc, (NotFound, IndexNotFound)) else 413 if isinstance(exc, TooLarge) else \
            422 if isinstance(exc, DecoderFailed) else 416 if isinstance(exc, ranges.RangeNotSatisfiable) else 400
        # The library reads its catalogs on the query thread only: the message is scrubbed there.
        library: Library = app.state.library
        message = await asyncio.wrap_future(app.state.query_thread.call(lambda: library.scrub(str(exc))))
        headers = {"content-range": f"bytes */{exc.size}"} if isinstance(exc, ranges.RangeNotSatisfiable) else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        return JSONResponse({"error": _first_error(exc)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if isinstance(exc.__cause__, TooLarge):  # FastAPI reports any failure to read a JSON body as a 400
            return JSONResponse({"error": str(exc.__cause__)}, status_code=413)
        if exc.status_code == 405:  # Starlette's Allow names only the first route of the path
            allow = ", ".join(_allowed(app, request))
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"allow": allow})
            return JSONResponse({"error": f"{request.method} is not allowed here: use {allow}"}, status_code=405,
                                headers={"allow": allow})
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crash(_request, exc: Exception):
        log.exception("internal error")
        return JSONResponse({"error": "internal error (see the server log)"}, status_code=500)


__all__ = ["COOKIE", "ServerSettings", "create_app"]
