"""open_clip models behind the aligner interface: ``open_clip:ARCH/TAG`` or ``open_clip:ARCH/PATH``.

We wrap open_clip rather than copy it: it builds the model and reads checkpoints; we
add the engine's conventions (numpy out, normalized, no autograd, half precision on
GPU), fail fast and clearly where a download is impossible, and one speed-up, trimming
text padding (see ``_encode_text_trimmed``).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from retrieval.aligners.base import AlignerBase
from retrieval.aligners.runtime import pick_device, precision, to_numpy
from retrieval.aligners.specs import looks_like_path
from retrieval.errors import ModelError
from retrieval.media.transform import RESIZE_MODES, ImageTransform

log = logging.getLogger(__name__)

#: Tag for a randomly initialised model (seeded, so deterministic): for speed benchmarks.
RANDOM_TAG = "random"
#: Texts per trimmed chunk on CPU: small enough that lengths within a chunk are close.
TEXT_CHUNK = 64


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


#: Offered when a misspelt architecture name is close to none.
COMMON_ARCHS = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50", "convnext_base_w")


def closest(name: str, choices: Sequence[str], n: int = 5, cutoff: float = 0.5) -> list[str]:
    """The choices nearest to `name`, ignoring case (so 'vit-b-32' finds 'ViT-B-32' first)."""
    by_lower = {c.lower(): c for c in choices}
    return [by_lower[c] for c in difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=cutoff)]


def check_arch(arch: str, weights: str = "") -> None:
    import open_clip

    models = open_clip.list_models()
    if arch in models:
        return
    # 'open_clip:ViT-L/14/openai': the '-' of the architecture's name written as '/'.
    head, _, rest = weights.partition("/")
    if f"{arch}-{head}" in models:
        raise ModelError(
            f"unknown open_clip architecture {arch!r}: architecture names use '-', not '/'. "
            f"Did you mean open_clip:{arch}-{head}/{rest or 'TAG'}?"
        )
    close = closest(arch, models)
    hint = f"Did you mean: {', '.join(close)}?" if close else f"Common ones: {', '.join(COMMON_ARCHS)}."
    raise ModelError(
        f"unknown open_clip architecture {arch!r}. {hint} "
        "`retrieval models --all` lists every architecture with pretrained weights."
    )


def check_tag(arch: str, tag: str) -> None:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags and tag != RANDOM_TAG:
        close = closest(tag, tags, n=5, cutoff=0.3) or tags[:8]
        raise ModelError(
            f"unknown pretrained tag {tag!r} for {arch}. Known tags: {', '.join(close) or 'none'}"
            f" (or '{RANDOM_TAG}', or a local checkpoint file: open_clip:{arch}/PATH)"
        )


# -- downloads: fail fast and clearly where the network is out of reach ----------------
def download_host(arch: str, tag: str | None) -> str | None:
    """Where building this model would reach out to: the weights' URL, or the HF hub for
    weights, a Hugging Face text tower or tokenizer; None when it needs no network."""
    import open_clip

    hub = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if tag:
        cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
        if cfg.get("hf_hub"):
            return hub
        if cfg.get("url"):
            return cfg["url"]
    text_cfg = (open_clip.get_model_config(arch) or {}).get("text_cfg", {})
    return hub if text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name") else None


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host opens within `timeout` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    ok = threading.Event()

    def connect() -> None:
        with contextlib.suppress(OSError), socket.create_connection((parsed.hostname, port), timeout=timeout):
            ok.set()

    # Name resolution has no timeout of its own: run it in a thread we can stop waiting for.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return ok.is_set()


@contextlib.contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Make huggingface_hub use its cache only, instead of retrying a dead network for a minute."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hub

    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), hub.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def weights_source(arch: str, tag: str) -> str | None:
    """The page or URL a pretrained tag's weights come from, to fetch them by hand."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    if cfg.get("hf_hub"):
        repo = "/".join(cfg["hf_hub"].strip("/").split("/")[:2])
        return f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}/{repo}"
    return cfg.get("url") or None


def download_error(spec: str, arch: str, offline: bool, exc: Exception, weights: str | None = None) -> ModelError:
    """What to do when a download failed. `weights`: the pretrained tag, when the weights were
    what was missing (a local file fixes that); None when it was a Hugging Face text tower or
    tokenizer (only the Hugging Face cache fixes that)."""
    why = "no network, and not in the cache" if offline else f"{type(exc).__name__}: {str(exc)[:200]}"
    if weights is None:
        return ModelError(
            f"could not download the Hugging Face text tower or tokenizer that {arch} uses ({why}). "
            "Load this model once on a connected machine and copy its Hugging Face cache "
            "(~/.cache/huggingface, or $HF_HOME) to this one."
        )
    source = weights_source(arch, weights)
    where = f" (from {source})" if source else ""
    return ModelError(
        f"could not download the weights {spec} needs ({why}). Download them on a connected machine{where} "
        f"and name the file in the spec instead: open_clip:{arch}/PATH (with --model, or --from for `retrieval train`)"
    )


@contextlib.contextmanager
def open_clip_logs() -> Iterator[None]:
    """Hold back what open_clip logs on the root logger while it builds a model.

    When the build fails, our ModelError says it better, so its records go to debug level
    only; when it succeeds they are passed on as they were.
    """
    root = logging.getLogger()
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if f"{os.sep}open_clip{os.sep}" in record.pathname:
            held.append(record)
            return False
        return True

    failed = True
    root.addFilter(hold)
    try:
        yield
        failed = False
    finally:
        root.removeFilter(hold)
        for record in held:
            if failed:
                log.debug("open_clip: %s", record.getMessage())
            else:
                root.handle(record)


# -- the aligner ------------------------------------------------------------------------
class OpenClipAligner(AlignerBase):
    def __init__(self, arch: str, weights: str, device: str | None = None):
        import open_clip

        check_arch(arch, weights)
        path = None
        if looks_like_path(weights) and weights not in open_clip.list_pretrained_tags_by_model(arch):
            path = Path(weights).expanduser()
            if not path.is_file():
                raise ModelError(f"checkpoint file not found: {path.absolute()}")
            path = path.resolve()
            self.spec = f"open_clip:{arch}/{path}"
            self.identity = f"open_clip:{arch}/file-{file_digest(path)}"
        else:
            check_tag(arch, weights)
            self.spec = self.identity = f"open_clip:{arch}/{weights}"
        self.device = pick_device(device)
        model, self.tokenizer = self._create(arch, weights, path)
        self.model = model.to(precision(self.device)).eval()
        self.transform = transform_for(model)
        with torch.inference_mode():
            self.dim = int(self.model.encode_text(self.tokenizer(["x"]).to(self.device)).shape[-1])
        self.trim_text = can_trim(self.model)

    def _create(self, arch: str, weights: str, path: Path | None):
        import open_clip

        pretrained = str(path) if path else (None if weights == RANDOM_TAG else weights)
        host = download_host(arch, None if path else pretrained)
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or (host is not None and not reachable(host))
        try:
            with open_clip_logs(), hub_offline(offline), torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # makes the random-weights model reproducible
                model = open_clip.create_model(arch, pretrained=pretrained, device=self.device)
        except Exception as exc:  # open_clip reports bad files and failed downloads many ways
            if path and not (host and offline):
                raise ModelError(f"{path} could not be loaded as a {arch} checkpoint: {str(exc)[:300]}") from exc
            if host is None:
                raise
            raise download_error(self.spec, arch, offline, exc, weights=None if path else pretrained) from exc
        try:
            # Some architectures use a tokenizer from the Hugging Face hub.
            with open_clip_logs(), hub_offline(offline):
                tokenizer = open_clip.get_tokenizer(arch)
        except Exception as exc:
            raise download_error(self.spec, arch, offline, exc) from exc
        return model, tokenizer

    @torch.inference_mode()
    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, precision(self.device))
        return to_numpy(self.model.encode_image(batch))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], trim: bool | None = None) -> np.ndarray:
        """`trim=False` runs the full context length (for checking and timing the trimmed path)."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)
        if not self.trim_text or trim is False:
            return to_numpy(self.model.encode_text(tokens))
        # On CPU, chunks of texts of similar length are each cut to their own longest text.
        order = torch.argsort(pooled_positions(self.model, tokens))
        chunk = TEXT_CHUNK if self.device.type == "cpu" else len(texts)
        pieces = [_encode_text_trimmed(self.model, tokens[part]) for part in order.split(chunk)]
        return to_numpy(torch.cat(pieces)[torch.argsort(order)])


def transform_for(model) -> ImageTransform:
    """open_clip's eval preprocessing for this model, as a picklable ImageTransform."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    if isinstance(size, (tuple, list)):
        size = size[0]
    resize_mode = cfg.get("resize_mode", "shortest")
    if resize_mode not in RESIZE_MODES:
        log.warning("resize mode %r is not supported; resizing the shortest side instead", resize_mode)
        resize_mode = "shortest"
    return ImageTransform(
        size=int(size),
        mean=tuple(cfg.get("mean", OPENAI_DATASET_MEAN)),
        std=tuple(cfg.get("std", OPENAI_DATASET_STD)),
        interpolation=cfg.get("interpolation", "bicubic"),
        resize_mode=resize_mode,
    )


def can_trim(model) -> bool:
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


def pooled_positions(model, tokens: torch.Tensor) -> torch.Tensor:
    """Where each text's feature is read, found as text_global_pool finds it (so no pad id is needed)."""
    if model.text_pool_type == "argmax":
        return tokens.argmax(dim=-1)
    return (tokens == model.text_eos_id).int().argmax(dim=-1)


def _encode_text_trimmed(model, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP.encode_text on tokens cut after the last position any row pools from."""
    from open_clip.transformer import text_global_pool

    length = int(pooled_positions(model, tokens).max()) + 1
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x
