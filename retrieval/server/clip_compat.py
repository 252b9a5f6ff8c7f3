"""clip-retrieval's back-end routes, so its ClipClient and web front end work against this server.

``POST /knn-service``, ``GET /indices-list`` and ``POST /metadata`` take and return the
shapes of clip-retrieval's ``clip_back.py``. Bodies are read as JSON whatever the
Content-Type (its client sends none). What we cannot honour is accepted and ignored:
the safety, violence and aesthetic models and mclip. ``image_url`` is refused: this
server fetches nothing from the network. ``deduplicate`` drops results whose stored
vector is the same as a better-ranked one's (identical pictures). As in clip-retrieval,
``num_result_ids`` ids come back and only the first ``num_images`` carry metadata (its web
front end asks for 3,000 and fetches the rest from ``/metadata`` as it scrolls).

A knn-service query is answered by the same search as ``/api/search`` (``Library.search``), so
concurrent text queries of either route are micro-batched together; the page of results is then
put in clip-retrieval's shape. A large body (a base64 image) is parsed in the thread pool, and an
image decoded there too (:mod:`retrieval.server.uploads`), never on the event loop or the query thread.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from retrieval.errors import RetrievalError
from retrieval.server import uploads
from retrieval.server.decoding import Decoders
from retrieval.server.library import MAX_ID, Library, Run, SearchSpec
from retrieval.server.security import TooLarge

MAX_RESULTS = 1000
#: clip-retrieval's web front end asks for 3,000 ids and fetches metadata for more as it scrolls.
MAX_RESULT_IDS = 10_000
MAX_IDS = 1000
#: Bodies larger than this are parsed in the thread pool: the event loop serves every other request meanwhile.
INLINE_BODY = 64 * 1024
FLOAT32_MAX = float(np.finfo(np.float32).max)

M = TypeVar("M", bound=BaseModel)


def _json_integer(value: Any) -> Any:
    """What JSON Schema calls an integer: a number without a fraction (3 or 3.0), not false, not "3"."""
    if isinstance(value, bool | str):
        raise ValueError("an id is a whole number")
    return value


#: An id in a JSON body. Field first: its bounds reach the schema.
JsonId = Annotated[int, Field(ge=0, le=MAX_ID), BeforeValidator(_json_integer)]
#: How the routes search: ``await search(spec)`` is the page /api/search would answer (batched like it).
Search = Callable[[SearchSpec], Awaitable[dict]]


class KnnRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str | None = Field(None, max_length=2000)
    image: str | None = Field(None, description="A query image, base64-encoded.")
    image_url: str | None = Field(None, description="Refused: this server fetches nothing.")
    # Checked after parsing (finite, within float32), so a bad number is a 400 that says what is wrong.
    embedding_input: list[float] | None = Field(None, max_length=4096)
    modality: Literal["image", "text"] = Field("image", description="Search the images, or the caption corpus.")
    num_images: int = Field(40, ge=1, le=MAX_RESULTS)
    num_result_ids: int | None = Field(None, ge=1, le=MAX_RESULT_IDS, description="Ids returned; the first num_images with metadata.")
    indice_name: str | None = None
    deduplicate: bool = False
    # Accepted and ignored (clip-retrieval's client sends them by default).
    use_safety_model: bool | None = None
    use_violence_detector: bool | None = None
    use_mclip: bool | None = None
    aesthetic_score: int | str | None = None
    aesthetic_weight: float | str | None = None
    verbose: bool | None = None


class KnnResult(BaseModel):
    id: int
    similarity: float
    image_path: str | None = None
    url: str | None = None
    caption: str | None = None


class MetadataRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ids: list[JsonId] = Field(max_length=MAX_IDS)
    indice_name: str | None = None


class Metadata(BaseModel):
    image_path: str | None = None
    url: str | None = None
    caption: str | None = None


class MetadataItem(BaseModel):
    id: int
    metadata: Metadata


def _body(model: type[BaseModel], description: str) -> dict:
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _validate(model: type[M], body: bytes) -> M:
    """The body as `model`; a body that does not fit it is a 422, as on every other route."""
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


async def _parse(request: Request, model: type[M]) -> M:
    """The JSON body as `model`, whatever the Content-Type (the Guard has capped its size)."""
    body = await request.body()
    if len(body) > INLINE_BODY:
        return await run_in_threadpool(_validate, model, body)
    return _validate(model, body)


def router(run: Run, search: Search, library_ready: Callable[[], Library], max_bytes: int, decoders: Decoders) -> APIRouter:
    """The compatibility routes; `run(fn)` awaits fn(library) on the query thread, `search(spec)` a page of results."""
    api = APIRouter(tags=["clip-retrieval"])

    @api.get("/indices-list", response_model=list[str])
    async def indices_list():
        """The served index names (clip-retrieval's indice names)."""
        return library_ready().names

    @api.post("/knn-service", response_model=list[KnnResult], response_model_exclude_none=True,
              openapi_extra=_body(KnnRequest, "clip-retrieval's knn-service body"))
    async def knn_service(request: Request):
        """Nearest images (modality "image") or captions (modality "text") for a text, an image or a vector."""
        req = await _parse(request, KnnRequest)
        spec, image = _spec(req)
        if image is not None:
            data = await run_in_threadpool(_image_bytes, image, max_bytes)
            spec.image = await uploads.prepared(run, spec.index, data, decoders)
        page = await search(spec)
        results = page["results"]
        if req.deduplicate and spec.target == "images":
            index = page["query"]["index"]
            results = await run(lambda library: _distinct(library, index, results))
        return _knn_results(results, req.num_images, str(request.base_url).rstrip("/"))

    @api.post("/metadata", response_model=list[MetadataItem], response_model_exclude_none=True,
              openapi_extra=_body(MetadataRequest, "ids to describe, and the index"))
    async def metadata(request: Request):
        """Path (and URL) of images, or text of captions, by id."""
        req = await _parse(request, MetadataRequest)
        base = str(request.base_url).rstrip("/")
        return await run(lambda library: _metadata(library, req, base))

    return api


def _spec(req: KnnRequest) -> tuple[SearchSpec, str | None]:
    """The search a knn-service body asks for, and its base64 image (decoded later, off the event loop)."""
    if req.image_url:
        raise RetrievalError("image_url is not supported: this server fetches nothing; send the image as base64 in 'image'")
    spec = SearchSpec(index=req.indice_name, target="images" if req.modality == "image" else "texts",
                      k=max(req.num_images, req.num_result_ids or 0))
    if req.text:
        spec.q = req.text
        return spec, None
    if req.image:
        return spec, req.image
    if req.embedding_input:
        spec.vector = _embedding(req.embedding_input)
        return spec, None
    raise RetrievalError("give text, image (base64) or embedding_input")


def _embedding(numbers: list[float]) -> list[float]:
    """A query vector float32 can hold, scaled to length 1 (the index compares directions)."""
    vector = np.asarray(numbers, np.float64)
    if not np.all(np.isfinite(vector)) or np.abs(vector).max() > FLOAT32_MAX:
        raise RetrievalError(f"embedding_input: every number must be finite and at most {FLOAT32_MAX:.3g} in size (float32)")
    norm = np.linalg.norm(vector)
    if not norm or not np.any(vector.astype(np.float32)):
        raise RetrievalError("embedding_input: the vector is all zeros (as float32), so it points nowhere")
    return (vector / norm).tolist()


def _image_bytes(image: str, max_bytes: int) -> bytes:
    if len(image) > max_bytes * 4 // 3 + 4:
        raise TooLarge(f"image over the upload limit of {max_bytes / 2**20:g} MB")
    try:
        return base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise RetrievalError("image is not valid base64") from None


def _knn_results(results: list[dict], num_images: int, base: str) -> list[dict]:
    """A page of /api/search results in clip-retrieval's shape."""
    out = []
    for rank, result in enumerate(results):
        item: dict[str, Any] = {"id": result["id"], "similarity": result["score"]}
        if "text" in result:
            item["caption"] = result["text"]  # captions are at hand: every one carries its text
        elif rank < num_images:  # as in clip-retrieval, later ids come bare and /metadata describes them
            item["image_path"] = result["path"]
            item["url"] = base + result["url"]
        out.append(item)
    return out


def _distinct(library: Library, index: str, results: list[dict]) -> list[dict]:
    """Results without repeats of a picture: identical files share one stored vector."""
    vectors = library.get(index).catalog.image_vectors_by_id([r["id"] for r in results])
    kept, seen = [], set()
    for result in results:
        v = vectors.get(result["id"])
        key = v.tobytes() if v is not None else result["id"]
        if key not in seen:
            seen.add(key)
            kept.append(result)
    return kept


def _metadata(library: Library, req: MetadataRequest, base: str) -> list[dict]:
    served = library.get(req.indice_name)
    rows = served.catalog.rows_by_id("images", req.ids)
    out = []
    for image_id in req.ids:
        row = rows.get(image_id)
        meta = {}
        if row is not None:
            meta = {"image_path": library.show_path(served, row["path"]),
                    "url": f"{base}/api/image/{image_id}?index={served.name}"}
        out.append({"id": image_id, "metadata": meta})
    return out
