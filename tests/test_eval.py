"""`retrieval eval`: the evaluation pipeline, its dumps recomputed independently, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REAL_PHOTOS, ColorAligner, make_image, skimage_photo
from PIL import Image

from retrieval.cli import main
from retrieval.errors import DatasetError, RetrievalError
from retrieval.evaluation.datasets import load_dataset
from retrieval.evaluation.evaluate import evaluate, short_names

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


@pytest.fixture
def pairs(tmp_path) -> Path:
    """24 generated pictures, 1 to 3 captions each (caption texts hash to vectors: recall is low but not zero)."""
    rows = ["image,caption"]
    for i in range(24):
        make_image(tmp_path / "img" / f"{i:02d}.png", seed=i, size=(32, 32))
        rows += [f"img/{i:02d}.png,picture {i} take {j}" for j in range(1 + i % 3)]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "pairs.csv"


def recompute(folder: Path, ks) -> dict:
    """CLIP_benchmark's recall from a dump, in plain numpy: a full sort per query, no retrieval code."""
    images = np.load(folder / "image_embeddings.npy")
    texts = np.load(folder / "text_embeddings.npy")
    caption_image = np.array(json.loads((folder / "caption_image.json").read_text()))
    captions = json.loads((folder / "captions.json").read_text())
    if json.loads((folder / "settings.json").read_text())["dataset"]["shared_captions"]:
        distinct = sorted(set(captions))
        first = [captions.index(t) for t in distinct]
        texts = texts[first]
        relevant = np.array([[captions[c] == t for c in range(len(captions))] for t in distinct])
        pos = np.zeros((len(distinct), len(images)), bool)
        for t, rows in enumerate(relevant):
            pos[t, caption_image[rows]] = True
    else:
        pos = np.zeros((len(texts), len(images)), bool)
        pos[np.arange(len(texts)), caption_image] = True
    scores = texts @ images.T
    out = {}
    for name, s, p in (("text_to_image", scores, pos), ("image_to_text", scores.T, pos.T)):
        order = np.argsort(-s, axis=1)
        out[name] = {f"R@{k}": float(np.take_along_axis(p, order[:, :k], axis=1).any(axis=1).mean()) for k in ks}
    return out


def test_dump_recomputed_independently_matches_the_report(pairs, tmp_path):
    ds = load_dataset(str(pairs))
    report = evaluate(ds, [ColorAligner()], ks=(1, 3, 10), dump_dir=tmp_path / "dump", workers=0)
    model = report.models[0]
    again = recompute(Path(model.dump), (1, 3, 10))
    for direction in ("text_to_image", "image_to_text"):
        for key, value in again[direction].items():
            assert model.exact[direction][key] == pytest.approx(value), (direction, key)
    assert 0 < model.exact["image_to_text"]["R@10"] < 1
    assert len(np.load(Path(model.dump) / "text_embeddings.npy")) == len(ds.captions) == 48
    assert model.curves["text_to_image"][2] == model.exact["text_to_image"]["R@3"]
    assert json.loads((Path(model.dump) / "settings.json").read_text())["settings"]["ks"] == [1, 3, 10]


def test_shared_captions_are_grouped_and_recomputable(tmp_path):
    ds = load_dataset("easy-vqa").head(60)
    report = evaluate(ds, [ColorAligner()], dump_dir=tmp_path, workers=0)
    assert report.dataset["distinct_texts_queried"] == len(set(ds.captions))
    assert "shared captions" in report.protocol
    model = report.models[0]
    assert set(model.exact["text_to_image"]) == {"R@1", "R@5", "R@10", "mAP"}
    again = recompute(Path(model.dump), (1, 5, 10))
    for direction in again:
        for key, value in again[direction].items():
            assert model.exact[direction][key] == pytest.approx(value), (direction, key)


def test_images_stream_in_batches_and_texts_encode_once(pairs):
    aligner = ColorAligner()
    sizes = []
    original = aligner.encode_images

    def spy(pixels):
        sizes.append(len(pixels))
        return original(pixels)

    aligner.encode_images = spy
    evaluate(load_dataset(str(pairs)), [aligner], batch_size=5, workers=1)
    assert max(sizes) <= 5 and sum(sizes) == 24


def test_through_index_exact_equals_exact_and_forced_ivf_is_reported(pairs):
    ds = load_dataset(str(pairs))
    report = evaluate(ds, [ColorAligner()], through_index=True, workers=0)
    model = report.models[0]
    for direction in ("text_to_image", "image_to_text"):
        via = model.through_index[direction]
        assert via["index"] == "IDMap2,Flat"
        for k in (1, 5, 10):
            assert via[f"R@{k}"] == model.exact[direction][f"R@{k}"]
    forced = evaluate(ds, [ColorAligner()], through_index=True, index_factory="IVF4,Flat", workers=0).models[0]
    assert forced.through_index["text_to_image"]["index"] == "IVF4,Flat"
    assert forced.through_index["text_to_image"]["nprobe"] >= 1
    assert forced.through_index["image_to_text"]["index"] == "IDMap2,Flat"  # captions stay exact, as in the engine
    with pytest.raises(RetrievalError, match="cannot build index 'Nonsense12'"):
        evaluate(ds, [ColorAligner()], through_index=True, index_factory="Nonsense12", workers=0)


def test_two_models_are_compared_on_the_same_data(pairs):
    report = evaluate(load_dataset(str(pairs)), [ColorAligner(), ColorAligner("other")], workers=0)
    assert [m.identity for m in report.models] == ["test/color", "other"]
    assert report.models[0].exact == report.models[1].exact


def test_unreadable_image_is_an_error_naming_it_unless_skipped(pairs):
    (pairs.parent / "img" / "03.png").write_bytes(b"not a png")
    ds = load_dataset(str(pairs))
    with pytest.raises(DatasetError, match=r"pairs\.csv, line 8: cannot read image .*03\.png: not an image"):
        evaluate(ds, [ColorAligner()], workers=0)
    report = evaluate(ds, [ColorAligner()], skip_unreadable=True, workers=0)
    assert len(report.unreadable) == 1 and report.dataset["images"] == 23
    assert report.dataset["captions"] == 48 - 1  # image 3 had one caption


# -- the command line -------------------------------------------------------------
def invoke(*args, ok=True):
    result = CliRunner().invoke(main, ["eval", *map(str, args)], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def color_model(monkeypatch):
    """`--model color` resolves to the plumbing-only aligner (no model weights)."""
    import retrieval.aligners as aligners

    real = aligners.load_aligner

    def load(spec, device=None):
        if not spec.startswith("color"):
            return real(spec, device)
        aligner = ColorAligner(spec)
        aligner.spec = spec
        return aligner

    monkeypatch.setattr(aligners, "load_aligner", load)


def test_cli_table_json_plot(pairs, tmp_path, color_model):
    out = invoke(pairs, "--model", "color", "--model", "color2", "--through-index", "--quiet", "--workers", 0).output
    assert "text → image" in out and "R@10" in out and "index" in out
    assert "recall: CLIP_benchmark" in out
    rows = [line.split()[:2] for line in out.splitlines() if line.split()[1:2] in (["exact"], ["index"])]
    assert rows == [["color", "exact"], ["color", "index"], ["color2", "exact"], ["color2", "index"]]
    data = json.loads(invoke(pairs, "--model", "color", "-k", 2, "-k", 1, "--json", "--plot", tmp_path / "r.png",
                             "--workers", 0).output)
    assert data["settings"]["ks"] == [1, 2] and data["settings"]["dataset"] == str(pairs)
    assert data["settings"]["split"] is None  # a pairs file without a split column has no split
    assert set(data["models"][0]["exact"]["text_to_image"]) == {"R@1", "R@2", "mAP"}
    assert data["dataset"]["images"] == 24
    with Image.open(tmp_path / "r.png") as im:
        assert im.format == "PNG" and im.size[0] > 600


def test_checkpoint_paths_show_as_file_names_unless_ambiguous():
    assert short_names(["default", "/runs/a/shapes.pt", "open_clip:ViT-B-32/laion2b_s34b_b79k"]) == [
        "default", "shapes.pt", "open_clip:ViT-B-32/laion2b_s34b_b79k"]
    assert short_names(["/runs/a/m.pt", "/runs/b/m.pt"]) == ["/runs/a/m.pt", "/runs/b/m.pt"]


def test_cli_limit_and_skip_missing_are_reported(pairs, color_model):
    (pairs.parent / "img" / "05.png").unlink()
    data = json.loads(invoke(pairs, "--model", "color", "--skip-missing", "--limit", 10, "--json", "--workers", 0).output)
    assert data["dataset"]["images"] == 10 and data["dataset"]["missing_images_skipped"] == 1
    assert data["settings"]["limit"] == 10
    text = invoke(pairs, "--model", "color", "--skip-missing", "--quiet", "--workers", 0).output
    assert "skipped images: 1 missing" in text
    assert "note:" not in text
    few = invoke(pairs, "--model", "color", "--skip-missing", "--limit", 5, "-k", 1, "-k", 5, "-k", 10, "--quiet", "--workers", 0).output
    assert "note: text → image ranks only 5 images: R@5, R@10 are 100% by construction" in few


def test_ctrl_c_says_nothing_is_kept(pairs, monkeypatch):
    import retrieval.evaluation.evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(retrieval.evaluation.evaluate, "evaluate", interrupted)
    result = invoke(pairs, "--quiet", ok=False)
    assert result.exit_code == 130 and "interrupted: no figures" in result.output and "resume" not in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["nowhere.csv"], "dataset not found: nowhere.csv"),
        ([FIXTURES / "images" / "red.png"], "unknown dataset format"),
        ([FIXTURES / "pairs.csv", "--index-factory", "IVF4,Flat"], "--index-factory needs --through-index"),
        ([FIXTURES / "pairs.csv", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        ([FIXTURES / "dataset_tiny.json", "--images", FIXTURES / "folder" / "sub"], "image not found"),
    ],
)
def test_cli_errors_are_one_line_messages(args, message):
    result = invoke(*args, ok=False)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


# -- real model -----------------------------------------------------------------
@pytest.mark.slow
def test_pairs_with_the_default_model_match_a_recomputation_from_the_dump(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    captions = {
        "astronaut.png": "an astronaut in a white spacesuit", "chelsea.png": "a tabby cat",
        "coffee.png": "a cup of coffee on a saucer", "rocket.jpg": "a rocket on the launch pad",
        "motorcycle_left.png": "a motorcycle", "camera.png": "a man with a camera on a tripod",
    }
    assert set(captions) == set(REAL_PHOTOS)
    rows = ["image,caption"] + [f"photos/{name},{text}" for name, text in captions.items()]
    for name in REAL_PHOTOS:
        shutil.copyfile(skimage_photo(name), photos / name)
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    data = json.loads(invoke(tmp_path / "pairs.csv", "--model", "default", "-k", 1, "-k", 3, "--json",
                             "--plot", tmp_path / "recall.png", "--dump", tmp_path / "dump").output)
    model = data["models"][0]
    again = recompute(Path(model["dump"]), (1, 3))
    for direction in again:
        for key, value in again[direction].items():
            assert model["exact"][direction][key] == pytest.approx(value)
    assert model["exact"]["text_to_image"]["R@3"] >= 0.5  # real photos, real model: better than chance (0.5)
    assert (tmp_path / "recall.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize("name", ["easy-vqa", "fashion-mnist"])
def test_each_builtin_set_runs_with_the_default_model(name):
    if name == "fashion-mnist":
        from retrieval.evaluation.datasets import FASHION_MNIST_DIR

        if not FASHION_MNIST_DIR.is_dir():
            pytest.skip("needs: apt-get install dataset-fashion-mnist")
    data = json.loads(invoke(name, "--limit", 40, "--through-index", "--json").output)
    assert data["dataset"]["images"] == 40 and data["dataset"]["shared_captions"]
    model = data["models"][0]
    assert model["model"] == "default"
    for direction in ("text_to_image", "image_to_text"):
        assert 0 <= model["exact"][direction]["mAP"] <= 1
        assert model["through_index"][direction]["R@10"] == model["exact"][direction]["R@10"]
