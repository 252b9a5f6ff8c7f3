"""Aligners: the open_clip path with a tiny random model, and the offline default with its real weights."""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import skimage_photo
from PIL import Image

from retrieval.aligners import conse, list_aligners, load_aligner, minilm, openclip
from retrieval.errors import ModelError

TINY = "retrieval-test-tiny-clip"


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory) -> str:
    """A CLIP small enough to build in milliseconds, registered with open_clip under TINY."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip_configs")
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    (folder / f"{TINY}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return TINY


@pytest.fixture(scope="module")
def tiny(tiny_arch) -> openclip.OpenClipAligner:
    return openclip.OpenClipAligner(tiny_arch, "random", device="cpu")


def random_pixels(aligner, n: int, seed: int = 0) -> np.ndarray:
    size = aligner.transform.size
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


TEXTS = ["a dog", "", "a photo of an astronaut riding a horse on the moon, seen from far away", "x " * 200]


# -- open_clip: loading --------------------------------------------------------------
def test_checkpoint_file_loads_with_identical_embeddings(tiny, tiny_arch, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tiny.model.state_dict(), path)
    loaded = load_aligner(f"open_clip:{tiny_arch}/{path}", device="cpu")
    assert loaded.spec == f"open_clip:{tiny_arch}/{path.resolve()}"
    assert loaded.identity.startswith(f"open_clip:{tiny_arch}/file-")
    pixels = random_pixels(tiny, 3)
    np.testing.assert_array_equal(loaded.encode_images(pixels), tiny.encode_images(pixels))
    np.testing.assert_array_equal(loaded.encode_texts(TEXTS), tiny.encode_texts(TEXTS))


def test_checkpoint_identity_follows_the_file_content(tiny, tiny_arch, tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(tiny.model.state_dict(), a)
    state = {k: v + 1 if k == "logit_scale" else v for k, v in tiny.model.state_dict().items()}
    torch.save(state, b)
    ids = {openclip.OpenClipAligner(tiny_arch, str(p)).identity for p in (a, b)}
    assert len(ids) == 2


def test_random_weights_are_deterministic_and_leave_the_global_rng_alone(tiny, tiny_arch):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = openclip.OpenClipAligner(tiny_arch, "random")
    assert torch.equal(torch.rand(3), expected)
    pixels = random_pixels(tiny, 2)
    np.testing.assert_array_equal(again.encode_images(pixels), tiny.encode_images(pixels))
    assert tiny.spec == tiny.identity == f"open_clip:{tiny_arch}/random"


def test_vectors_are_normalized_float32_of_the_declared_shape(tiny):
    images, texts = tiny.encode_images(random_pixels(tiny, 5)), tiny.encode_texts(TEXTS)
    assert images.shape == (5, tiny.dim) and texts.shape == (len(TEXTS), tiny.dim) and tiny.dim == 32
    assert images.dtype == texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(np.vstack([images, texts]), axis=1), 1.0, atol=1e-5)
    assert tiny.encode_images(np.zeros((0, 3, 32, 32), np.float32)).shape == (0, 32)
    assert tiny.encode_texts([]).shape == (0, 32)


def test_transform_is_picklable_and_matches_the_model(tiny):
    restored = pickle.loads(pickle.dumps(tiny.transform))
    assert restored == tiny.transform and restored.size == 32
    image = Image.open(skimage_photo("coffee.png"))
    assert tiny.encode_pil([image]).shape == (1, 32)


# -- open_clip: text padding trimming ---------------------------------------------------
def test_trimming_text_padding_is_exact(tiny):
    assert tiny.trim_text
    varied = [f"{'a very ' * (i % 11)}small cat number {i}" for i in range(openclip.TEXT_CHUNK * 2 + 5)]
    batches = [TEXTS, ["a cat"], ["a cat", "a much longer caption about a cat sitting on a red sofa"], varied]
    for texts in batches:
        trimmed, full = tiny.encode_texts(texts), tiny.encode_texts(texts, trim=False)
        np.testing.assert_allclose(trimmed, full, atol=1e-6)


def test_trimming_is_off_for_towers_that_read_padding():
    class NotCausal(torch.nn.Module):
        attn_mask = None

    assert not openclip.can_trim(NotCausal())


# -- open_clip: bad specs ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("open_clip:ViT-B-3/random", "Did you mean: ViT-B-32"),
        ("open_clip:vit-b-32/openai", "Did you mean: ViT-B-32,"),
        ("open_clip:NoSuchArch/foo", "Common ones: ViT-B-32"),
        ("open_clip:ViT-L/14/openai", "use '-', not '/'. Did you mean open_clip:ViT-L-14/openai?"),
        ("open_clip:ViT-B-32/laion2b_s34b_b79", "Known tags: laion2b_s34b_b79k"),
        ("open_clip:ViT-B-32", "open_clip:ARCH/PRETRAINED_TAG"),
        ("open_clip:ViT-B-32/missing.pt", "checkpoint file not found: "),
        ("no-such-model", "unknown model 'no-such-model'"),
        ("missing.pt", f"checkpoint file not found: {os.getcwd()}"),
    ],
)
def test_bad_specs_get_clear_messages(spec, expected):
    with pytest.raises(ModelError, match=expected.replace("(", r"\(")):
        load_aligner(spec)


def test_missing_checkpoint_names_the_full_path(tmp_path):
    with pytest.raises(ModelError, match=str(tmp_path / "nope.pt")):
        load_aligner(f"open_clip:ViT-B-32/{tmp_path / 'nope.pt'}")


def test_unreadable_checkpoint_names_the_file(tiny_arch, tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=f"{path} could not be loaded as a {tiny_arch} checkpoint"):
        openclip.OpenClipAligner(tiny_arch, str(path))


def test_download_without_network_fails_at_once_and_says_what_to_do(monkeypatch, tmp_path, caplog):
    import huggingface_hub.constants

    lookups = []

    def no_dns(*args, **kwargs):
        lookups.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(openclip, "reachable", lambda url, timeout=3.0: False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    source = "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    with pytest.raises(ModelError, match=rf"no network.*\(from {source}\).*open_clip:ViT-B-32/PATH \(with --model, or --from"):
        openclip.OpenClipAligner("ViT-B-32", "laion2b_s34b_b79k")
    assert lookups == []  # offline mode: not one connection attempt, so no retry loop
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # our error says it all


def test_open_clip_logs_pass_on_success_only(caplog):
    def from_open_clip(message):
        path = os.path.join(os.sep, "site-packages", "open_clip", "factory.py")
        return logging.makeLogRecord({"levelno": logging.WARNING, "levelname": "WARNING", "msg": message, "pathname": path})

    with pytest.raises(RuntimeError), openclip.open_clip_logs():
        logging.getLogger().handle(from_open_clip("held back"))
        raise RuntimeError
    with openclip.open_clip_logs():
        logging.getLogger().handle(from_open_clip("passed on"))
    assert [r.getMessage() for r in caplog.records] == ["passed on"]


def test_models_list_starts_with_the_offline_default():
    rows = list_aligners()
    assert rows[0]["spec"] == "default" and rows[0]["offline"]
    assert any(r["spec"] == "open_clip:ViT-B-32/laion2b_s34b_b79k" for r in rows)


# -- default: the recipe, without weights ------------------------------------------------
def test_conse_combines_the_top_classes_convexly():
    rng = np.random.default_rng(0)
    classes = conse.normalize(rng.normal(size=(6, 8)).astype(np.float32))
    logits = np.array([[10.0, 0, 0, 0, 0, 0], [2.0, 2.0, 0, 0, 0, -50]], np.float32)
    config = {"top_k": 2, "temperature": 1.0, "center": 0.0}
    out = conse.conse_combine(logits, classes, config)
    np.testing.assert_allclose(out[0], classes[0], atol=1e-3)  # one class dominates
    np.testing.assert_allclose(out[1], conse.normalize(classes[0] + classes[1]), atol=1e-6)
    centred = conse.conse_combine(logits, classes, {**config, "center": 1.0})
    np.testing.assert_allclose(centred[1], conse.normalize(out[1] - classes.mean(axis=0)), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(centred, axis=1), 1.0, atol=1e-6)


def test_class_prompts_follow_the_config():
    classes = conse.imagenet_classes()
    assert len(classes) == 1000 and classes[0]["lemmas"][0] == "tench"
    prompts = conse.class_prompts({"names": "first", "templates": ["a photo of {a_name}.", "{name}: {definition}."]})
    assert len(prompts) == 1000 and all(len(p) == 2 for p in prompts)
    assert prompts[0][0] == "a photo of a tench."
    # "crane" names a bird and a machine; the definitions tell them apart.
    cranes = [p for p in prompts if p[0] == "a photo of a crane."]
    assert len(cranes) == 2 and cranes[0][1] != cranes[1][1]
    all_names = conse.class_prompts({"names": "all", "templates": ["{name}"]})
    assert sum(map(len, all_names)) > 1500


def test_default_identity_depends_on_the_recipe():
    assert conse.ConseAligner().identity != conse.ConseAligner(config={"top_k": 5}).identity
    assert conse.ConseAligner().identity == conse.ConseAligner().identity


# -- default: real packaged weights ------------------------------------------------------
PHOTOS = {
    "astronaut.png": "a smiling astronaut in a space suit holding a helmet",
    "chelsea.png": "a tabby cat",
    "coffee.png": "a cup of coffee on a saucer",
    "rocket.jpg": "a rocket on its launch pad",
    "motorcycle_left.png": "a red motorcycle parked in a garage",
    "camera.png": "a black and white photo of a man with a camera on a tripod",
}


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    cache = tmp_path_factory.mktemp("retrieval_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETRIEVAL_CACHE", str(cache))
        yield conse.ConseAligner(device="cpu")


@pytest.mark.slow
def test_default_text_query_loads_no_image_model(default):
    fresh = conse.ConseAligner(device="cpu")
    fresh.encode_texts(["a dog on a beach"])
    assert fresh._classifier is None and fresh._class_embeddings is None


@pytest.mark.slow
def test_default_ranks_real_photos_with_their_own_descriptions(default):
    images = default.encode_pil([Image.open(skimage_photo(name)) for name in PHOTOS])
    texts = default.encode_texts(list(PHOTOS.values()))
    scores = texts @ images.T
    expected = np.arange(len(PHOTOS))
    np.testing.assert_array_equal(scores.argmax(axis=1), expected)  # text -> image
    # Image -> text: the astronaut and the cameraman are both "a person" to the people expert,
    # and since the 2026-12-02 retune (people weight 0.7) the astronaut's picture scores the
    # cameraman's description a little above its own. Every other photo must pick its own, and
    # none may rank its own description below second.
    own_rank = (scores > scores[expected, expected][None, :]).sum(axis=0)
    assert (own_rank == 0).sum() >= len(PHOTOS) - 1 and own_rank.max() <= 1, own_rank
    assert all(own_rank[i] == 0 for i, name in enumerate(PHOTOS) if name != "astronaut.png"), own_rank


@pytest.mark.slow
def test_default_vectors_are_normalized_deterministic_and_shaped(default):
    pil = [Image.open(skimage_photo(name)) for name in ("chelsea.png", "rocket.jpg")]
    images, again = default.encode_pil(pil), default.encode_pil(pil)
    texts = default.encode_texts(["a cat", "a rocket"])
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(texts, default.encode_texts(["a cat", "a rocket"]))
    assert images.shape == texts.shape == (2, default.dim) and default.dim == 384
    assert images.dtype == texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(np.vstack([images, texts]), axis=1), 1.0, atol=1e-5)
    # A text keeps its vector whatever else is in the batch (batches are padded per length).
    np.testing.assert_allclose(default.encode_texts(["a cat"])[0], texts[0], atol=1e-6)


@pytest.mark.slow
def test_default_class_embeddings_are_cached(default):
    default.encode_pil([Image.open(skimage_photo("coffee.png"))])
    files = list(conse.cache_dir().glob("conse-classes-*.npy"))
    assert len(files) == 1
    fresh = conse.ConseAligner(device="cpu")
    np.testing.assert_array_equal(fresh.class_embeddings, default.class_embeddings)
    assert fresh._text is None  # read from the cache, the text encoder was not needed


@pytest.mark.slow
def test_minilm_matches_sentence_transformers():
    transformers = pytest.importorskip("transformers")
    folder = conse.text_model_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    texts = ["a dog on a beach", "Ünïcode café, 東京!", "x"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    encoder = conse.SentenceEncoder(folder)
    np.testing.assert_allclose(encoder.encode(texts), expected, atol=1e-5)  # numpy (a small batch)
    pieces = [encoder.tokenizer.encode_batch(texts)]
    ids = np.array([e.ids for e in pieces[0]])
    mask = np.array([e.attention_mask for e in pieces[0]])
    torch_features = conse.normalize(encoder.torch_forward(ids, mask))
    np.testing.assert_allclose(torch_features, expected, atol=1e-5)


@pytest.mark.slow
def test_minilm_numpy_and_torch_forms_agree_on_a_large_batch():
    encoder = conse.SentenceEncoder(conse.text_model_folder())
    texts = [f"photo number {i} of {'a very ' * (i % 7)}large dog" for i in range(minilm.NUMPY_MAX_BATCH * 2)]
    batched = encoder.encode(texts)  # one torch batch
    singly = np.vstack([encoder.encode([t]) for t in texts])  # numpy, one at a time
    np.testing.assert_allclose(batched, singly, atol=1e-5)


@pytest.mark.slow
def test_default_text_query_does_not_import_torch(tmp_path):
    code = (
        "import sys; from retrieval.aligners import load_aligner; "
        "v = load_aligner('default').encode_texts(['a dog on a beach']); "
        "assert v.shape == (1, 384), v.shape; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    env = {**os.environ, "RETRIEVAL_CACHE": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.mark.parametrize(
    "spec, identity, other",
    [
        ("open_clip:ViT-B-32/openai", "default/conse-0123abcd", True),  # another family
        ("default", "open_clip:ViT-B-32/laion2b_s34b_b79k", True),
        ("runs/heads.pt", "default/conse-0123abcd", True),
        ("open_clip:ViT-B-32/openai", "open_clip:ViT-B-32/laion2b_s34b_b79k", True),  # two tags
        ("open_clip:ViT-B-32/openai", "open_clip:ViT-B-32/openai", False),
        ("open_clip:ViT-B-32/weights.pt", "open_clip:ViT-B-32/openai", False),  # a file: only loading can tell
        ("open_clip:ViT-B-32/openai", "open_clip:ViT-B-32/file-5d41402abc4b2a76", False),
        ("default", "default/conse-0123abcd", False),  # another build of the default: checked after loading
    ],
)
def test_models_that_surely_differ_are_known_without_loading(spec, identity, other):
    from retrieval.aligners import surely_other

    assert surely_other(spec, identity) is other


def test_an_index_refuses_another_model_before_loading_it(tmp_path, monkeypatch):
    from conftest import ColorAligner, make_image

    from retrieval.aligners import registry
    from retrieval.api import build_index, open_index
    from retrieval.errors import ModelMismatch
    from retrieval.ingest import pipeline as indexer
    from retrieval.ingest.pipeline import IndexSettings
    from retrieval.storage.store import IndexStore

    make_image(tmp_path / "photos" / "a.png", seed=1)
    store = IndexStore.open(tmp_path / "idx", create=True)
    indexer.run(store, ColorAligner(), [tmp_path / "photos"], settings=IndexSettings(workers=0))
    store.close()

    def no_loading(spec, device):
        raise AssertionError(f"loaded {spec} before refusing it")

    monkeypatch.setattr(registry, "_load", no_loading)
    with pytest.raises(ModelMismatch, match="was built with 'test/color', not 'open_clip:ViT-B-32/openai'"):
        open_index(str(tmp_path / "idx"), model="open_clip:ViT-B-32/openai").search("a cat")
    with pytest.raises(ModelMismatch, match="was built with 'test/color'"):
        build_index([tmp_path / "photos"], index=str(tmp_path / "idx"), model="default")
