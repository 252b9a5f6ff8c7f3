"""Loading aligners by spec: the process's cache of loaded models and the loader behind it.

Importing this module does not import torch; each aligner's module is imported when a spec
names it. The aligners' modules never import this one (a trained checkpoint is handed
:func:`rebuild_base` to load its starting aligner), so loading stays a one-way street.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

from retrieval.aligners.base import Aligner
from retrieval.aligners.specs import CHECKPOINT_SUFFIXES, canonical_spec
from retrieval.errors import ModelError

__all__ = [
    "AlignerCache", "LOADED", "describe_base", "list_aligners", "load_aligner", "rebuild_base", "recipe_aligner",
]


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


def load_aligner(spec: str = "default", device: str | None = None) -> Aligner:
    """Resolve a spec to a ready aligner; loaded aligners are reused within a process.

    >>> aligner = load_aligner("default")            # doctest: +SKIP
    >>> aligner.encode_texts(["a red bicycle"]).shape  # doctest: +SKIP
    (1, 384)
    """
    spec = canonical_spec(spec)
    return LOADED.get((spec, device, _file_stamp(spec)), lambda: _load(spec, device))


def recipe_aligner(config: Mapping[str, Any], device: str | None = None) -> Aligner:
    """The `default` aligner built with an earlier recipe (`config`), shared like loaded ones."""
    from retrieval.aligners.conse import ConseAligner

    key = ("default", device, json.dumps(config, sort_keys=True))
    return LOADED.get(key, lambda: ConseAligner(device=device, config=dict(config)))


def describe_base(base: Aligner) -> dict[str, Any]:
    """What a checkpoint records to rebuild `base` later, even after `default` is retuned."""
    info: dict[str, Any] = {"spec": base.spec, "identity": base.identity}
    config = getattr(base, "config", None)
    if base.spec == "default" and isinstance(config, dict):
        info["config"] = dict(config)
    return info


def rebuild_base(info: dict[str, Any], device: str | None = None) -> Aligner:
    """The base aligner a checkpoint was trained on: by its spec, or by its recorded recipe."""
    base = load_aligner(info["spec"], device=device)
    if base.identity == info["identity"] or "config" not in info:
        return base
    # `default` has been retuned since training: the recorded recipe rebuilds the one trained on.
    return recipe_aligner(info["config"], device)


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

        return load_trained(path, device=device, load_base=rebuild_base)
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
