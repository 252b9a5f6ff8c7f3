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

import hashlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.errors import RetrievalError

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
    layout = Layout(root, dims.pop(), images)
    if (root / "text_emb").is_dir():
        meta_dir = "text_metadata" if (root / "text_metadata").is_dir() else "metadata"
        layout.captions = _shards(root, "text_emb", "text_emb", meta_dir, {"caption"})
        dims = {np.load(s.vectors, mmap_mode="r").shape[1] for s in layout.captions}
        if dims != {layout.dim}:
            raise LayoutError(f"{root / 'text_emb'}: dimension {', '.join(map(str, sorted(dims)))}, images have {layout.dim}")
    return layout


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
    return "import:" + hashlib.sha256(np.ascontiguousarray(vector, "<f4").tobytes()).hexdigest()[:40]


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
        self.array = self.table = None

    def _open_next(self) -> None:
        self.close()
        self.number += 1
        rows = min(self.shard_rows, self.total - self.written)
        name = str(self.number).zfill(self.width)
        self.array = np.lib.format.open_memmap(self.emb / f"{self.prefix}_{name}.npy", mode="w+", dtype=np.float32,
                                               shape=(rows, self.dim))
        self.table_path = self.meta / f"metadata_{name}.parquet"
        self.filled = 0

    def add(self, vectors: np.ndarray, columns: dict[str, list]) -> None:
        start = 0
        while start < len(vectors):
            if self.array is None or self.filled == len(self.array):
                self._open_next()
            take = min(len(vectors) - start, len(self.array) - self.filled)
            self.array[self.filled : self.filled + take] = vectors[start : start + take]
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


def export(catalog, out: str | Path, shard_rows: int = SHARD_ROWS, progress=None) -> ExportSummary:
    """Write the catalog's published vectors to `out` in clip-retrieval's layout, a block at a time.

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
            n_images, n_captions = catalog.count("images"), catalog.count("captions")
            if progress is not None:
                progress.start(n_images + n_captions, "exporting")
            images = ShardWriter(work, "img_emb", "img_emb", "metadata", n_images, catalog.dim, shard_rows)
            for ids, vectors in catalog.image_vectors():
                rows = catalog.rows_by_id("images", ids.tolist())
                images.add(vectors, {"image_path": [rows[i]["path"] for i in ids.tolist()], "id": ids.tolist()})
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


# -- importing -----------------------------------------------------------------------------
@dataclass
class ImportSummary:
    index: str
    images: int
    captions: int
    generation: int

    def line(self) -> str:
        return f"imported {self.images} image vectors and {self.captions} captions into {self.index} (generation {self.generation})"


def image_rows(layout: Layout) -> Iterator[tuple[list[int] | None, list[str], np.ndarray]]:
    """(ids or None, image paths, vectors) blocks over every image shard, in order."""
    for shard in layout.images:
        meta = metadata_blocks(shard, ["image_path", "id"])
        pending: dict[str, list] = {"image_path": [], "id": []}
        for _, vectors in vector_blocks(shard):
            while len(pending["image_path"]) < len(vectors):
                block = next(meta)
                pending["image_path"] += block["image_path"]
                pending["id"] += block.get("id", [None] * len(block["image_path"]))
            paths, pending["image_path"] = pending["image_path"][: len(vectors)], pending["image_path"][len(vectors) :]
            ids, pending["id"] = pending["id"][: len(vectors)], pending["id"][len(vectors) :]
            if any(p is None or p == "" for p in paths):
                raise LayoutError(f"{shard.metadata}: an empty image_path")
            yield _ids(shard, ids), [str(p) for p in paths], vectors


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


def import_into(store, aligner, layout: Layout, *, on_disk: bool = False, memory_limit: int | None = None,
                progress=None) -> ImportSummary:
    """Fill a new, empty index from `layout` and publish it as generation 1 (one transaction)."""
    from retrieval.ann import index as faiss_index
    from retrieval.ingest import pipeline as indexer
    from retrieval.storage import integrity
    from retrieval.storage.catalog import to_blob
    from retrieval.storage.staging import Plan

    catalog = store.catalog
    with store.write_lock():
        store.bind_model(aligner)
        count, next_id = 0, 1
        if progress is not None:
            progress.start(layout.image_count, "importing")
        # Rows are committed in blocks; nothing is searchable before the publishing commit below.
        with catalog.quick_commits():
            for ids, paths, vectors in image_rows(layout):
                ids = ids or list(range(next_id, next_id + len(paths)))
                hashes = [import_hash(v) for v in vectors]
                with catalog.transaction() as conn:
                    conn.executemany("INSERT OR IGNORE INTO vectors (hash, vector) VALUES (?, ?)",
                                     zip(hashes, (to_blob(v) for v in vectors)))
                    conn.executemany("INSERT OR IGNORE INTO images (id, path, size, mtime, hash) VALUES (?, ?, NULL, NULL, ?)",
                                     zip(ids, paths, hashes))
                count += len(paths)
                next_id = max(next_id, max(ids) + 1)
                if progress is not None:
                    progress.advance(len(paths))
            if catalog.count("images") != count:
                raise LayoutError(
                    f"{count - catalog.count('images')} metadata row(s) repeat the image_path or id of an earlier row; "
                    "each image must appear once"
                )
            captions = 0
            for texts, vectors in caption_rows(layout):
                with catalog.transaction() as conn:
                    conn.executemany("INSERT OR IGNORE INTO captions (id, text, vector) VALUES (?, ?, ?)",
                                     ((captions + i + 1, t, to_blob(v)) for i, (t, v) in enumerate(zip(texts, vectors))))
                captions += len(texts)
        if progress is not None:
            progress.close()
        limit = memory_limit or faiss_index.memory_limit_default()
        with catalog.publishing() as conn:
            plan = Plan(final_count=count, next_id=next_id)
            # The indexer's own choice of index type and writer (in memory, 8-bit, or lists on disk).
            meta = indexer._write_image_index(store, None, plan, 0, 1, limit, trust_previous=False, on_disk=on_disk)
            integrity.record(conn, store.faiss_path("images", 1), 1, count)
            if captions:
                ids, vecs = indexer._caption_arrays(catalog, None)
                index, _ = faiss_index.build(ids, vecs, factory="IDMap2,Flat")
                faiss_index.write(index, store.faiss_path("captions", 1))
                integrity.record(conn, store.faiss_path("captions", 1), 1, len(ids))
                meta["captions_generation"] = 1
            catalog.set_meta(next_id=next_id, generation=1, imported_from=str(layout.folder), **meta)
    store.prune(1)
    return ImportSummary(str(store.folder), count, catalog.count("captions"), 1)


def import_embeddings(folder: str | Path, index: str, model: str, *, on_disk: bool = False,
                      memory_limit: int | None = None, progress=None, aligner=None) -> ImportSummary:
    """Make a new index `index` from an embedding folder, without encoding anything.

    Everything is checked before the index folder is created (layout, row counts, dimension
    against `model`, every vector finite); a failure after that removes the folder again.
    """
    from retrieval.storage.store import IndexStore, resolve

    layout = read_layout(folder)
    target = resolve(index)
    if target.exists() and any(target.iterdir()):
        raise RetrievalError(f"{target} already exists: import makes a new index; choose another --index or delete it")
    if aligner is None:
        from retrieval.aligners import load_aligner

        aligner = load_aligner(model)
    if aligner.dim != layout.dim:
        raise LayoutError(
            f"{layout.folder} holds {layout.dim}-d vectors but {aligner.spec!r} makes {aligner.dim}-d vectors: "
            "import with the model that produced them (--model)"
        )
    check_vectors(layout)
    created = not target.exists()
    store = IndexStore.open(target, create=True)
    try:
        return import_into(store, aligner, layout, on_disk=on_disk, memory_limit=memory_limit, progress=progress)
    except BaseException:
        store.close()
        # Nothing half-built stays behind: the folder was empty or absent before.
        shutil.rmtree(target, ignore_errors=True)
        if not created:
            target.mkdir(exist_ok=True)
        raise
    finally:
        store.close()


def export_index(index: str, out: str | Path, shard_rows: int = SHARD_ROWS, progress=None) -> ExportSummary:
    """Export an index's published vectors (and caption corpus) to `out` in clip-retrieval's layout."""
    from retrieval.storage.store import IndexStore

    store = IndexStore.open(index)
    try:
        return export(store.catalog, out, shard_rows, progress)
    finally:
        store.close()
