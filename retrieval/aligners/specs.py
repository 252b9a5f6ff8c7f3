"""Spec strings read without loading anything: retired names, families, weights files.

A leaf of the package (it imports no aligner), so the registry that loads models and the
aligners that parse their own spec (``openclip``) share one reading of a spec.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CHECKPOINT_SUFFIXES", "canonical_spec", "looks_like_path", "surely_other"]

# Retired spec names of the default, and what they mean now.
_DEFAULT_ALIASES = {"default+ocr": "default"}
# File names that are weights rather than pretrained tags or spec words (`looks_like_path`, the registry's `_load`).
CHECKPOINT_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".safetensors", ".ckpt"})


def canonical_spec(spec: str | None) -> str:
    """The spec as the loader reads it: retired names of the default resolved."""
    spec = (spec or "default").strip()
    return _DEFAULT_ALIASES.get(spec, spec)


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
