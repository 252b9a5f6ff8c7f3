"""Dataset readers: one parser test per format on tests/fixtures/datasets, the errors, the built-in sets."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.errors import DatasetError
from retrieval.evaluation.datasets import (
    FASHION_MNIST_DIR,
    easy_vqa_facts,
    easy_vqa_pixels,
    load_dataset,
)

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
IMAGES = FIXTURES / "images"


def pairs_of(ds) -> list[tuple[str, str]]:
    """(image file name, caption) for every caption row, in order."""
    return [(Path(ds.images[i]).name, c) for i, c in zip(ds.caption_image.tolist(), ds.captions, strict=True)]


def test_pairs_csv_groups_rows_by_image_and_resolves_relative_paths():
    ds = load_dataset(str(FIXTURES / "pairs.csv"))
    assert ds.images == [str(IMAGES / "red.png"), str(IMAGES / "green.png"), str(IMAGES / "blue.png")]
    assert pairs_of(ds) == [
        ("red.png", "a red square"), ("green.png", "a green square"),
        ("red.png", "a square, all red"), ("blue.png", "a blue square"),
    ]
    assert ds.caption_image.dtype == np.int64 and ds.missing == 0 and not ds.shared_captions
    assert [list(c) for c in ds.image_captions()] == [[0, 2], [1], [3]]
    assert ds.where[0].endswith("pairs.csv, line 2")


def test_pairs_tsv_with_a_split_column_filters_rows():
    assert pairs_of(load_dataset(str(FIXTURES / "pairs.tsv"))) == [("red.png", "a red square"), ("blue.png", "a blue square")]
    assert pairs_of(load_dataset(str(FIXTURES / "pairs.tsv"), split="train")) == [("green.png", "a green square")]
    with pytest.raises(DatasetError, match=r"no rows with split 'val' \(found: test, train\)"):
        load_dataset(str(FIXTURES / "pairs.tsv"), split="val")


def test_karpathy_json_reads_one_split_with_filepath_folders():
    ds = load_dataset(str(FIXTURES / "dataset_tiny.json"))
    assert ds.images == [str(IMAGES / "red.png"), str(IMAGES / "blue.png")]
    assert ds.captions == ["A red square.", "Something red.", "A blue square."]
    assert ds.caption_image.tolist() == [0, 0, 1]
    train = load_dataset(str(FIXTURES / "dataset_tiny.json"), split="train", images=str(FIXTURES))
    assert pairs_of(train) == [("green.png", "A green square.")]
    # 'filepath' folders that do not exist fall back to DIR/filename (flattened downloads)
    val = load_dataset(str(FIXTURES / "dataset_tiny.json"), split="val", images=str(IMAGES))
    assert val.images == [str(IMAGES / "yellow.png")]


def test_coco_captions_json_with_an_image_folder():
    ds = load_dataset(str(FIXTURES / "captions_tiny.json"), images=str(IMAGES))
    assert pairs_of(ds) == [("green.png", "a green square"), ("red.png", "a red square"), ("green.png", "green all over")]
    assert len(ds.images) == 2  # blue.png has no caption: left out


def test_folder_with_same_name_txt_captions():
    ds = load_dataset(str(FIXTURES / "folder"))
    assert pairs_of(ds) == [("red.png", "a red square"), ("red.png", "red all over"), ("blue.jpg", "a blue square")]
    assert ds.name == "folder"


def test_head_and_subset_keep_captions_with_their_images():
    ds = load_dataset(str(FIXTURES / "pairs.csv"))
    assert pairs_of(ds.head(1)) == [("red.png", "a red square"), ("red.png", "a square, all red")]
    sub = ds.subset([2, 0])
    assert [Path(p).name for p in sub.images] == ["blue.png", "red.png"]
    assert pairs_of(sub) == [("red.png", "a red square"), ("red.png", "a square, all red"), ("blue.png", "a blue square")]


# -- errors ---------------------------------------------------------------------
def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_missing_image_names_file_and_line_or_is_skipped_and_counted(tmp_path):
    shutil.copy(IMAGES / "red.png", tmp_path / "red.png")
    src = write(tmp_path / "p.csv", "image,caption\nred.png,red\nnope.png,gone\nnope.png,gone again\n")
    with pytest.raises(DatasetError, match=r"p\.csv, line 3: image not found: .*nope\.png"):
        load_dataset(src)
    ds = load_dataset(src, skip_missing=True)
    assert ds.missing == 1 and ds.captions == ["red"]


def test_caption_row_with_no_image(tmp_path):
    src = write(tmp_path / "p.csv", "image,caption\n,a caption without an image\n")
    with pytest.raises(DatasetError, match=r"p\.csv, line 2: caption row with no image"):
        load_dataset(src)


def test_coco_caption_with_unknown_image_id(tmp_path):
    src = write(tmp_path / "c.json", json.dumps({"images": [], "annotations": [{"image_id": 5, "caption": "x"}]}))
    with pytest.raises(DatasetError, match=r"c\.json, annotations\[0\]: caption with no image \(image_id 5"):
        load_dataset(src)


def test_txt_caption_without_its_image(tmp_path):
    write(tmp_path / "lonely.txt", "a caption\n")
    with pytest.raises(DatasetError, match=r"lonely\.txt, line 1: caption file with no image"):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("empty.csv", "image,caption\n", r"empty\.csv: empty dataset"),
        ("blank.csv", "\n", r"blank\.csv: empty file \(expected a header line"),
        ("cols.csv", "file_path,words\na.png,x\n", r"cols\.csv, line 1: needs an 'image' and a 'caption' column \(found: file_path, words\)"),
        ("bad.json", '{"images": [\n  oops', r"bad\.json, line 2: invalid JSON"),
        ("other.json", '{"rows": []}', r"other\.json: unknown JSON format"),
        ("data.parquet", "x", r"data\.parquet: unknown dataset format"),
    ],
)
def test_bad_files_get_a_message_naming_them(tmp_path, name, text, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset(write(tmp_path / name, text))


def test_unreadable_and_missing_sources(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"image,caption\nred.png,caf\xe9\n")
    with pytest.raises(DatasetError, match=r"latin1\.csv: not UTF-8 text"):
        load_dataset(str(path))
    with pytest.raises(DatasetError, match=r"dataset not found: .*nowhere.*fashion-mnist, easy-vqa"):
        load_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=r"empty dataset: no images in split 'nope' \(found: test, train, val\)"):
        load_dataset(str(FIXTURES / "dataset_tiny.json"), split="nope")


# -- built-in sets ----------------------------------------------------------------
def test_easy_vqa_captions_come_from_its_questions_and_agree_with_the_pixels():
    import easy_vqa

    ds = load_dataset("easy-vqa")
    assert len(ds.images) == len(ds.captions) == 1000 and ds.shared_captions
    assert ds.captions[:3] == ["a red triangle", "a yellow rectangle", "a blue triangle"]
    assert len(set(ds.captions)) == 24
    colors, shapes = easy_vqa_facts(*easy_vqa.get_test_questions())
    decided = [i for i in colors if len(colors[i]) == 1 and len(shapes[i]) == 1]
    assert len(decided) > 800
    paths = easy_vqa.get_test_image_paths()
    for i in decided[:300]:  # where the answers decide, the pixel reading must say the same
        assert easy_vqa_pixels(paths[i]) == (colors[i].pop(), shapes[i].pop()), i
    assert len(load_dataset("easy-vqa", split="train").images) == 4000
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        load_dataset("easy-vqa", split="val")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs: apt-get install dataset-fashion-mnist")
def test_fashion_mnist_materializes_png_files_once(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path))
    ds = load_dataset("fashion-mnist")
    assert len(ds.images) == 10_000 and ds.shared_captions
    assert Counter(ds.captions) == {f"a photo of {c}": 1000 for c in (
        "a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat",
        "a sandal", "a shirt", "a sneaker", "a bag", "an ankle boot")}
    first = Path(ds.images[0])
    assert first.parent == tmp_path / "datasets" / "fashion-mnist" / "test"
    with Image.open(first) as im:
        assert im.size == (28, 28) and im.mode == "L"
    stamp = first.stat().st_mtime_ns
    assert load_dataset("fashion-mnist").images == ds.images
    assert first.stat().st_mtime_ns == stamp  # not written again
