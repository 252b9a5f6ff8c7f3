"""open_clip models behind the aligner interface: ``open_clip:ARCH/TAG`` or ``open_clip:ARCH/PATH``.

We wrap open_clip rather than copy it: it builds the model and reads checkpoints; we
add the engine's conventions (numpy out, normalized, no autograd, half precision on
GPU) and one speed-up, trimming text padding (see ``encode_texts``).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from retrieval.aligners.base import Aligner
from retrieval.aligners.runtime import pick_device, precision, to_numpy
from retrieval.errors import ModelError
from retrieval.transform import ImageTransform

log = logging.getLogger(__name__)

#: Tag for a randomly initialised model (seeded, so deterministic): for speed benchmarks.
RANDOM_TAG = "random"


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def check_arch(arch: str) -> None:
    import open_clip

    models = open_clip.list_models()
    if arch not in models:
        close = difflib.get_close_matches(arch, models, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else " See `retrieval models --all`."
        raise ModelError(f"unknown open_clip architecture {arch!r}.{hint}")


def check_tag(arch: str, tag: str) -> None:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags and tag != RANDOM_TAG:
        close = difflib.get_close_matches(tag, tags, n=5, cutoff=0.3) or tags[:8]
        raise ModelError(
            f"unknown pretrained tag {tag!r} for {arch}. Known tags: {', '.join(close) or 'none'}"
            " (or give a local checkpoint file: open_clip:ARCH/PATH)"
        )


class OpenClipAligner(Aligner):
    def __init__(self, arch: str, weights: str, device: str | None = None):
        import open_clip

        check_arch(arch)
        path = Path(weights).expanduser()
        is_file = weights not in open_clip.list_pretrained_tags_by_model(arch) and weights != RANDOM_TAG
        if is_file:
            if not path.is_file():
                raise ModelError(f"checkpoint file not found: {path}")
            path = path.resolve()
            self.spec = f"open_clip:{arch}/{path}"
            self.identity = f"open_clip:{arch}/file-{file_digest(path)}"
        else:
            check_tag(arch, weights)
            self.spec = self.identity = f"open_clip:{arch}/{weights}"
        self.device = pick_device(device)
        pretrained = str(path) if is_file else (None if weights == RANDOM_TAG else weights)
        torch.manual_seed(0)  # makes the random-weights model reproducible
        try:
            model = open_clip.create_model(arch, pretrained=pretrained, device=self.device)
        except Exception as exc:  # open_clip reports bad files and failed downloads many ways
            if is_file:
                raise ModelError(f"{path} could not be loaded as a {arch} checkpoint: {str(exc)[:300]}") from exc
            if pretrained is None:
                raise
            raise ModelError(
                f"could not fetch the weights for {self.spec} ({type(exc).__name__}; no network?). "
                f"Download them on a connected machine and pass the file: --model open_clip:{arch}/PATH"
            ) from exc
        self.model = model.to(precision(self.device)).eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.transform = _transform_for(model)
        with torch.inference_mode():
            self.dim = int(self.model.encode_text(self.tokenizer(["x"]).to(self.device)).shape[-1])
        self.trim_text = _can_trim(self.model)

    @torch.inference_mode()
    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, precision(self.device))
        return to_numpy(self.model.encode_image(batch))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], trim: bool | None = None) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)
        if self.trim_text and trim is not False:
            return to_numpy(_encode_text_trimmed(self.model, tokens))
        return to_numpy(self.model.encode_text(tokens))


def _transform_for(model) -> ImageTransform:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    if isinstance(size, (tuple, list)):
        size = size[0]
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return ImageTransform(
        size=int(size),
        mean=tuple(cfg.get("mean", OPENAI_DATASET_MEAN)),
        std=tuple(cfg.get("std", OPENAI_DATASET_STD)),
        interpolation=cfg.get("interpolation", "bicubic"),
    )


def _can_trim(model) -> bool:
    """Padding can be cut when the text tower is causal and pools at the end-of-text token.

    With a causal mask no token attends to a later one, so the padding after the last
    real token cannot change any output we read: trimming is exact, and saves most of
    the work since captions are far shorter than the 77-token context.
    """
    from open_clip.model import CLIP

    return (
        isinstance(model, CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", "argmax") in ("argmax", "eos")
    )


def _encode_text_trimmed(model, tokens: torch.Tensor) -> torch.Tensor:
    from open_clip.transformer import text_global_pool

    positions = torch.arange(tokens.shape[1], device=tokens.device)
    length = int(((tokens != 0) * (positions + 1)).max())
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x
