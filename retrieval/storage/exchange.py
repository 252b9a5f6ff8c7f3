"""Embeddings in and out, in clip-retrieval's folder layout (the only module that imports pyarrow).

The layout (what ``clip-retrieval inference`` writes and autofaiss reads)::

    img_emb/img_emb_<N>.npy             float vectors, one row per image, L2-normalized
    metadata/metadata_<N>.parquet       one row per vector of the same shard: image_path, ...
    text_emb/text_emb_<N>.npy           caption vectors (optional)
    text_metadata/metadata_<N>.parquet  their captions (``caption`` column), written by export

Shard numbers <N> run 0, 1, 2... zero-padded to a common width, so that name order is shard
order (autofaiss and clip-retrieval read shards in name order, and row i of the
concatenation is metadata row i). :func:`export` writes float32 vectors and the catalog
``id`` beside ``image_path``. clip-retrieval itself writes float16 vectors and pairs each
caption with an image: :func:`read_layout` takes a ``caption`` column of ``metadata/`` as the
caption corpus when ``text_metadata/`` is absent.

What an imported row is, given that its image file may not be on this machine: ``path`` is
``image_path`` verbatim; ``hash`` is ``import:`` and a digest of the vector (so identical
vectors share one stored vector, as identical files do); ``size`` and ``mtime`` are NULL
(unknown). A later ``retrieval index FOLDER`` run therefore treats an imported row whose
path is under FOLDER as changed: a file found at that path is read and encoded with the
index's model, its row replaced (counted as updated); a row whose file is absent is removed;
rows outside FOLDER stay as imported.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import RetrievalError
from retrieval.storage import frames

try:  # an optional extra: the commands say how to install it
    import pyarrow as pa
    import pyarrow.parquet as pq
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
    if exc.name != "pyarrow":
        raise
    pa = pq = None

log = logging.getLogger(__name__)

#: Rows per shard by default: clip-retrieval's own default batch of written embeddings.
SHARD_ROWS = 1_000_000
#: Rows read or written at a time: memory stays at a block of vectors whatever the shard size.
BLOCK_ROWS = 65_536
#: A float32 vector counts as normalized within this distance of unit length; it is then kept bit for bit.
UNIT_TOLERANCE = 1e-4
#: Beside img_emb/ in an export: the aligner that made the vectors, so `import` needs no --model.
#: clip-retrieval and autofaiss ignore files they do not know.
RECORD_FILE = "retrieval.json"
INSTALL_HINT = "pyarrow is needed for export/import: pip install 'retrieval[exchange]' (or pip install pyarrow)"


class LayoutError(RetrievalError):
    """A folder that is not (or not entirely) in clip-retrieval's embedding layout."""


def _need_pyarrow() -> None:
    if pq is None:
        raise RetrievalError(INSTALL_HINT)


# -- reading the layout ---------------------------------------------------------------
@dataclass
class Shard:
    number: int
    vectors: Path
    metadata: Path
    rows: int = 0


@dataclass
class Layout:
    """A validated embedding folder: its shards, in order, and what they hold."""

    folder: Path
    dim: int
    images: list[Shard]
    captions: list[Shard] = field(default_factory=list)
    #: Column of the caption shards' metadata that holds the text.
    caption_column: str = "caption"
    #: The aligner spec an export recorded (RECORD_FILE); None for other tools' folders.
    model: str | None = None

    @property
    def image_count(self) -> int:
        return sum(s.rows for s in self.images)


def _numbered(folder: Path, prefix: str, suffix: str) -> dict[int, Path]:
    pattern = re.compile(rf"{re.escape(prefix)}_(\d+){re.escape(suffix)}$")
    found: dict[int, Path] = {}
    for path in folder.iterdir() if folder.is_dir() else []:
        match = pattern.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def _shards(root: Path, emb_dir: str, prefix: str, meta_dir: str, needed: set[str]) -> list[Shard]:
    vectors = _numbered(root / emb_dir, prefix, ".npy")
    metadata = _numbered(root / meta_dir, "metadata", ".parquet")
    shards = []
    for number in range(max(vectors, default=-1) + 1):
        if number not in vectors:
            raise LayoutError(f"{root / emb_dir}: shard {number} ({prefix}_{number}.npy) is missing")
        if number not in metadata:
            raise LayoutError(f"{root / meta_dir}: metadata_{number}.parquet is missing (for {vectors[number].name})")
        shards.append(Shard(number, vectors[number], metadata[number]))
    for shard in shards:
        shard.rows = _check_shard(shard, needed)
    return shards


def _check_shard(shard: Shard, needed: set[str]) -> int:
    try:
        array = np.load(shard.vectors, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise LayoutError(f"{shard.vectors}: not a readable .npy file ({exc})") from None
    if array.ndim != 2 or array.dtype.kind != "f":
        raise LayoutError(f"{shard.vectors}: expected a 2-d float array, found {array.dtype} of shape {array.shape}")
    try:
        meta = pq.ParquetFile(shard.metadata)
    except (OSError, pa.ArrowException) as exc:
        raise LayoutError(f"{shard.metadata}: not a readable parquet file ({exc})") from None
    columns = set(meta.schema_arrow.names)
    if needed - columns:
        raise LayoutError(
            f"{shard.metadata}: needs column(s) {', '.join(sorted(needed - columns))}; found {', '.join(sorted(columns)) or 'none'}"
        )
    if meta.metadata.num_rows != array.shape[0]:
        raise LayoutError(
            f"{shard.metadata} has {meta.metadata.num_rows} rows but {shard.vectors.name} has {array.shape[0]} vectors"
        )
    return int(array.shape[0])


def read_layout(folder: str | Path) -> Layout:
    """Find and check the shards of an embedding folder (headers only; vectors are checked while read)."""
    _need_pyarrow()
    root = Path(folder).expanduser()
    if not (root / "img_emb").is_dir():
        raise LayoutError(f"{root}: no img_emb/ folder (expected clip-retrieval's layout: img_emb/, metadata/)")
    images = _shards(root, "img_emb", "img_emb", "metadata", {"image_path"})
    if not images:
        raise LayoutError(f"{root / 'img_emb'}: no img_emb_<N>.npy files")
    dims = {np.load(s.vectors, mmap_mode="r").shape[1] for s in images}
    if len(dims) > 1:
        raise LayoutError(f"{root / 'img_emb'}: shards of different dimensions ({', '.join(map(str, sorted(dims)))})")
    layout = Layout(root, dims.pop(), images, model=_recorded_model(root))
    if (root / "text_emb").is_dir():
        meta_dir = "text_metadata" if (root / "text_metadata").is_dir() else "metadata"
        layout.captions = _shards(root, "text_emb", "text_emb", meta_dir, {"caption"})
        dims = {np.load(s.vectors, mmap_mode="r").shape[1] for s in layout.captions}
        if dims != {layout.dim}:
            raise LayoutError(f"{root / 'text_emb'}: dimension {', '.join(map(str, sorted(dims)))}, images have {layout.dim}")
    return layout


def _recorded_model(root: Path) -> str | None:
    record = root / RECORD_FILE
    if not record.is_file():
        return None
    try:
        model = json.loads(record.read_text()).get("model")
    except (ValueError, AttributeError, OSError) as exc:
        raise LayoutError(f"{record} is not the JSON an export writes ({exc}); delete it and give --model") from None
    return model if isinstance(model, str) and model else None


def vector_blocks(shard: Shard) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 unit vectors) blocks of a shard; refuses non-finite and zero vectors."""
    array = np.load(shard.vectors, mmap_mode="r")
    for start in range(0, len(array), BLOCK_ROWS):
        block = np.asarray(array[start : start + BLOCK_ROWS])
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            row = start + int(np.argmax(bad))
            raise LayoutError(f"{shard.vectors}: row {row} is not finite (NaN or infinity); fix or drop it and import again")
        block = block.astype(np.float32)
        norms = np.linalg.norm(block, axis=1)
        if (norms == 0).any():
            raise LayoutError(f"{shard.vectors}: row {start + int(np.argmax(norms == 0))} is all zeros")
        # Normalized float32 rows are kept bit for bit (an export round-trips exactly); others
        # (clip-retrieval's float16, unnormalized tools) are normalized here, once.
        off = np.abs(norms - 1) > UNIT_TOLERANCE if array.dtype == np.float32 else np.ones(len(block), bool)
        if off.any():
            block[off] /= norms[off, None]
        yield start, block


def metadata_blocks(shard: Shard, columns: list[str]) -> Iterator[dict[str, list]]:
    """The shard's metadata `columns` (those present), BLOCK_ROWS rows at a time, in row order."""
    meta = pq.ParquetFile(shard.metadata)
    present = [c for c in columns if c in meta.schema_arrow.names]
    for batch in meta.iter_batches(batch_size=BLOCK_ROWS, columns=present):
        yield batch.to_pydict()


def check_vectors(layout: Layout) -> None:
    """One pass over every vector: refuse the folder before anything is created if one is bad."""
    for shard in layout.images + layout.captions:
        for _ in vector_blocks(shard):
            pass


def import_hash(vector: np.ndarray) -> str:
    return frames.import_digest(np.ascontiguousarray(vector, "<f4").tobytes())


# -- writing the layout --------------------------------------------------------------------
class ShardWriter:
    """Writes `total` rows as numbered shards of `shard_rows`: vectors to .npy (mapped), metadata to parquet."""

    def __init__(self, root: Path, emb_dir: str, prefix: str, meta_dir: str, total: int, dim: int, shard_rows: int):
        self.emb, self.meta = root / emb_dir, root / meta_dir
        self.emb.mkdir(parents=True, exist_ok=True)
        self.meta.mkdir(parents=True, exist_ok=True)
        self.prefix, self.total, self.dim, self.shard_rows = prefix, total, dim, shard_rows
        self.width = len(str(max(0, (total - 1) // shard_rows)))
        self.number, self.filled, self.written = -1, 0, 0
        self.array: np.memmap | None = None
        self.table: Any = None  # a pyarrow ParquetWriter

    def _open_next(self) -> np.memmap:
        self.close()
        self.number += 1
        rows = min(self.shard_rows, self.total - self.written)
        name = str(self.number).zfill(self.width)
        self.array = np.lib.format.open_memmap(self.emb / f"{self.prefix}_{name}.npy", mode="w+", dtype=np.float32,
                                               shape=(rows, self.dim))
        self.table_path = self.meta / f"metadata_{name}.parquet"
        self.filled = 0
        return self.array

    def add(self, vectors: np.ndarray, columns: dict[str, list]) -> None:
        start = 0
        while start < len(vectors):
            array = self.array
            if array is None or self.filled == len(array):
                array = self._open_next()
            take = min(len(vectors) - start, len(array) - self.filled)
            array[self.filled : self.filled + take] = vectors[start : start + take]
            part = pa.table({k: v[start : start + take] for k, v in columns.items()})
            if self.table is None:
                self.table = pq.ParquetWriter(self.table_path, part.schema)
            self.table.write_table(part)
            self.filled += take
            self.written += take
            start += take

    def close(self) -> None:
        if self.array is not None:
            self.array.flush()
            self.array = None
        if self.table is not None:
            self.table.close()
            self.table = None


@dataclass
class ExportSummary:
    folder: str
    images: int
    captions: int
    image_shards: int
    caption_shards: int

    def line(self) -> str:
        return (f"exported {self.images} image vectors in {self.image_shards} shard(s) and {self.captions} caption "
                f"vectors in {self.caption_shards} shard(s) to {self.folder}")


def export(catalog, out: str | Path, shard_rows: int = SHARD_ROWS, progress=None, faces: bool = False) -> ExportSummary:
    """Write the catalog's published vectors to `out` in clip-retrieval's layout, a block at a time.

    With `faces`, the faces too (docs/people.md): ``faces/face_emb.npy`` (dlib's 128-d
    descriptors, float32, one row per face and file) and ``faces/faces.parquet`` (face_id,
    image_id, image_path, x, y, w, h, score, person_id, person_name).

    The folder appears complete or not at all: it is written beside `out` and renamed.
    """
    _need_pyarrow()
    if shard_rows < 1:
        raise RetrievalError("--shard-size must be at least 1")
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RetrievalError(f"{out} exists and is not an empty folder; choose a new OUT folder")
    work = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with catalog.snapshot():  # one generation, even while an index run publishes
            # Every vector of the image index: a video's frames are rows of their own (time, frame).
            n_images, n_captions = catalog.indexed_count(), catalog.count("captions")
            videos = frames.videos(catalog.db.conn) if catalog.has_frames else {}
            pairs = _has_pairs(catalog)
            if progress is not None:
                progress.start(n_images + n_captions, "exporting")
            images = ShardWriter(work, "img_emb", "img_emb", "metadata", n_images, catalog.dim, shard_rows)
            for ids, vectors in catalog.image_vectors():
                files = frames.file_ids(ids).tolist()
                rows = catalog.rows_by_id("images", sorted(set(files)))
                columns: dict[str, Any] = {"image_path": [rows[i]["path"] for i in files], "id": ids.tolist()}
                if videos:  # extra columns only for an index holding videos: a photo index exports as before
                    columns.update(_video_columns(catalog, ids, files, videos))
                if pairs:  # and only for one holding RAW+JPEG pairs or Live Photos
                    columns.update(_pair_columns([rows[i] for i in files]))
                images.add(vectors, columns)
                if progress is not None:
                    progress.advance(len(ids))
            images.close()
            captions = ShardWriter(work, "text_emb", "text_emb", "text_metadata", n_captions, catalog.dim, shard_rows)
            for ids, vectors in catalog.caption_vectors() if n_captions else []:
                rows = catalog.rows_by_id("captions", ids.tolist())
                captions.add(vectors, {"caption": [rows[i]["text"] for i in ids.tolist()], "id": ids.tolist()})
                if progress is not None:
                    progress.advance(len(ids))
            captions.close()
            record = {"model": catalog.get_meta("model"), "model_identity": catalog.get_meta("model_identity"),
                      "dim": catalog.dim, "images": n_images, "captions": n_captions}
            if faces:
                record["faces"] = _export_faces(catalog, work / "faces")
        (work / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if not n_captions:
            shutil.rmtree(work / "text_emb")
            shutil.rmtree(work / "text_metadata")
        if out.exists():
            out.rmdir()
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if progress is not None:
            progress.close()
    return ExportSummary(str(out), n_images, n_captions, images.number + 1, captions.number + 1)


def _video_columns(catalog, ids: np.ndarray, files: list[int], videos: dict[int, int]) -> dict[str, Any]:
    """The metadata columns of an index holding videos, typed (a shard of photos alone would
    otherwise get null columns that the next shard's values do not fit): ``media`` ("photo" or
    "video"), ``time`` (seconds into the video; null for a photo) and ``frame`` (its number
    in the video, 0 first; null for a photo). ``id`` is the vector's FAISS id (retrieval/storage/frames.py)."""
    seconds = frames.times(catalog.db.conn, ids.tolist())
    numbers = frames.frame_numbers(ids).tolist()
    video = [f in videos for f in files]
    return {
        "media": pa.array(["video" if v else "photo" for v in video], pa.string()),
        "time": pa.array([seconds.get(i) for i in ids.tolist()], pa.float64()),
        "frame": pa.array([n if v else None for n, v in zip(numbers, video)], pa.int64()),
    }


def _has_pairs(catalog) -> bool:
    """Whether any indexed photo has a companion (the RAW of a RAW+JPEG pair) or a motion file."""
    if not catalog.has_pairs():
        return False
    return catalog.db.execute(
        "SELECT 1 FROM images WHERE companions IS NOT NULL OR motion IS NOT NULL LIMIT 1").fetchone() is not None


def _pair_columns(rows: list[dict]) -> dict[str, Any]:
    """The metadata columns of an index holding pairs or Live Photos, typed (see _video_columns):
    ``companions`` (the paths of a photo's other files of one shot, a RAW beside its JPEG; null
    when none) and ``motion`` (a Live Photo's .mov; null when none), as search results give them."""
    return {
        "companions": pa.array([_companions(r.get("companions")) for r in rows], pa.list_(pa.string())),
        "motion": pa.array([r.get("motion") for r in rows], pa.string()),
    }


def _companions(stored: str | None) -> list[str] | None:
    return [str(p) for p in json.loads(stored)] if stored else None


# -- reading for import (retrieval.ingest.embeddings) -------------------------------------
#: Metadata columns an import reads beside ``image_path`` when they are there (an export of an
#: index with videos, pairs or Live Photos writes them; older exports and other tools do not).
_IMPORTED = ["id", "frame", "time", "companions", "motion"]


@dataclass
class ImageBlock:
    """Rows of an image shard, in order: vectors and their metadata (None: the column is absent)."""

    ids: list[int] | None
    paths: list[str]
    vectors: np.ndarray
    #: A video's frame number per row (None for a photo's row); None: no video in the export.
    frames: list[int | None] | None = None
    #: Seconds into its video per row (None for a photo).
    times: list[float | None] | None = None
    companions: list[list[str] | None] | None = None
    motion: list[str | None] | None = None


def image_rows(layout: Layout) -> Iterator[ImageBlock]:
    """Blocks of rows over every image shard, in order: a video's frames are rows of their own."""
    for shard in layout.images:
        meta = metadata_blocks(shard, ["image_path", *_IMPORTED])
        pending: dict[str, list] = {}
        for _, vectors in vector_blocks(shard):
            while len(pending.get("image_path", [])) < len(vectors):
                block = next(meta)
                for name, values in block.items():
                    pending.setdefault(name, []).extend(values)
            taken: dict[str, list] = {}
            for name in list(pending):
                taken[name], pending[name] = pending[name][: len(vectors)], pending[name][len(vectors) :]
            paths = taken["image_path"]
            if any(p is None or p == "" for p in paths):
                raise LayoutError(f"{shard.metadata}: an empty image_path")
            numbers = taken.get("frame")
            if numbers is not None and any(n is not None and (not float(n).is_integer() or n < 0) for n in numbers):
                raise LayoutError(f"{shard.metadata}: the frame column must hold whole numbers from 0 (or nulls for photos)")
            times = taken.get("time")
            if numbers is not None and any(n is not None and (times is None or times[j] is None)
                                           for j, n in enumerate(numbers)):
                raise LayoutError(f"{shard.metadata}: a video's frame row needs its time (seconds into the video)")
            ids = taken.get("id", [None] * len(paths))
            yield ImageBlock(_ids(shard, ids), [str(p) for p in paths], vectors,
                             [None if n is None else int(n) for n in numbers] if numbers is not None else None,
                             times, taken.get("companions"), taken.get("motion"))


def _ids(shard: Shard, ids: list) -> list[int] | None:
    """The block's catalog ids from an ``id`` column (positive integers), or None without one."""
    if all(i is None for i in ids):
        return None
    try:
        out = [int(i) for i in ids]
    except (TypeError, ValueError):
        out = []
    if len(out) != len(ids) or min(out) < 1 or any(float(i) != o for i, o in zip(ids, out)):
        raise LayoutError(f"{shard.metadata}: the id column must hold positive whole numbers in every row")
    return out


def caption_rows(layout: Layout) -> Iterator[tuple[list[str], np.ndarray]]:
    for shard in layout.captions:
        meta = metadata_blocks(shard, [layout.caption_column])
        pending: list = []
        for _, vectors in vector_blocks(shard):
            while len(pending) < len(vectors):
                pending += next(meta)[layout.caption_column]
            texts, pending = pending[: len(vectors)], pending[len(vectors) :]
            yield [str(t) for t in texts], vectors


def _export_faces(catalog, folder: Path) -> int:
    """The faces of the indexed images, as an array of descriptors and a table beside it; returns the rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from retrieval.storage.faces import FACE_DIM, has_faces

    folder.mkdir()
    rows = [] if not has_faces(catalog) else catalog.db.execute(
        "SELECT faces.id, images.id, images.path, faces.x, faces.y, faces.w, faces.h, faces.score, faces.person_id, "
        "people.name, faces.embedding FROM faces JOIN images ON images.hash = faces.hash AND images.status = 'ok' "
        "LEFT JOIN people ON people.id = faces.person_id ORDER BY faces.id, images.id"
    ).fetchall()
    names = ["face_id", "image_id", "image_path", "x", "y", "w", "h", "score", "person_id", "person_name"]
    pq.write_table(pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)}), folder / "faces.parquet")
    vectors = np.frombuffer(b"".join(row[10] for row in rows), dtype="<f4").reshape(-1, FACE_DIM)
    np.save(folder / "face_emb.npy", vectors.astype(np.float32))
    return len(rows)


def export_index(index: str, out: str | Path, shard_rows: int = SHARD_ROWS, progress=None,
                 faces: bool = False) -> ExportSummary:
    """Export an index's published vectors (and caption corpus, and with `faces` its faces) to `out`
    in clip-retrieval's layout."""
    from retrieval.storage.store import IndexStore

    store = IndexStore.open(index)
    try:
        return export(store.catalog, out, shard_rows, progress, faces)
    finally:
        store.close()
