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
A spec is read in :mod:`.specs` and loaded (and cached) in :mod:`.registry`; this ``__init__``
re-exports them and keeps only :func:`load_aligner_for`. The aligners' own modules import those
leaves, never this package, and none imports the registry back, so no import runs in a circle
(``tests/test_layout.py`` checks).

Owns every model: the aligners behind the ``Aligner`` protocol (:mod:`.base`), the towers and
trained heads and the torch steps that fit them (:mod:`.towers`, :mod:`.trained`,
:mod:`.fitting`), and the default's experts (:mod:`.experts`). The only package that imports
torch, torchvision, open_clip, timm, transformers, onnxruntime and RapidOCR; besides them it
may import media (the model-input transform) and the shared root modules. Vectors leave it as
numpy float32, L2-normalized; no tensor does.
"""

from __future__ import annotations

from retrieval.aligners.base import Aligner, AlignerBase, normalize
from retrieval.aligners.registry import LOADED, AlignerCache, list_aligners, load_aligner, recipe_aligner
from retrieval.aligners.specs import CHECKPOINT_SUFFIXES as CHECKPOINT_SUFFIXES  # importable here since before specs.py
from retrieval.aligners.specs import canonical_spec, surely_other
from retrieval.aligners.specs import looks_like_path as looks_like_path  # importable here since before specs.py

__all__ = [
    "Aligner", "AlignerBase", "AlignerCache", "LOADED", "canonical_spec", "load_aligner", "load_aligner_for",
    "list_aligners", "normalize", "recipe_aligner", "surely_other",
]


def load_aligner_for(spec: str, identity: str | None, device: str | None = None) -> Aligner:
    """The aligner to *search* an index with: `spec`, or the earlier `default` recipe it was built with.

    A retuned `default` changes how images are embedded, not how queries are (MiniLM alone),
    so an index built with an earlier recipe stays searchable with that recipe rebuilt from
    its recorded identity. Adding vectors to it with the new recipe is still refused.
    """
    # Here rather than in the registry: it calls this package's `load_aligner`, the one name a
    # test or an embedding program replaces to put its own model behind every command.
    aligner = load_aligner(spec, device)
    if identity is None or aligner.identity == identity or aligner.spec != "default":
        return aligner
    from retrieval.aligners.conse import recipe_for

    recipe = recipe_for(identity)
    if recipe is None:
        return aligner
    return recipe_aligner(recipe, device)
