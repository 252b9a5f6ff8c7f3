"""The torch side of ``retrieval train``: fitting projection heads (and unlocked trunk stages) to pairs.

``retrieval.training`` owns the run (data, splits, feature cache, validation, checkpoints) and
hands this module numpy arrays; tensors, the loss and the optimizer stay here, beside the
towers and heads they train. Every random draw is torch's, seeded from the settings, so a
run's split, initial heads and batch order are the same on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from retrieval.aligners.towers import ImageTower
from retrieval.aligners.trained import MAX_LOGIT_SCALE, Heads, TrainedAligner
from retrieval.progress import Progress


class FitSettings(Protocol):
    """What fitting reads from a run's settings (``retrieval.training.train.TrainSettings``)."""

    batch_size: int
    lr: float
    weight_decay: float
    trunk_lr_scale: float
    seed: int


def permutation(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(n)``: torch's, so splits match those of earlier runs."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()


def frozen_features(tower: ImageTower, pixels: np.ndarray) -> np.ndarray:
    """The tower's frozen output for a batch of preprocessed pixels."""
    return tower.frozen(pixels).cpu().numpy()


@dataclass
class Tables:
    """One split's features on the training device: what the heads read each step."""

    #: Readout features (a tensor), or the trunk's cached input (memory-mapped) when stages are unlocked.
    images: Any
    texts: torch.Tensor


def tables(tower: ImageTower, images: np.ndarray, texts: np.ndarray) -> Tables:
    if not tower.unlock:  # nothing trains before the readout: run it once, keep the result in memory
        return Tables(readout(tower, images), torch.from_numpy(texts).to(tower.device))
    return Tables(images, torch.from_numpy(texts).to(tower.device))


@torch.no_grad()
def readout(tower: ImageTower, cached: np.ndarray, chunk: int = 4096) -> torch.Tensor:
    # trunk_forward with nothing unlocked is the readout; it also unpacks what a tower keeps
    # beside the frozen features in its cache (the default aligner's expert weights).
    parts = [
        tower.trunk_forward(torch.from_numpy(np.array(cached[i : i + chunk], np.float32)).to(tower.device))
        for i in range(0, len(cached), chunk)
    ]
    return torch.cat(parts)


def new_heads(config: dict[str, Any], tower: ImageTower, seed: int, warm: TrainedAligner | None = None) -> Heads:
    """Heads for `tower`: seeded fresh ones, or (with the trunk) the weights of an earlier run `warm`."""
    torch.manual_seed(seed)
    heads = Heads.from_config(config, tower)
    if warm is not None:
        heads.load_state_dict(warm.heads.state_dict())
        tower.trunk.load_state_dict(warm.tower.trunk.state_dict())
    return heads


# -- the loss -----------------------------------------------------------------------
def contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
    image_ids: torch.Tensor, text_ids: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) over a batch; pairs sharing an image or a text are positives."""
    image_emb = nn.functional.normalize(image_emb, dim=-1)
    text_emb = nn.functional.normalize(text_emb, dim=-1)
    logits = logit_scale.exp() * image_emb @ text_emb.T
    positive = (image_ids[:, None] == image_ids[None, :]) | (text_ids[:, None] == text_ids[None, :])
    targets = positive.float()
    i2t = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    t2i = -(targets.T / targets.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
    return (i2t + t2i) / 2


# -- the steps ----------------------------------------------------------------------
class Trainer:
    """Steps and embeddings over cached features; ``retrieval.training.train.train`` drives it."""

    def __init__(self, tower: ImageTower, heads: Heads, settings: FitSettings):
        self.tower, self.heads, self.settings = tower, heads, settings
        self.device = tower.device
        self.heads.to(self.device)
        groups: list[dict[str, Any]] = [{"params": list(heads.parameters()), "lr": settings.lr}]
        if tower.unlock:
            groups.append({"params": list(tower.trunk.parameters()), "lr": settings.lr * settings.trunk_lr_scale})
        self.optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
        self.generator = torch.Generator().manual_seed(settings.seed)

    def set_lr(self, step: int, total: int) -> None:
        # Cosine decay with a short warm-up: the heads start at the base's behaviour, and a
        # full-size first step from there would undo it before the temperature adapts.
        warmup = max(1, min(50, total // 20))
        factor = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        for group, base_lr in zip(self.optimizer.param_groups, self._base_lrs()):
            group["lr"] = base_lr * factor

    def _base_lrs(self) -> list[float]:
        lrs = [self.settings.lr]
        if self.tower.unlock:
            lrs.append(self.settings.lr * self.settings.trunk_lr_scale)
        return lrs

    def image_embeddings(self, features: Any, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Heads over ready features (a tensor), or over the trunk's cached input (memory-mapped)."""
        if not self.tower.unlock:
            return self.heads.image(features if rows is None else features[rows.to(self.device)])
        part = features if rows is None else features[rows.numpy()]
        x = torch.from_numpy(np.array(part, dtype=np.float32)).to(self.device)
        return self.heads.image(self.tower.trunk_forward(x))

    def epoch(
        self, features: Tables, image_rows: np.ndarray, text_rows: np.ndarray, step0: int, total: int,
        progress: Progress,
    ) -> float:
        """One pass over the pairs (image row, text row) in seeded random batches; the mean loss."""
        bs = self.settings.batch_size
        images, texts = torch.from_numpy(image_rows), torch.from_numpy(text_rows)
        pairs = len(text_rows)
        order = torch.randperm(pairs, generator=self.generator)
        steps = pairs // bs
        losses = []
        self.heads.train()
        progress.start(steps, "training")
        for s in range(steps):
            batch = order[s * bs : (s + 1) * bs]
            img_ids, txt_ids = images[batch], texts[batch]
            self.set_lr(step0 + s, total)
            image_emb = self.image_embeddings(features.images, img_ids)
            text_emb = self.heads.text(features.texts[txt_ids.to(self.device)])
            loss = contrastive_loss(image_emb, text_emb, self.heads.logit_scale, img_ids.to(self.device), txt_ids.to(self.device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                self.heads.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            losses.append(float(loss.detach()))
            progress.advance(1)
            _postfix(progress, loss=f"{np.mean(losses[-20:]):.4f}")
        progress.close()
        self.heads.eval()
        return float(np.mean(losses))

    @torch.no_grad()
    def embed(self, features: Tables, n_images: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalized vectors of every image and text row, as the trained aligner would make them."""
        images = torch.cat([
            self.image_embeddings(features.images[start : start + 1024]) for start in range(0, n_images, 1024)
        ])
        image_vectors = nn.functional.normalize(images, dim=-1).cpu().numpy()
        text_vectors = nn.functional.normalize(self.heads.text(features.texts), dim=-1).cpu().numpy()
        return image_vectors, text_vectors

    def temperature(self) -> float:
        return float(1 / self.heads.logit_scale.detach().exp())

    def weights(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        heads = {k: v.detach().cpu().clone() for k, v in self.heads.state_dict().items()}
        trunk = {k: v.detach().cpu().clone() for k, v in self.tower.trunk.state_dict().items()}
        return heads, trunk

    def state(self) -> dict[str, Any]:
        """What resuming needs beyond the weights: the optimizer's moments and the batch order's generator."""
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's ``resume`` record (weights, optimizer, generator)."""
        self.heads.load_state_dict(state["heads"])
        self.tower.trunk.load_state_dict(state["trunk"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


def _postfix(progress: Progress, **values: Any) -> None:
    # Optional beyond the Progress protocol: the CLI's bar shows the running loss.
    show = getattr(progress, "postfix", None)
    if show is not None:
        show(**values)

