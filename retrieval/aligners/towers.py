"""The frozen towers of an aligner, as training sees them (LiT: locked towers, trained heads).

An image tower is a list of stages (stem, blocks, head) followed by a *readout*. The last
``unlock`` stages are the *trunk*: float32 copies that training may update. The stages
before them are frozen and run once per image; their output is what the trainer caches
on disk. The readout is cheap and may depend on settings that get retuned (``default``'s
ConSE recipe), so it is not cached: it runs over the cache when training starts.

Image features begin with the columns that reproduce the base aligner's own image vector
(``base_columns``), so heads can start as the identity on them: a freshly initialised
trained aligner ranks exactly like its base.

- ``default`` (ConSE): features are [its ConSE vector (384) | pooled EfficientNet features
  (1280), L2-normalized]; the pooled features carry what ImageNet's 1000 classes cannot
  say (colours, shapes, layout). The ConSE vector is computed by ``conse.conse_combine``
  itself, so it is the base's vector exactly; with an unlocked trunk, gradients flow
  through the pooled features (the ConSE part follows the trunk but passes no gradient).
- open_clip: the image embedding; unlocking needs a plain VisionTransformer (its last
  residual blocks, then the final norm and projection, are the stages).
- any other aligner: its own image vectors (nothing to unlock).

The text tower is the base aligner's own ``encode_texts`` (frozen in every case).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from retrieval.aligners.base import Aligner
from retrieval.errors import TrainingError

if TYPE_CHECKING:
    from retrieval.aligners.conse import ConseAligner
    from retrieval.aligners.openclip import OpenClipAligner

#: Bumped when what a tower computes changes, so old feature caches are not reused.
TOWER_VERSION = 3


class ImageTower:
    """Frozen stages, trainable trunk, readout: pixels -> (n, feature_dim) float32 features."""

    kind: str
    feature_dim: int
    base_columns: slice

    def __init__(self, base: Aligner, stages: Sequence[nn.Module] | None, unlock: int):
        self.base = base
        self.transform = base.transform
        self.dtype = base_dtype(base)  # loads the model, which settles its device
        self.device = torch.device(getattr(base, "device", None) or "cpu")
        self.unlock = unlock
        if unlock and stages is None:
            raise TrainingError(f"--unlock-last is not supported for {base.spec}")
        if stages is not None and not 0 <= unlock < len(stages):
            raise TrainingError(f"--unlock-last must be between 0 and {len(stages) - 1} for {base.spec}")
        cut = len(stages) - unlock if stages is not None else 0
        self.frozen_stages = list(stages[:cut]) if stages is not None else []
        # Copies, so training never changes the base aligner that other code may share.
        self.trunk = nn.ModuleList(copy.deepcopy(s).float() for s in (stages[cut:] if unlock and stages is not None else []))
        # Eval mode even while training: batch-norm statistics stay the pretrained ones.
        self.trunk.to(self.device).eval().requires_grad_(True)

    def cache_identity(self) -> str:
        """What the cached frozen output depends on (not the readout)."""
        return f"{self.base.identity}|{self.kind}-v{TOWER_VERSION}|unlock{self.unlock}|{self.transform!r}"

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def run_all(self, pixels: torch.Tensor) -> torch.Tensor:
        """The whole frozen tower when nothing is unlocked (may be faster than stage by stage)."""
        return self.run_stages(pixels)

    def run_stages(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.frozen_stages:
            x = stage(x)
        return x

    @torch.no_grad()
    def frozen(self, pixels: np.ndarray) -> torch.Tensor:
        """Pixels -> the cached quantity: the trunk's input, or the readout's when nothing is unlocked."""
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, self.dtype)
        return (self.run_stages(batch) if self.unlock else self.run_all(batch)).float()

    def trunk_forward(self, cached: torch.Tensor) -> torch.Tensor:
        """Cached frozen output (float32, on device) -> features, with gradients through the trunk."""
        x = cached
        for stage in self.trunk:
            x = stage(x)
        return self.readout(x)

    def features(self, pixels: np.ndarray) -> torch.Tensor:
        return self.trunk_forward(self.frozen(pixels))


def base_dtype(base: Aligner) -> torch.dtype:
    model = getattr(base, "classifier", None) or getattr(base, "model", None)
    if isinstance(model, nn.Module):
        return next(model.parameters()).dtype
    return torch.float32


# -- default (ConSE over EfficientNet-Lite) -----------------------------------------
class ConseImageTower(ImageTower):
    kind = "conse+pooled"
    base: ConseAligner

    def __init__(self, base: ConseAligner, unlock: int = 0):
        clf: Any = base.classifier  # timm's EfficientNet: its parts are reached by name
        stages = [
            nn.Sequential(clf.conv_stem, clf.bn1),
            *clf.blocks,
            nn.Sequential(clf.conv_head, clf.bn2, clf.global_pool),
        ]
        super().__init__(base, stages, unlock)
        self.classifier = copy.deepcopy(clf.classifier).float().to(self.device).requires_grad_(False)
        self.conse_dim = int(base.dim)
        self.feature_dim = self.conse_dim + int(clf.num_features)
        self.base_columns = slice(0, self.conse_dim)

    def cache_identity(self) -> str:
        # The pooled features depend on the classifier and the preprocessing only, not on
        # the ConSE recipe: retuning `default` keeps the (expensive) cache valid. The experts'
        # phrase weights and the words' vectors ride along in the cache, so their settings are part of it.
        experts = json.dumps({n: e.get("settings", {}) for n, e in (self.base.config.get("experts") or {}).items()})
        words = json.dumps(self.base.config.get("ocr"), sort_keys=True) if self.base.config.get("ocr") else ""
        return (f"efficientnet-{self.base.config['image_model']}|{self.kind}-v{TOWER_VERSION}|unlock{self.unlock}|"
                f"{self.transform!r}|experts{experts}" + (f"|words{words}" if words else ""))

    def run_all(self, pixels: torch.Tensor) -> torch.Tensor:
        clf: Any = self.base.classifier
        return clf.forward_head(clf.forward_features(pixels), pre_logits=True)

    @torch.no_grad()
    def frozen(self, pixels: np.ndarray) -> torch.Tensor:
        """The frozen output with the experts' phrase weights (and the words' vectors) appended as extra channels.

        The experts and the OCR reader read pixels, which later training steps no longer see;
        carrying their (small) answers in the cache lets the readout reproduce the base's vector.
        """
        out = super().frozen(pixels)
        weights = self.base.expert_weights(pixels)
        extra = [weights[e.name] for e in self.base.experts] if weights else []
        if self.base.config.get("ocr"):
            extra.append(self.base.word_vectors(pixels))
        if not extra:
            return out
        w = torch.from_numpy(np.concatenate(extra, axis=1)).to(out)
        if out.dim() == 2:
            return torch.cat([out, w], dim=1)
        return torch.cat([out, w[:, :, None, None].expand(-1, -1, *out.shape[2:])], dim=1)

    def trunk_forward(self, cached: torch.Tensor) -> torch.Tensor:
        n_weights = sum(len(e.vocabulary) for e in self.base.experts) + (self.conse_dim if self.base.config.get("ocr") else 0)
        if not n_weights:
            return super().trunk_forward(cached)
        x, w = cached[:, :-n_weights], cached[:, -n_weights:]
        if w.dim() > 2:
            w = w[:, :, 0, 0]
        for stage in self.trunk:
            x = stage(x)
        return self.readout(x, w)

    def readout(self, pooled: torch.Tensor, expert_weights: torch.Tensor | None = None) -> torch.Tensor:
        from retrieval.aligners.conse import add_word_vectors, conse_combine, fuse

        with torch.no_grad():
            logits = self.classifier(pooled).cpu().numpy()
        conse = conse_combine(logits, self.base.class_embeddings, self.base.config)
        if expert_weights is not None:
            # Columns: each expert's phrase weights in order, then (with OCR) the words' vector.
            sizes = [len(e.vocabulary) for e in self.base.experts]
            columns = np.split(expert_weights.cpu().numpy(), np.cumsum(sizes), axis=1)
            if self.base.experts:
                conse = fuse(conse, dict(zip((e.name for e in self.base.experts), columns)), self.base.phrases, self.base.config)
            if self.base.config.get("ocr"):
                conse = add_word_vectors(conse, columns[len(sizes)])
        vectors = torch.from_numpy(np.asarray(conse, np.float32)).to(pooled.device)
        return torch.cat([vectors, nn.functional.normalize(pooled, dim=-1)], dim=-1)


# -- open_clip and any other aligner ------------------------------------------------
class VectorImageTower(ImageTower):
    """Any aligner: its own image vectors are the features."""

    kind = "vectors"

    def __init__(self, base: Aligner, unlock: int = 0, stages: Sequence[nn.Module] | None = None):
        super().__init__(base, stages, unlock)
        self.feature_dim = int(base.dim)
        self.base_columns = slice(0, self.feature_dim)

    @torch.no_grad()
    def frozen(self, pixels: np.ndarray) -> torch.Tensor:
        if self.unlock:
            return super().frozen(pixels)
        return torch.from_numpy(self.base.encode_images(pixels)).to(self.device)

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=-1)


class _ViTEmbeds(nn.Module):
    def __init__(self, visual):
        super().__init__()
        self.visual = visual

    def forward(self, x):
        x = self.visual._embeds(x)
        return x if self.visual.transformer.batch_first else x.transpose(0, 1)


class _ViTBlock(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return self.block(x)


class _ViTPost(nn.Module):
    """Pooling, final norm and projection of a plain open_clip VisionTransformer."""

    def __init__(self, visual):
        super().__init__()
        self.batch_first = visual.transformer.batch_first
        self.pool_type = visual.pool_type
        self.final_ln_after_pool = visual.final_ln_after_pool
        self.ln_post = visual.ln_post
        self.proj = visual.proj

    def forward(self, x):
        if not self.batch_first:
            x = x.transpose(0, 1)
        if not self.final_ln_after_pool:
            x = self.ln_post(x)
        pooled = x[:, 1:].mean(dim=1) if self.pool_type == "avg" else x[:, 0]
        if self.final_ln_after_pool:
            pooled = self.ln_post(pooled)
        return pooled @ self.proj if self.proj is not None else pooled


def vit_stages(visual) -> list[nn.Module] | None:
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None or visual.pool_type not in ("tok", "avg"):
        return None
    return [_ViTEmbeds(visual), *(_ViTBlock(b) for b in visual.transformer.resblocks), _ViTPost(visual)]


class ClipImageTower(VectorImageTower):
    kind = "clip"

    def __init__(self, base: OpenClipAligner, unlock: int = 0):
        super().__init__(base, unlock, vit_stages(base.model.visual) if unlock else None)


def image_tower(base: Aligner, unlock: int = 0) -> ImageTower:
    """The trainable view of `base`'s image tower, with its last `unlock` stages trainable."""
    from retrieval.aligners.conse import ConseAligner
    from retrieval.aligners.openclip import OpenClipAligner

    if isinstance(base, ConseAligner):
        return ConseImageTower(base, unlock)
    if isinstance(base, OpenClipAligner):
        return ClipImageTower(base, unlock)
    return VectorImageTower(base, unlock)
