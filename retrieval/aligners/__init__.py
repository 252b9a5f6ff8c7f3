"""Aligners: one spec string picks the model that embeds images and texts.

Specs:
- ``default``: the offline aligner built from packaged pretrained weights (``conse.py``).
- ``default+ocr``: the opt-in recipe that read words before ``default`` did (until 2026-12-02);
  now another name for ``default``, kept so that scripts and indexes that name it still work.
- ``open_clip:ARCH/TAG``: an open_clip architecture and pretrained tag (downloaded and
  cached by open_clip where the network allows); ``open_clip:ARCH/random`` for seeded
  random weights (speed tests).
- ``open_clip:ARCH/PATH``: an open_clip architecture with a local checkpoint file.
- ``PATH``: a checkpoint written by ``retrieval train`` (self-describing).

Importing this package does not import torch; each aligner imports what it needs when loaded.

Owns every model: the aligners behind the ``Aligner`` protocol (:mod:`.base`), the towers and
trained heads and the torch steps that fit them (:mod:`.towers`, :mod:`.trained`,
:mod:`.fitting`), and the default's experts (:mod:`.experts`). The only package that imports
torch, torchvision, open_clip, timm, transformers, onnxruntime and RapidOCR; besides them it
may import media (the model-input transform) and the shared root modules. Vectors leave it as
numpy float32, L2-normalized; no tensor does.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

from retrieval.aligners.base import Aligner, AlignerBase, normalize
from retrieval.errors import ModelError

__all__ = [
    "Aligner", "AlignerBase", "AlignerCache", "LOADED", "canonical_spec", "load_aligner", "load_aligner_for",
    "list_aligners", "normalize", "recipe_aligner", "surely_other",
]

# Retired spec names of the default, and what they mean now.
_DEFAULT_ALIASES = {"default+ocr": "default"}
# File names that are weights rather than pretrained tags or spec words (`looks_like_path`, `_load`).
CHECKPOINT_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".safetensors", ".ckpt"})


class AlignerCache:
    """The aligners loaded in this process, most recently used last; at most `size` are kept.

    Loading a model takes seconds, so callers that ask for the same spec again share one. Bounded
    because `retrieval train` loads a new checkpoint file (a new key) every epoch, and a long-lived
    process (the server, a notebook) should not keep every model it ever touched.
    """

    def __init__(self, size: int = 4):
        if size < 1:
            raise ValueError("an aligner cache keeps at least one aligner")
        self.size = size
        self._entries: OrderedDict[Hashable, Aligner] = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], Aligner]) -> Aligner:
        """The aligner cached under `key`, built (and the least recently used one dropped) when missing."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        aligner = build()
        self._entries[key] = aligner
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return aligner

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


#: The process's one cache of loaded aligners (tests swap in a fresh one).
LOADED = AlignerCache()


def canonical_spec(spec: str | None) -> str:
    """The spec as the loader reads it: retired names of the default resolved."""
    spec = (spec or "default").strip()
    return _DEFAULT_ALIASES.get(spec, spec)


def load_aligner(spec: str = "default", device: str | None = None) -> Aligner:
    """Resolve a spec to a ready aligner; loaded aligners are reused within a process.

    >>> aligner = load_aligner("default")            # doctest: +SKIP
    >>> aligner.encode_texts(["a red bicycle"]).shape  # doctest: +SKIP
    (1, 384)
    """
    spec = canonical_spec(spec)
    return LOADED.get((spec, device, _file_stamp(spec)), lambda: _load(spec, device))


def load_aligner_for(spec: str, identity: str | None, device: str | None = None) -> Aligner:
    """The aligner to *search* an index with: `spec`, or the earlier `default` recipe it was built with.

    A retuned `default` changes how images are embedded, not how queries are (MiniLM alone),
    so an index built with an earlier recipe stays searchable with that recipe rebuilt from
    its recorded identity. Adding vectors to it with the new recipe is still refused.
    """
    aligner = load_aligner(spec, device)
    if identity is None or aligner.identity == identity or aligner.spec != "default":
        return aligner
    from retrieval.aligners.conse import recipe_for

    recipe = recipe_for(identity)
    if recipe is None:
        return aligner
    return recipe_aligner(recipe, device)


def recipe_aligner(config: Mapping[str, Any], device: str | None = None) -> Aligner:
    """The `default` aligner built with an earlier recipe (`config`), shared like loaded ones."""
    from retrieval.aligners.conse import ConseAligner

    key = ("default", device, json.dumps(config, sort_keys=True))
    return LOADED.get(key, lambda: ConseAligner(device=device, config=dict(config)))


def surely_other(spec: str, identity: str) -> bool:
    """Whether `spec` certainly names another aligner than `identity`, known without loading it.

    Loading a model takes seconds; refusing a mismatched index should not. Families differ
    ('default' vs open_clip vs a trained checkpoint), or both are open_clip pretrained tags
    (whose identity is the spec itself). Anything less certain (a weights file, another build
    of the default) is left to the check after loading.
    """
    spec = (spec or "default").strip()
    if _family(spec) != _family(identity):
        return True
    if spec.startswith("open_clip:") and not looks_like_path(spec.partition("/")[2]):
        return identity.startswith("open_clip:") and "/file-" not in identity and spec != identity
    return False


def _family(name: str) -> str:
    if name in ("default", "default+ocr") or name.startswith("default/"):
        return "default"
    if name.startswith("open_clip:"):
        return "open_clip"
    return "trained"


def looks_like_path(weights: str) -> bool:
    """Whether the part after ``open_clip:ARCH/`` names a weights file rather than a pretrained tag.

    Pretrained tags are plain words (laion2b_s34b_b79k). Shared by the loader and by
    :func:`surely_other`, so the early check classifies a spec the way loading would.
    """
    return (
        os.sep in weights
        or "/" in weights
        or weights.startswith(("~", "."))
        or Path(weights).suffix.lower() in CHECKPOINT_SUFFIXES
        or Path(weights).expanduser().exists()
    )


def _file_stamp(spec: str) -> tuple[int, int] | None:
    # `retrieval train` rewrites its checkpoint every epoch: a changed file is another aligner.
    try:
        stat = Path(spec).expanduser().stat()
    except (OSError, ValueError):
        return None
    return (stat.st_mtime_ns, stat.st_size)


def _load(spec: str, device: str | None) -> Aligner:
    if spec == "default":
        from retrieval.aligners.conse import ConseAligner

        return ConseAligner(device=device)
    if spec.startswith("open_clip:"):
        rest = spec[len("open_clip:") :]
        arch, sep, weights = rest.partition("/")
        if not sep or not arch or not weights:
            raise ModelError(
                f"bad spec {spec!r}: use open_clip:ARCH/PRETRAINED_TAG or open_clip:ARCH/PATH "
                "(e.g. open_clip:ViT-B-32/laion2b_s34b_b79k)"
            )
        from retrieval.aligners.openclip import OpenClipAligner

        return OpenClipAligner(arch, weights, device=device)
    path = Path(spec).expanduser()
    if path.is_file():
        from retrieval.aligners.trained import load_trained

        return load_trained(path, device=device)
    if path.suffix.lower() in CHECKPOINT_SUFFIXES or "/" in spec:
        raise ModelError(f"checkpoint file not found: {path.absolute()}")
    raise ModelError(
        f"unknown model {spec!r}. Use 'default', 'open_clip:ARCH/TAG', 'open_clip:ARCH/PATH' "
        "or the path of a checkpoint written by `retrieval train`; `retrieval models` lists them."
    )


def list_aligners(all_open_clip: bool = False) -> list[dict[str, Any]]:
    """What `retrieval models` shows: the offline default, then open_clip's catalogue."""
    import open_clip

    rows = [
        {
            "spec": "default",
            "offline": True,
            "note": "EfficientNet-Lite + MiniLM-L6 bridged by ConSE, with colour, people, scene and written-word "
            "(RapidOCR) experts; packaged weights, no download",
        },
    ]
    pairs = open_clip.list_pretrained()
    if not all_open_clip:
        pairs = [p for p in pairs if p[0] in _POPULAR]
    rows += [
        {"spec": f"open_clip:{arch}/{tag}", "offline": False, "note": "downloaded and cached by open_clip"}
        for arch, tag in pairs
    ]
    rows.append(
        {"spec": "open_clip:ARCH/PATH", "offline": True, "note": "any open_clip architecture with a local checkpoint"}
    )
    rows.append({"spec": "PATH.pt", "offline": True, "note": "a checkpoint written by `retrieval train`"})
    return rows


_POPULAR = {"ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-H-14", "RN50", "convnext_base_w", "ViT-SO400M-14-SigLIP"}
