"""`retrieval train`: contrastive heads over cached tower features, checkpoints, resume, bad input.

Fast tests train on top of the plumbing-only ColorAligner (conftest) on generated
pictures whose colour names are their captions; tests marked slow use the packaged
weights of `default` on easy-vqa.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import ColorAligner
from PIL import Image, ImageDraw, ImageFont

import retrieval.aligners as aligners
from retrieval.aligners import registry
from retrieval.aligners.fitting import contrastive_loss
from retrieval.errors import TrainingError
from retrieval.evaluation.datasets import Dataset
from retrieval.training.train import EpochReport, TrainSettings, hold_out, train

COLORS = {
    "red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
    "white": (240, 240, 240), "black": (15, 15, 15), "purple": (130, 30, 160), "orange": (240, 140, 20),
}


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    # Content-addressed, so tests can share it: the slow tests embed each image once.
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def isolated(cache, monkeypatch):
    """A private feature cache, and `test/color` resolvable as an aligner spec."""
    monkeypatch.setenv("RETRIEVAL_CACHE", str(cache))
    real = registry._load
    monkeypatch.setattr(registry, "_load", lambda spec, device: ColorAligner() if spec == "test/color" else real(spec, device))


def colour_pairs(folder, per_colour: int = 20, seed: int = 0) -> Dataset:
    """Noisy solid-colour pictures; each captioned with its colour's name (shared captions)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, captions = [], []
    for name, rgb in COLORS.items():
        for i in range(per_colour):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            path = folder / f"{name}{i:02d}.png"
            Image.fromarray(pixels).save(path)
            images.append(str(path))
            captions.append(f"a {name} picture")
    return Dataset("colours", images, captions, np.arange(len(images)), shared_captions=True)


def fast(**kw) -> TrainSettings:
    return TrainSettings(**{"epochs": 6, "batch_size": 32, "lr": 1e-2, "workers": 0, **kw})


def test_training_lowers_loss_raises_recall_and_loads_by_path(tmp_path):
    pairs = colour_pairs(tmp_path / "img")
    out = tmp_path / "colours.pt"
    reports: list[EpochReport] = []
    result = train(pairs, out, start="test/color", settings=fast(), on_epoch=reports.append)

    assert [r.epoch for r in reports] == list(range(7))
    losses = [r.loss for r in reports[1:]]
    assert losses[-1] < 0.8 * losses[0]
    before, after = result.before, result.best_metrics
    assert before["image_to_text"]["R@1"] < 0.5  # random text vectors: near chance (1/8)
    assert after["image_to_text"]["R@1"] >= 0.9
    assert after["text_to_image"]["R@1"] > before["text_to_image"]["R@1"]
    assert result.val_images == 16 and result.train_images == 144

    aligner = aligners.load_aligner(str(out))
    assert aligner.identity == result.identity and aligner.identity.startswith("trained/")
    assert aligner.identity != ColorAligner().identity
    assert aligner.spec == str(out.resolve()) and aligner.dim == ColorAligner.dim
    vectors = aligner.encode_pil([Image.open(p) for p in pairs.images[:3]])
    texts = aligner.encode_texts(["a red picture", "a blue picture"])
    assert vectors.shape == (3, aligner.dim) and texts.shape == (2, aligner.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # Trained on red pictures: the red caption is the closest of the two.
    assert (vectors @ texts.T)[:, 0].min() > (vectors @ texts.T)[:, 1].max()


def test_heads_start_as_the_base_aligner(tmp_path):
    """Before any step the trained aligner ranks exactly like its base (identity-initialised heads)."""
    pairs = colour_pairs(tmp_path / "img", per_colour=4)
    reports = []
    with pytest.raises(KeyboardInterrupt):
        train(pairs, tmp_path / "x.pt", start="test/color", settings=fast(batch_size=8), on_epoch=_stop_after(0, reports))
    from retrieval.evaluation.evaluate import evaluate

    expected = evaluate(hold_out(pairs, 0.1, seed=0)[1], [ColorAligner()], workers=0).models[0].exact
    assert reports[0].metrics["image_to_text"]["R@1"] == pytest.approx(expected["image_to_text"]["R@1"])
    assert reports[0].metrics["text_to_image"]["R@1"] == pytest.approx(expected["text_to_image"]["R@1"])


def _stop_after(epoch: int, seen: list):
    def on_epoch(report):
        seen.append(report)
        if report.epoch == epoch:
            raise KeyboardInterrupt

    return on_epoch


def test_ctrl_c_keeps_the_last_epoch_and_resume_matches_an_uninterrupted_run(tmp_path):
    pairs = colour_pairs(tmp_path / "img", per_colour=8)
    straight = tmp_path / "straight.pt"
    train(pairs, straight, start="test/color", settings=fast(epochs=4))

    out = tmp_path / "resumed.pt"
    seen = []
    with pytest.raises(KeyboardInterrupt):
        train(pairs, out, start="test/color", settings=fast(epochs=4), on_epoch=_stop_after(2, seen))
    saved = torch.load(out, weights_only=True)
    assert saved["resume"]["epoch"] == 2
    assert not list(tmp_path.glob(".resumed.pt.tmp*"))  # no half-written file beside it

    result = train(pairs, out, start="test/color", settings=fast(epochs=4), resume=True)
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3, 4]
    assert result.run_id == saved["run_id"]
    a, b = torch.load(straight, weights_only=True), torch.load(out, weights_only=True)
    for key, value in a["resume"]["heads"].items():
        assert torch.allclose(value, b["resume"]["heads"][key], atol=1e-6), key
    assert a["best"]["epoch"] == b["best"]["epoch"]

    with pytest.raises(TrainingError, match="larger --epochs"):
        train(pairs, out, start="test/color", settings=fast(epochs=4), resume=True)
    with pytest.raises(TrainingError, match="other pairs"):
        train(pairs.head(40), out, start="test/color", settings=fast(epochs=8), resume=True)


def test_existing_output_needs_force_or_resume(tmp_path):
    pairs = colour_pairs(tmp_path / "img", per_colour=6)
    out = tmp_path / "model.pt"
    out.write_bytes(b"precious")
    with pytest.raises(TrainingError, match="already exists.*--force"):
        train(pairs, out, start="test/color", settings=fast(epochs=1))
    assert out.read_bytes() == b"precious"
    train(pairs, out, start="test/color", settings=fast(epochs=1), force=True)
    assert aligners.load_aligner(str(out)).identity.startswith("trained/")
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(pairs, tmp_path / "absent.pt", start="test/color", settings=fast(), resume=True)


def test_bad_input_fails_before_writing_anything(tmp_path, cache):
    pairs = colour_pairs(tmp_path / "img", per_colour=4)  # 32 images, 29 after holding out 10% (3)
    out = tmp_path / "model.pt"
    with pytest.raises(TrainingError, match="29 training pairs.*--batch-size 32"):
        train(pairs, out, start="test/color", settings=fast())
    with pytest.raises(TrainingError, match="cannot load the starting aligner --from 'no-such-model'"):
        train(pairs, out, start="no-such-model", settings=fast(batch_size=8))
    Image.open(pairs.images[5])  # a real image, until we break it:
    with open(pairs.images[5], "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(TrainingError, match=r"1 of \d+ images cannot be read: .*green01.png"):
        train(pairs, out, start="test/color", settings=fast(batch_size=8))
    assert not out.exists()
    assert not list(cache.rglob("*.tmp*"))


def test_loss_is_clip_infonce_when_pairs_are_distinct():
    torch.manual_seed(0)
    images, texts = torch.randn(6, 8), torch.randn(6, 8)
    scale = torch.tensor(2.0)
    ids = torch.arange(6)
    logits = scale.exp() * torch.nn.functional.normalize(images, dim=-1) @ torch.nn.functional.normalize(texts, dim=-1).T
    clip = (torch.nn.functional.cross_entropy(logits, ids) + torch.nn.functional.cross_entropy(logits.T, ids)) / 2
    assert torch.allclose(contrastive_loss(images, texts, scale, ids, ids), clip)
    # A repeated caption is a positive, not a negative: swapping the two equal texts changes nothing.
    text_ids = torch.tensor([0, 1, 2, 3, 4, 4])
    texts[5] = texts[4]
    swapped = contrastive_loss(images, texts[[0, 1, 2, 3, 5, 4]], scale, ids, text_ids)
    assert torch.allclose(contrastive_loss(images, texts, scale, ids, text_ids), swapped)


def test_cli_trains_and_refuses_to_overwrite(tmp_path):
    from retrieval.cli import main

    pairs = colour_pairs(tmp_path / "img", per_colour=6)
    csv = tmp_path / "pairs.csv"
    csv.write_text("image,caption\n" + "".join(f"{p},{c}\n" for p, c in zip(pairs.images, pairs.captions)))
    out = tmp_path / "cli.pt"
    args = ["train", str(csv), "--out", str(out), "--from", "test/color", "--epochs", "2", "--batch-size", "8",
            "--workers", "0", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "best epoch" in result.output
    assert "(features " in result.output and ", epochs " in result.output  # the two costs, apart
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "already exists" in again.output and "Traceback" not in again.output
    few = CliRunner().invoke(main, [*args[:-5], "--batch-size", "512", "--force"])
    assert few.exit_code == 1 and "--batch-size 512" in few.output


# -- with the packaged weights -------------------------------------------------------
@pytest.mark.slow
def test_default_learns_easy_vqa_and_the_file_indexes_and_searches(tmp_path, monkeypatch):
    import shutil
    from collections import Counter

    from retrieval.api import build_index, open_index
    from retrieval.evaluation.datasets import load_dataset

    pairs = load_dataset("easy-vqa", split="train").head(200)
    val = load_dataset("easy-vqa", split="test").head(64)
    out = tmp_path / "shapes.pt"
    result = train(pairs, out, val=val, settings=TrainSettings(epochs=15, batch_size=40, lr=3e-3))
    before, after = result.before, result.best_metrics
    assert after["image_to_text"]["R@1"] >= before["image_to_text"]["R@1"] + 0.3
    assert after["text_to_image"]["R@1"] >= before["text_to_image"]["R@1"] + 0.2

    folder = tmp_path / "shapes"
    folder.mkdir()
    caption_of = {}
    for path, caption in zip(val.images[:24], val.captions[:24]):
        caption_of[shutil.copy(path, folder)] = caption
    build_index([folder], index=str(tmp_path / "idx"), model=str(out))
    index = open_index(str(tmp_path / "idx"))
    try:
        query = Counter(caption_of.values()).most_common(1)[0][0]
        hits = index.search(query, k=3)
        assert caption_of[hits[0].path] == query
    finally:
        index.close()

    # Retuning `default` later does not orphan the checkpoint: it records the recipe it was trained on.
    from retrieval.aligners import conse

    probe = [Image.open(p) for p in val.images[:2]]
    expected = aligners.load_aligner(str(out)).encode_pil(probe)
    monkeypatch.setitem(conse.CONFIG, "top_k", conse.CONFIG["top_k"] + 1)
    monkeypatch.setattr(registry, "LOADED", aligners.AlignerCache())
    assert aligners.load_aligner("default").identity != result.base_identity
    assert np.allclose(aligners.load_aligner(str(out)).encode_pil(probe), expected, atol=1e-5)


@pytest.mark.slow
def test_default_towers_reproduce_the_base_and_unlock_splits_exactly(tmp_path):
    from retrieval.aligners.towers import image_tower
    from retrieval.aligners.trained import Heads
    from retrieval.evaluation.datasets import load_dataset

    base = aligners.load_aligner("default")
    images = load_dataset("easy-vqa").images[:4] + [str(tmp_path / "x.png"), str(tmp_path / "word.png")]
    Image.new("RGB", (300, 200), (200, 40, 40)).save(images[-2])
    sign = Image.new("RGB", (224, 224), (250, 250, 245))  # a word the OCR expert reads
    ImageDraw.Draw(sign).text((16, 80), "BAKERY", fill=(20, 20, 20), font=ImageFont.load_default(size=44))
    sign.save(images[-1])
    pixels = np.stack([base.transform(Image.open(p)) for p in images])
    assert np.any(base.word_vectors(pixels[-1:]))  # so the readout must carry the words too

    locked = image_tower(base, 0)
    heads = Heads(locked.feature_dim, base.dim, base.dim, 0, locked.base_columns)
    with torch.no_grad():
        start = torch.nn.functional.normalize(heads.image(locked.features(pixels)), dim=-1).numpy()
    assert np.allclose(start, base.encode_images(pixels), atol=1e-4)

    unlocked = image_tower(base, 3)
    assert len(unlocked.trunk) == 3 and all(p.requires_grad for p in unlocked.trunk.parameters())
    with torch.no_grad():
        assert torch.allclose(unlocked.features(pixels), locked.features(pixels), atol=1e-4)
    with pytest.raises(TrainingError, match="--unlock-last must be between"):
        image_tower(base, 99)


@pytest.mark.slow
def test_unlocked_training_runs_and_reloads(tmp_path):
    from retrieval.evaluation.datasets import load_dataset

    pairs = load_dataset("easy-vqa", split="train").head(40)
    out = tmp_path / "unlocked.pt"
    result = train(pairs, out, settings=TrainSettings(epochs=2, batch_size=16, unlock=1, workers=0))
    payload = torch.load(out, weights_only=True)
    assert payload["trunk"] and payload["config"]["unlock"] == 1
    aligner = aligners.load_aligner(str(out))
    assert aligner.identity == result.identity
    assert aligner.encode_pil([Image.open(pairs.images[0])]).shape == (1, 384)


@pytest.mark.slow
def test_open_clip_vit_stages_compose_to_encode_image():
    from retrieval.aligners.towers import image_tower

    base = aligners.load_aligner("open_clip:ViT-S-32/random")
    pixels = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        whole = image_tower(base, 0).features(pixels)
        split = image_tower(base, 2).features(pixels)
    assert whole.shape == (2, base.dim)
    assert torch.allclose(whole, split, atol=1e-4)
