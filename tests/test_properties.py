"""Property tests: whatever the input, the parsers and the query layer give a result or a
RetrievalError with a message, never another exception (which the CLI would show as a traceback)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ColorAligner, make_image
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from retrieval.errors import RetrievalError
from retrieval.evaluation.datasets import Dataset, load_dataset
from retrieval.ingest.captions import read_captions
from retrieval.search.query import Query, query_vector

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON values of every type, a few levels deep.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
names = st.one_of(st.sampled_from(["a.jpg", "b.png", "sub/c.jpg", "../x.jpg", "~/y.png", ""]), json_values)


def _file(folder: Path, name: str, content: bytes | str) -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return path


def _images(folder: Path) -> None:
    make_image(folder / "a.jpg", seed=1)
    make_image(folder / "b.png", seed=2)
    make_image(folder / "sub" / "c.jpg", seed=3)


def _outcome(call):
    try:
        return call()
    except RetrievalError as exc:
        message = str(exc)
        assert message and "\n" not in message.strip(), message
        return exc


# -- caption corpora ---------------------------------------------------------------------------------------
@SETTINGS
@given(content=st.binary(max_size=300) | st.text(max_size=300), suffix=st.sampled_from([".txt", ".csv", ".tsv"]))
def test_caption_corpora_parse_or_fail_clearly(content, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        result = _outcome(lambda: read_captions(_file(Path(tmp), "caps" + suffix, content)))
    if not isinstance(result, Exception):
        assert result and all(isinstance(c, str) and c.strip() == c and c for c in result)


# -- pairs files ---------------------------------------------------------------------------------------------
cells = st.one_of(st.sampled_from(["a.jpg", "b.png", "sub/c.jpg", "missing.jpg", "", "a dog", '"quoted, comma"']),
                  st.text(max_size=10))
headers = st.lists(st.sampled_from(["image", "caption", "path", "text", "split", "other", "Image ", ""]),
                   min_size=0, max_size=4)


@SETTINGS
@given(header=headers, rows=st.lists(st.lists(cells, max_size=5), max_size=6), tsv=st.booleans(),
       skip=st.booleans(), split=st.sampled_from(["test", "train"]))
def test_pairs_files_parse_or_fail_clearly(header, rows, tsv, skip, split):
    sep = "\t" if tsv else ","
    text = "\n".join(sep.join(r) for r in [header, *rows])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _images(folder)
        path = _file(folder, "pairs.tsv" if tsv else "pairs.csv", text)
        result = _outcome(lambda: load_dataset(str(path), split=split, skip_missing=skip))
    if isinstance(result, Dataset):
        assert result.captions and len(result.caption_image) == len(result.captions)


# -- Karpathy and COCO JSON ------------------------------------------------------------------------------------
sentences = st.lists(st.one_of(st.fixed_dictionaries({"raw": st.one_of(st.text(max_size=10), json_values)}), json_values),
                     max_size=3)
karpathy_entries = st.lists(
    st.one_of(
        st.fixed_dictionaries({"filename": names, "split": st.sampled_from(["test", "train", 3, None]),
                               "sentences": st.one_of(sentences, json_values)},
                              optional={"filepath": st.one_of(st.sampled_from(["sub", ""]), json_values)}),
        json_values,
    ),
    max_size=4,
)
coco = st.fixed_dictionaries({
    "images": st.lists(st.one_of(st.fixed_dictionaries({"id": json_values, "file_name": names}), json_values), max_size=4),
    "annotations": st.one_of(st.lists(st.one_of(
        st.fixed_dictionaries({"image_id": json_values, "caption": st.one_of(st.text(max_size=10), json_values)}),
        json_values), max_size=4), json_values),
})


@SETTINGS
@given(data=st.one_of(st.fixed_dictionaries({"images": karpathy_entries}), coco, json_values),
       skip=st.booleans(), split=st.sampled_from(["test", "train"]))
def test_karpathy_and_coco_json_parse_or_fail_clearly(data, skip, split):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _images(folder)
        path = _file(folder, "captions.json", json.dumps(data))
        result = _outcome(lambda: load_dataset(str(path), split=split, skip_missing=skip))
    if isinstance(result, Dataset):
        assert len(result.caption_image) == len(result.captions)


@SETTINGS
@given(content=st.binary(max_size=200))
def test_json_that_is_not_json_fails_clearly(content):
    with tempfile.TemporaryDirectory() as tmp:
        _outcome(lambda: load_dataset(str(_file(Path(tmp), "captions.json", content))))


# -- the query layer -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    from retrieval.ingest.pipeline import IndexSettings, run
    from retrieval.storage.store import IndexStore

    root = tmp_path_factory.mktemp("props")
    for i in range(6):
        make_image(root / "pics" / f"{i}.png", seed=i)
    store = IndexStore.open(root / "idx", create=True)
    try:
        run(store, ColorAligner(), [root / "pics"], settings=IndexSettings(workers=0))
    finally:
        store.close()
    return root


weights = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3))
texts = st.one_of(st.none(), st.text(max_size=20))


@given(text=texts, weight=weights, negatives=st.lists(st.text(max_size=10), max_size=3),
       image=st.sampled_from([None, "0.png", "missing.png", "pics", "not-an-image.png"]),
       k=st.integers(-5, 10**6), target=st.sampled_from(["images", "texts", "other"]))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], max_examples=80, deadline=None)
def test_any_query_gives_hits_or_a_clear_error(small_index, text, weight, negatives, image, k, target):
    from retrieval.api import open_index

    if image == "not-an-image.png":
        (small_index / image).write_text("hello")
    image_path = None if image is None else str(small_index / ("pics/0.png" if image == "0.png" else image))
    idx = open_index(str(small_index / "idx"))
    idx._aligner = ColorAligner()
    try:
        result = _outcome(lambda: idx.search(text, image=image_path, k=k, weight=weight, negatives=negatives, target=target))
    finally:
        idx.close()
    if not isinstance(result, Exception):
        assert len(result) <= min(k, 6)
        assert [h.rank for h in result] == list(range(1, len(result) + 1))
        assert all(np.isfinite(h.score) for h in result)


@SETTINGS
@given(weight=st.floats(0, 1), negatives=st.lists(st.text(min_size=1, max_size=10), max_size=3), text=st.text(min_size=1, max_size=20))
def test_query_vectors_are_unit_length_or_refused(weight, negatives, text):
    vector = _outcome(lambda: query_vector(ColorAligner(), Query(text=text, weight=weight, negatives=negatives)))
    assume(not isinstance(vector, Exception))
    assert vector.shape == (1, 48)
    assert np.isfinite(vector).all() and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
