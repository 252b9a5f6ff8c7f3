"""clip-retrieval's back-end routes, so its ClipClient and web front end work against this server.

``POST /knn-service``, ``GET /indices-list`` and ``POST /metadata`` take and return the
shapes of clip-retrieval's ``clip_back.py``. Bodies are read as JSON whatever the
Content-Type (its client sends none). What we cannot honour is accepted and ignored:
the safety, violence and aesthetic models and mclip. ``image_url`` is refused: this
server fetches nothing from the network. ``deduplicate`` drops results whose stored
vector is the same as a better-ranked one's (identical pictures). As in clip-retrieval,
``num_result_ids`` ids come back and only the first ``num_images`` carry metadata (its web
front end asks for 3,000 and fetches the rest from ``/metadata`` as it scrolls).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from retrieval.errors import RetrievalError
from retrieval.search.query import search_vectors
from retrieval.server.engine import MAX_ID, Library, SearchSpec

MAX_RESULTS = 1000
#: clip-retrieval's web front end asks for 3,000 ids and fetches metadata for more as it scrolls.
MAX_RESULT_IDS = 10_000
MAX_IDS = 1000

Finite = Annotated[float, Field(allow_inf_nan=False)]


class KnnRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str | None = Field(None, max_length=2000)
    image: str | None = Field(None, description="A query image, base64-encoded.")
    image_url: str | None = Field(None, description="Refused: this server fetches nothing.")
    embedding_input: list[Finite] | None = Field(None, max_length=4096)
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
    ids: list[Annotated[int, Field(ge=0, le=MAX_ID)]] = Field(max_length=MAX_IDS)
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


async def _parse(request: Request, model: type[BaseModel], limit: int):
    body = await request.body()
    if len(body) > limit:
        raise RetrievalError(f"request body over {limit // 2**20} MB")
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise RetrievalError(f"{where}: {first.get('msg', 'invalid')}") from None


def router(run, library_ready, max_bytes: int) -> APIRouter:
    """The compatibility routes; `run(fn)` awaits fn(library) on the engine thread."""
    api = APIRouter(tags=["clip-retrieval"])
    limit = max_bytes * 4 // 3 + 4096  # base64 grows the upload by a third

    @api.get("/indices-list", response_model=list[str])
    async def indices_list():
        """The served index names (clip-retrieval's indice names)."""
        return library_ready().names

    @api.post("/knn-service", response_model=list[KnnResult], response_model_exclude_none=True,
              openapi_extra=_body(KnnRequest, "clip-retrieval's knn-service body"))
    async def knn_service(request: Request):
        """Nearest images (modality "image") or captions (modality "text") for a text, an image or a vector."""
        req = await _parse(request, KnnRequest, limit)
        spec = _spec(req, max_bytes)
        base = str(request.base_url).rstrip("/")
        return await run(lambda library: _knn(library, spec, req, base))

    @api.post("/metadata", response_model=list[MetadataItem], response_model_exclude_none=True,
              openapi_extra=_body(MetadataRequest, "ids to describe, and the index"))
    async def metadata(request: Request):
        """Path (and URL) of images, or text of captions, by id."""
        req = await _parse(request, MetadataRequest, limit)
        base = str(request.base_url).rstrip("/")
        return await run(lambda library: _metadata(library, req, base))

    return api


def _spec(req: KnnRequest, max_bytes: int) -> SearchSpec:
    if req.image_url:
        raise RetrievalError("image_url is not supported: this server fetches nothing; send the image as base64 in 'image'")
    spec = SearchSpec(index=req.indice_name, target="images" if req.modality == "image" else "texts",
                      k=max(req.num_images, req.num_result_ids or 0))
    if req.text:
        spec.q = req.text
    elif req.image:
        if len(req.image) > max_bytes * 4 // 3 + 4:
            raise RetrievalError(f"image over the upload limit of {max_bytes // 2**20} MB")
        try:
            spec.image = base64.b64decode(req.image, validate=True)
        except (binascii.Error, ValueError):
            raise RetrievalError("image is not valid base64") from None
    elif req.embedding_input:
        spec.vector = req.embedding_input
    else:
        raise RetrievalError("give text, image (base64) or embedding_input")
    return spec


def _knn(library: Library, spec: SearchSpec, req: KnnRequest, base: str) -> list[dict]:
    served = library.get(spec.index)
    if served.empty():
        return []
    vector = library.query_vector(served, spec)
    hits = search_vectors(served.store, vector, spec.k, spec.target)[0]
    if req.deduplicate and spec.target == "images":
        hits = _distinct(served, hits)
    out = []
    for rank, hit in enumerate(hits):
        item = {"id": hit.id, "similarity": hit.score}
        if hit.path is None:
            item["caption"] = hit.text  # captions are at hand: every one carries its text
        elif rank < req.num_images:  # as in clip-retrieval, later ids come bare and /metadata describes them
            item["image_path"] = library.show_path(served, hit.path)
            item["url"] = f"{base}/api/image/{hit.id}?index={served.name}"
        out.append(item)
    return out


def _distinct(served, hits: list) -> list:
    """Hits without repeats of a picture: identical files share one stored vector."""
    vectors = served.catalog.image_vectors_by_id([h.id for h in hits])
    kept, seen = [], set()
    for hit in hits:
        v = vectors.get(hit.id)
        key = v.tobytes() if v is not None else hit.id
        if key not in seen:
            seen.add(key)
            kept.append(hit)
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
