"""Embeddings in and out in clip-retrieval's layout: export, import, and what a bad folder gets."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ColorAligner

from retrieval.cli import main
from retrieval.ingest import pipeline as indexer
from retrieval.ingest.embeddings import import_embeddings
from retrieval.ingest.pipeline import IndexSettings
from retrieval.search.query import search_vectors
from retrieval.storage.exchange import LayoutError, export_index
from retrieval.storage.store import IndexStore

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def indexed(tmp_path, image_dir, color_aligner):
    """A real index of 12 generated images and 3 captions (plumbing aligner)."""
    captions = tmp_path / "captions.txt"
    captions.write_text("a red field\na blue corner\na green wash\n")
    store = IndexStore.open(tmp_path / "src", create=True)
    indexer.run(store, color_aligner, [image_dir], captions_file=captions, settings=IndexSettings(workers=0))
    store.close()
    return tmp_path / "src"


def catalog_state(folder) -> tuple[dict, dict, dict]:
    store = IndexStore.open(folder)
    cat = store.catalog
    files = {row.path: row.id for row in cat.files().values()}
    vectors = {int(i): v.tobytes() for ids, vs in cat.image_vectors() for i, v in zip(ids, vs)}
    captions = {r[0]: (r[1], bytes(r[2])) for r in cat.db.execute("SELECT id, text, vector FROM captions")}
    store.close()
    return files, vectors, captions


def test_export_then_import_round_trips_ids_and_vectors_exactly(indexed, tmp_path, color_aligner):
    out = tmp_path / "emb"
    summary = export_index(str(indexed), out, shard_rows=5)
    assert (summary.images, summary.image_shards, summary.captions, summary.caption_shards) == (12, 3, 3, 1)
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == ["img_emb_0.npy", "img_emb_1.npy", "img_emb_2.npy"]
    first = np.load(out / "img_emb" / "img_emb_0.npy")
    assert first.dtype == np.float32 and first.shape == (5, color_aligner.dim)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    meta = pq.read_table(out / "metadata" / "metadata_0.parquet")
    assert meta.column_names == ["image_path", "id"] and meta.num_rows == 5
    assert pq.read_table(out / "text_metadata" / "metadata_0.parquet").column_names == ["caption", "id"]
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]

    imported = import_embeddings(out, str(tmp_path / "copy"), "test/color", aligner=color_aligner)
    assert (imported.images, imported.captions, imported.generation) == (12, 3, 1)
    assert catalog_state(tmp_path / "copy") == catalog_state(indexed)
    # Searches of the copy give what the original gives.
    src, dst = IndexStore.open(indexed), IndexStore.open(tmp_path / "copy")
    queries = np.stack([np.frombuffer(v, np.float32) for v in list(catalog_state(indexed)[1].values())[:4]])
    for target in ("images", "texts"):
        a, b = search_vectors(src, queries, 5, target), search_vectors(dst, queries, 5, target)
        assert [[(h.id, h.path, h.text, h.score) for h in r] for r in a] == [[(h.id, h.path, h.text, h.score) for h in r] for r in b]
    src.close()
    dst.close()


def clip_retrieval_folder(root, vectors, paths, captions=None, caption_vectors=None, shard=None):
    """A folder as `clip-retrieval inference` writes it: float16 vectors, paired captions in metadata/."""
    shard = shard or len(vectors)
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    if captions is not None:
        (root / "text_emb").mkdir()
    for n, start in enumerate(range(0, len(vectors), shard)):
        np.save(root / "img_emb" / f"img_emb_{n}.npy", vectors[start : start + shard].astype(np.float16))
        cols = {"image_path": paths[start : start + shard]}
        if captions is not None:
            cols["caption"] = captions[start : start + shard]
            np.save(root / "text_emb" / f"text_emb_{n}.npy", caption_vectors[start : start + shard].astype(np.float16))
        pq.write_table(pa.table(cols), root / "metadata" / f"metadata_{n}.parquet")
    return root


def unit(n, dim, seed):
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_import_of_clip_retrieval_output_with_float16_and_paired_captions(tmp_path, color_aligner):
    vectors, texts = unit(30, 48, 1), unit(30, 48, 2)
    paths = [f"/data/{i:03d}.jpg" for i in range(30)]
    folder = clip_retrieval_folder(tmp_path / "cr", vectors, paths, [f"caption {i}" for i in range(30)], texts, shard=8)
    summary = import_embeddings(folder, str(tmp_path / "idx"), "test/color", aligner=color_aligner)
    assert (summary.images, summary.captions) == (30, 30)
    store = IndexStore.open(tmp_path / "idx")
    files = store.catalog.files()
    assert [files[p].id for p in paths] == list(range(1, 31))  # no id column: numbered in shard order
    assert files[paths[0]].size is None and files[paths[0]].hash.startswith("import:")
    ids, stored = next(store.catalog.image_vectors())
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1, atol=1e-6)  # float16 renormalized in float32
    np.testing.assert_allclose(stored, vectors, atol=2e-3)
    hits = search_vectors(store, vectors[7:8], 1)[0]
    assert hits[0].path == paths[7]
    assert search_vectors(store, texts[3:4], 1, "texts")[0][0].text == "caption 3"
    assert store.catalog.get_meta("model") == "test/color"
    store.close()


def test_a_later_index_run_of_the_real_folder_reencodes_imported_rows(indexed, tmp_path, image_dir, color_aligner):
    export_index(str(indexed), tmp_path / "emb")
    import_embeddings(tmp_path / "emb", str(tmp_path / "copy"), "test/color", aligner=color_aligner)
    store = IndexStore.open(tmp_path / "copy")
    summary = indexer.run(store, color_aligner, [image_dir], settings=IndexSettings(workers=0))
    # Imported rows carry no size or mtime, so each file found at its path is read and encoded.
    assert (summary.updated, summary.encoded, summary.removed, summary.added) == (12, 12, 0, 0)
    assert not [r for r in store.catalog.files().values() if r.hash.startswith("import:")]
    assert indexer.run(store, color_aligner, [image_dir], settings=IndexSettings(workers=0)).encoded == 0
    store.close()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("nan", "img_emb_1.npy: row 2 is not finite"),
        ("missing_shard", "shard 1 (img_emb_1.npy) is missing"),
        ("missing_metadata", "metadata_1.parquet is missing"),
        ("columns", "needs column(s) image_path; found caption, url"),
        ("rows", "has 4 rows but img_emb_1.npy has 5 vectors"),
        ("dim", "holds 40-d vectors but 'test/color' makes 48-d vectors"),
        ("zero", "img_emb_0.npy: row 0 is all zeros"),
        ("duplicate", "repeat the image_path or id of an earlier row"),
        ("no_layout", "no img_emb/ folder"),
        ("bad_ids", "the id column must hold positive whole numbers"),
    ],
)
def test_a_bad_folder_is_refused_with_one_line_and_leaves_nothing(tmp_path, color_aligner, damage, message):
    dim = 40 if damage == "dim" else 48
    vectors = unit(10, dim, 3)
    paths = [f"/data/{i}.jpg" for i in range(10)]
    if damage == "duplicate":
        paths[7] = paths[1]
    folder = clip_retrieval_folder(tmp_path / "cr", vectors, paths, shard=5)
    emb, meta = folder / "img_emb", folder / "metadata"
    if damage == "nan":
        bad = np.load(emb / "img_emb_1.npy")
        bad[2, 5] = np.nan
        np.save(emb / "img_emb_1.npy", bad)
    elif damage == "missing_shard":
        np.save(emb / "img_emb_2.npy", vectors[:5])
        pq.write_table(pa.table({"image_path": ["/x"] * 5}), meta / "metadata_2.parquet")
        (emb / "img_emb_1.npy").unlink()
    elif damage == "missing_metadata":
        (meta / "metadata_1.parquet").unlink()
    elif damage == "columns":
        pq.write_table(pa.table({"url": paths[:5], "caption": ["c"] * 5}), meta / "metadata_0.parquet")
    elif damage == "rows":
        pq.write_table(pa.table({"image_path": paths[5:9]}), meta / "metadata_1.parquet")
    elif damage == "zero":
        np.save(emb / "img_emb_0.npy", np.zeros((5, dim), np.float16))
    elif damage == "no_layout":
        shutil.rmtree(emb)
    elif damage == "bad_ids":
        pq.write_table(pa.table({"image_path": paths[5:], "id": [6, 7, 0, 9, 10]}), meta / "metadata_1.parquet")
    target = tmp_path / "new"
    with pytest.raises(LayoutError) as err:
        import_embeddings(folder, str(target), "test/color", aligner=ColorAligner())
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not target.exists()


def test_import_refuses_an_existing_index_and_export_a_used_folder(indexed, tmp_path, color_aligner):
    from retrieval.errors import RetrievalError

    export_index(str(indexed), tmp_path / "emb")
    with pytest.raises(RetrievalError, match="already exists"):
        import_embeddings(tmp_path / "emb", str(indexed), "test/color", aligner=color_aligner)
    with pytest.raises(RetrievalError, match="not an empty folder"):
        export_index(str(indexed), tmp_path / "emb")
    assert catalog_state(indexed)[0]  # the existing index is untouched


def test_export_and_import_commands(indexed, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(indexed), str(tmp_path / "emb"), "--shard-size", "4", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["image_shards"] == 3
    # The folder's vectors are 48-d; the packaged default model makes 384-d ones: refused in one line
    # (as another tool's folder, without the record of the model an export writes).
    (tmp_path / "emb" / "retrieval.json").unlink()
    result = runner.invoke(main, ["import", str(tmp_path / "emb"), "--index", str(tmp_path / "x"), "--model", "default"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "holds 48-d vectors but 'default' makes 384-d vectors" in result.output
    assert not (tmp_path / "x").exists()


def test_autofaiss_builds_an_index_from_an_export(indexed, tmp_path):
    """autofaiss reads the export as it reads clip-retrieval's output (skipped when not installed)."""
    autofaiss = pytest.importorskip("autofaiss")
    out = tmp_path / "emb"
    export_index(str(indexed), out, shard_rows=5)
    index, _ = autofaiss.build_index(
        embeddings=str(out / "img_emb"), index_path=str(tmp_path / "knn.index"),
        index_infos_path=str(tmp_path / "infos.json"), metric_type="ip",
        # (autofaiss 2.18 pins numpy<2; under numpy 2 its writing of infos.json fails, so keep the index in memory)
        save_on_disk=False,
        max_index_memory_usage="100MB", current_memory_available="500MB", verbose=40,
    )
    # Row i of autofaiss's index is row i of the shards in name order, so metadata gives the catalog id.
    vectors = np.concatenate([np.load(p) for p in sorted((out / "img_emb").glob("*.npy"))])
    ids = [i for p in sorted((out / "metadata").glob("*.parquet")) for i in pq.read_table(p).column("id").to_pylist()]
    _, rows = index.search(vectors, 1)
    assert [ids[r] for r in rows[:, 0]] == ids


def test_without_pyarrow_the_commands_say_how_to_install_it(indexed, tmp_path, monkeypatch):
    from retrieval.storage import exchange

    monkeypatch.setattr(exchange, "pq", None)
    result = CliRunner().invoke(main, ["export", str(indexed), str(tmp_path / "emb")])
    assert result.exit_code == 1 and "pip install 'retrieval[exchange]'" in result.output
    assert not (tmp_path / "emb").exists()


def test_import_on_disk_publishes_an_index_with_its_lists_on_disk(tmp_path, color_aligner):
    vectors = unit(64, 48, 4)
    folder = clip_retrieval_folder(tmp_path / "cr", vectors, [f"/data/{i}.jpg" for i in range(64)])
    import_embeddings(folder, str(tmp_path / "idx"), "test/color", on_disk=True, aligner=color_aligner)
    store = IndexStore.open(tmp_path / "idx")
    assert (store.folder / "images-1.ivfdata").exists() and "_HNSW" in store.catalog.get_meta("index_factory")
    assert [h.path for h in search_vectors(store, vectors[9:10], 1)[0]] == ["/data/9.jpg"]
    store.close()
