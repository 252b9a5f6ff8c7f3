"""Contrastive training of the aligner on image-caption pairs (LiT: locked towers, trained heads).

The pipeline, one way:

1. the starting aligner's towers compute features once per image and per distinct
   caption; they are cached on disk (``$RETRIEVAL_CACHE/train-features``), keyed by the
   tower's identity and the files' paths, sizes and times, so a second run starts at once;
2. projection heads (and the unlocked last stages of the image tower, if asked) train
   over the cache with CLIP's symmetric InfoNCE loss and a learned temperature;
3. after each epoch, recall@k on the validation pairs; the checkpoint file is rewritten
   atomically with the best weights so far (what ``--model FILE`` uses) and the last
   training state (what ``--resume`` continues from).

Captions shared by several images (class names) would be false negatives for each
other in a batch; pairs with the same image or the same text count as positives of
each other (soft targets), which for one-caption-per-image data is plain InfoNCE.

    >>> from retrieval.evaluation.datasets import load_dataset
    >>> result = train(load_dataset("easy-vqa", split="train"), "shapes.pt")  # doctest: +SKIP
    >>> result.best_metrics["text_to_image"]["R@1"]                           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from retrieval.aligners.towers import ImageTower, describe_base, image_tower, rebuild_base
from retrieval.aligners.trained import (
    FORMAT,
    FORMAT_VERSION,
    MAX_LOGIT_SCALE,
    Heads,
    TrainedAligner,
    read_checkpoint,
    save_checkpoint,
    weights_digest,
)
from retrieval.errors import ModelError, TrainingError
from retrieval.evaluation.datasets import Dataset
from retrieval.evaluation.evaluate import Queries, queries_for
from retrieval.evaluation.metrics import metrics_for
from retrieval.ingest.pipeline import IndexSettings, batched, load_stream
from retrieval.progress import NullProgress, Progress

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """What a run does; every field has a CLI option of the same name."""

    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    #: Hidden width of a residual MLP in each head; 0 for linear heads.
    hidden: int = 0
    #: Trailing stages of the image tower to train (0: LiT, the tower stays locked).
    unlock: int = 0
    #: The unlocked stages learn this much slower than the heads (they start pretrained).
    trunk_lr_scale: float = 0.1
    #: Share of PAIRS' images held out for validation when no validation set is given.
    val_share: float = 0.1
    seed: int = 0
    ks: tuple[int, ...] = (1, 5, 10)
    #: Decoding processes for feature extraction (None: one per core).
    workers: int | None = None
    device: str | None = None

    def check(self) -> None:
        if self.epochs < 1:
            raise TrainingError("--epochs must be at least 1")
        if self.batch_size < 2:
            raise TrainingError("--batch-size must be at least 2 (contrastive training needs negatives)")
        if not self.lr > 0:
            raise TrainingError("--lr must be positive")
        if not 0 <= self.val_share < 1:
            raise TrainingError("--val-share must be in [0, 1)")
        if self.unlock < 0 or self.hidden < 0:
            raise TrainingError("--unlock-last and --hidden cannot be negative")


#: Settings that fix what a checkpoint is; a resumed run keeps the stored ones.
_STRUCTURAL = ("batch_size", "lr", "weight_decay", "hidden", "unlock", "trunk_lr_scale", "val_share", "seed")


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    loss: float | None
    metrics: dict | None
    score: float | None
    best: bool
    temperature: float
    seconds: float

    def line(self) -> str:
        parts = [f"epoch {self.epoch}/{self.epochs}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.metrics:
            t2i, i2t = self.metrics["text_to_image"], self.metrics["image_to_text"]
            parts.append(f"val t2i R@1 {t2i['R@1']:.3f}  i2t R@1 {i2t['R@1']:.3f}  mean R {self.score:.3f}")
        if self.best and self.epoch:
            parts.append("(best)")
        return "  ".join(parts)


@dataclass
class TrainResult:
    out: str
    run_id: str
    identity: str
    base: str
    base_identity: str
    train_pairs: int
    train_images: int
    val_pairs: int
    val_images: int
    epochs: int
    best_epoch: int
    before: dict | None
    best_metrics: dict | None
    seconds: float
    feature_seconds: float
    history: list[dict] = field(default_factory=list)
    #: Time spent in this run's epochs (training steps and validation), after the features.
    train_seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


# -- the data: features, split, validation --------------------------------------
@dataclass
class Split:
    """Pairs as (image row, text row) into feature tables, and who is relevant to whom."""

    image_rows: torch.Tensor
    text_rows: torch.Tensor
    images: list[str]
    #: Distinct caption texts: the text feature table's rows.
    texts: list[str]
    #: The queries `retrieval eval` asks, and for each its row in `texts`.
    queries: Queries
    query_rows: np.ndarray

    @classmethod
    def of(cls, ds: Dataset) -> Split:
        texts = list(dict.fromkeys(ds.captions))
        index = {t: i for i, t in enumerate(texts)}
        rows = torch.tensor([index[c] for c in ds.captions], dtype=torch.long)
        queries = queries_for(ds)
        query_rows = np.array([index[t] for t in queries.texts], dtype=np.int64)
        return cls(torch.from_numpy(ds.caption_image.copy()), rows, list(ds.images), texts, queries, query_rows)

    @property
    def pairs(self) -> int:
        return len(self.text_rows)


def data_key(ds: Dataset) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([ds.images, ds.captions, ds.caption_image.tolist()]).encode())
    return h.hexdigest()


def hold_out(ds: Dataset, share: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Split by image, so no validation image is seen in training."""
    if share <= 0:
        return ds, None
    n = len(ds.images)
    n_val = max(1, round(n * share))
    if n - n_val < 2:
        raise TrainingError(f"{ds.name}: {n} images are too few to hold out {share:.0%} for validation; give --val")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return ds.subset(train), ds.subset(val)


def validation_metrics(image_vectors: np.ndarray, text_vectors: np.ndarray, split: Split, ks: Sequence[int]) -> dict:
    """Recall@k exactly as ``retrieval eval`` computes it (shared captions grouped)."""
    q = split.queries
    return metrics_for(image_vectors, text_vectors[split.query_rows], q.text_images, q.image_texts, ks)


def mean_recall(metrics: dict) -> float:
    values = [v for direction in metrics.values() for k, v in direction.items() if k.startswith("R@")]
    return float(np.mean(values))


# -- feature cache ------------------------------------------------------------------
def feature_dir() -> Path:
    from retrieval.aligners.conse import cache_dir

    return cache_dir() / "train-features"


def _key(*parts) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def _file_stamps(paths: Sequence[str]) -> list:
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append((path, st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append((path, None, None))  # reported as unreadable when loaded
    return stamps


def image_features(
    tower: ImageTower, paths: list[str], settings: TrainSettings, progress: Progress, where: list[str] | None = None
) -> np.ndarray:
    """The tower's frozen output for each image, computed once and cached (memory-mapped)."""
    key = _key("images", tower.cache_identity(), _file_stamps(paths))
    path = feature_dir() / f"img-{key}.npy"
    if path.exists():
        log.info("image features from cache %s", path)
        return np.load(path, mmap_mode="r")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
    out = None
    bad: list[str] = []
    loader = IndexSettings(workers=settings.workers)
    stream = load_stream(paths, tower.transform, frozenset(), loader)
    progress.start(len(paths), "features: images")
    row = 0
    try:
        for batch in batched(stream, loader.batch_size):
            for i, item in enumerate(batch):
                if item.error is not None:
                    origin = f" ({where[row + i]})" if where else ""
                    bad.append(f"{item.path}{origin}: {item.error}")
            good = [it.pixels for it in batch if it.pixels is not None]
            if good and not bad:
                feats = tower.frozen(np.stack(good)).cpu().numpy()
                if out is None:
                    # Trunk inputs are large activation maps: half precision halves the cache.
                    dtype = np.float16 if tower.unlock else np.float32
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(paths), *feats.shape[1:]))
                out[row : row + len(feats)] = feats
            row += len(batch)
            progress.advance(len(batch))
        progress.close()
        if bad:
            more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
            raise TrainingError(
                f"{len(bad)} of {len(paths)} images cannot be read: " + "; ".join(bad[:3]) + more
                + ". Fix or remove them from the pairs."
            )
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        progress.close()
        if tmp.exists():
            tmp.unlink()
    return np.load(path, mmap_mode="r")


@torch.no_grad()
def readout(tower: ImageTower, cached: np.ndarray, chunk: int = 4096) -> torch.Tensor:
    # trunk_forward with nothing unlocked is the readout; it also unpacks what a tower keeps
    # beside the frozen features in its cache (the default aligner's expert weights).
    parts = [
        tower.trunk_forward(torch.from_numpy(np.array(cached[i : i + chunk], np.float32)).to(tower.device))
        for i in range(0, len(cached), chunk)
    ]
    return torch.cat(parts)


def text_features(base, texts: list[str], progress: Progress) -> np.ndarray:
    key = _key("texts", base.identity, texts)
    path = feature_dir() / f"txt-{key}.npy"
    if path.exists():
        return np.load(path)
    progress.start(len(texts), "features: captions")
    parts = []
    for batch in batched(texts, 256):
        parts.append(base.encode_texts(batch))
        progress.advance(len(batch))
    progress.close()
    features = np.concatenate(parts).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
    np.save(tmp, features)
    os.replace(tmp, path)
    return features


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


# -- the run ------------------------------------------------------------------------
class Trainer:
    """Steps and validation over cached features; :func:`train` drives it."""

    def __init__(self, tower: ImageTower, heads: Heads, settings: TrainSettings):
        self.tower, self.heads, self.settings = tower, heads, settings
        self.device = tower.device
        self.heads.to(self.device)
        groups = [{"params": list(heads.parameters()), "lr": settings.lr}]
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

    def _base_lrs(self):
        lrs = [self.settings.lr]
        if self.tower.unlock:
            lrs.append(self.settings.lr * self.settings.trunk_lr_scale)
        return lrs

    def image_embeddings(self, features, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Heads over ready features (a tensor), or over the trunk's cached input (memory-mapped)."""
        if not self.tower.unlock:
            return self.heads.image(features if rows is None else features[rows.to(self.device)])
        part = features if rows is None else features[rows.numpy()]
        x = torch.from_numpy(np.array(part, dtype=np.float32)).to(self.device)
        return self.heads.image(self.tower.trunk_forward(x))

    def epoch(self, features, texts: torch.Tensor, split: Split, step0: int, total: int, progress: Progress) -> float:
        bs = self.settings.batch_size
        order = torch.randperm(split.pairs, generator=self.generator)
        steps = split.pairs // bs
        losses = []
        self.heads.train()
        progress.start(steps, "training")
        for s in range(steps):
            batch = order[s * bs : (s + 1) * bs]
            img_ids, txt_ids = split.image_rows[batch], split.text_rows[batch]
            self.set_lr(step0 + s, total)
            image_emb = self.image_embeddings(features, img_ids)
            text_emb = self.heads.text(texts[txt_ids.to(self.device)])
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
    def validate(self, features, texts: torch.Tensor, split: Split) -> dict:
        images = torch.cat([
            self.image_embeddings(features[start : start + 1024]) for start in range(0, len(split.images), 1024)
        ])
        image_vectors = nn.functional.normalize(images, dim=-1).cpu().numpy()
        text_vectors = nn.functional.normalize(self.heads.text(texts), dim=-1).cpu().numpy()
        return validation_metrics(image_vectors, text_vectors, split, self.settings.ks)

    def weights(self) -> tuple[dict, dict]:
        heads = {k: v.detach().cpu().clone() for k, v in self.heads.state_dict().items()}
        trunk = {k: v.detach().cpu().clone() for k, v in self.tower.trunk.state_dict().items()}
        return heads, trunk


def _postfix(progress: Progress, **values) -> None:
    # Optional beyond the Progress protocol: the CLI's bar shows the running loss.
    show = getattr(progress, "postfix", None)
    if show is not None:
        show(**values)


def check_output(out: Path, force: bool, resume: bool) -> None:
    if resume:
        if not out.is_file():
            raise TrainingError(f"nothing to resume: {out} does not exist")
        return
    if out.is_dir():
        raise TrainingError(f"{out} is a folder; give a file name for --out")
    if out.exists() and not force:
        raise TrainingError(f"{out} already exists: use --resume to continue training it, or --force to replace it")
    if not out.parent.is_dir():
        raise TrainingError(f"folder not found for --out: {out.parent}")


def load_start(start: str | dict, device: str | None) -> tuple:
    """The starting aligner's base (its towers) and, for a trained checkpoint, the checkpoint.

    `start` is a spec, or a checkpoint's record of its base (resuming).
    """
    from retrieval.aligners import load_aligner

    try:
        aligner = rebuild_base(start, device) if isinstance(start, dict) else load_aligner(start, device=device)
    except ModelError as exc:
        spec = start["spec"] if isinstance(start, dict) else start
        raise TrainingError(f"cannot load the starting aligner --from {spec!r}: {exc}") from exc
    if isinstance(aligner, TrainedAligner):
        return aligner.base, aligner
    return aligner, None


def _resumed_settings(previous: dict, settings: TrainSettings) -> TrainSettings:
    if "resume" not in previous:
        raise TrainingError("the checkpoint holds no training state to resume")
    stored = previous["config"]["settings"]
    return TrainSettings(**{**asdict(settings), **{k: stored[k] for k in _STRUCTURAL}})


def _too_few(pairs: Dataset, train_set: Dataset, held_out: bool, settings: TrainSettings) -> None:
    if len(train_set.captions) >= settings.batch_size:
        return
    after = f" (after holding out {settings.val_share:.0%} of the images for validation)" if held_out else ""
    raise TrainingError(
        f"{pairs.name}: {len(train_set.captions)} training pairs{after} are fewer than --batch-size "
        f"{settings.batch_size}: lower --batch-size or add pairs"
    )


@dataclass
class Features:
    """Everything training reads, on the training device (image tables may be memory-mapped)."""

    train: object
    train_texts: torch.Tensor
    val: object | None
    val_texts: torch.Tensor | None
    seconds: float


def compute_features(
    tower: ImageTower, train_set: Dataset, val_set: Dataset | None, settings: TrainSettings, progress: Progress
) -> Features:
    started = time.monotonic()
    out = []
    for ds in (train_set, val_set):
        if ds is None:
            out += [None, None]
            continue
        split = Split.of(ds)
        images = image_features(tower, split.images, settings, progress, ds.where)
        if not tower.unlock:  # nothing trains before the readout: run it once, keep the result in memory
            images = readout(tower, images)
        out += [images, torch.from_numpy(text_features(tower.base, split.texts, progress)).to(tower.device)]
    return Features(*out, seconds=time.monotonic() - started)


def build_model(start: str | dict, settings: TrainSettings) -> tuple[ImageTower, Heads, dict]:
    """The image tower and heads to train: fresh on a base aligner, or an earlier run's weights."""
    base, warm = load_start(start, settings.device)
    if warm is not None:
        if settings.unlock not in (0, warm.config["unlock"]) or settings.hidden not in (0, warm.config["hidden"]):
            raise TrainingError(f"--from {start}: its --unlock-last and --hidden cannot change")
        settings.unlock, settings.hidden = warm.config["unlock"], warm.config["hidden"]
    tower = image_tower(base, settings.unlock)
    config = {"dim": int(base.dim), "text_dim": int(base.dim), "hidden": settings.hidden, "unlock": settings.unlock}
    torch.manual_seed(settings.seed)
    heads = Heads.from_config(config, tower)
    if warm is not None:
        heads.load_state_dict(warm.heads.state_dict())
        tower.trunk.load_state_dict(warm.tower.trunk.state_dict())
    return tower, heads, config


def check_resumable(previous: dict, out: Path, key: str, settings: TrainSettings) -> None:
    if previous["data"]["key"] != key:
        raise TrainingError(
            f"{out} was trained on other pairs (or another validation split): resume with the same PAIRS and --val"
        )
    if settings.epochs <= previous["resume"]["epoch"]:
        raise TrainingError(
            f"{out} has already trained {previous['resume']['epoch']} epochs: give a larger --epochs to continue"
        )


class Run:
    """The state of one run between epochs: history, best weights, what the file holds."""

    def __init__(self, trainer: Trainer, features: Features, val_split: Split | None, header: dict, out: Path):
        self.trainer, self.features, self.val_split, self.header, self.out = trainer, features, val_split, header, out
        self.history: list[dict] = []
        self.best = {"epoch": 0, "score": -1.0, "metrics": None}
        self.best_weights = trainer.weights()
        self.first_epoch = 1

    def restore(self, previous: dict) -> None:
        state = previous["resume"]
        self.trainer.heads.load_state_dict(state["heads"])
        self.trainer.tower.trunk.load_state_dict(state["trunk"])
        self.trainer.optimizer.load_state_dict(state["optimizer"])
        self.trainer.generator.set_state(state["generator"])
        self.history = list(previous["history"])
        self.best = dict(previous["best"])
        self.best_weights = (previous["heads"], previous["trunk"])
        self.first_epoch = state["epoch"] + 1

    def evaluate(self, epoch: int, loss: float | None, seconds: float) -> EpochReport:
        """Validation recall after `epoch`; keeps the weights when they are the best so far."""
        f, settings = self.features, self.trainer.settings
        metrics = self.trainer.validate(f.val, f.val_texts, self.val_split) if self.val_split is not None else None
        score = mean_recall(metrics) if metrics else None
        improved = score is None or score > self.best["score"]
        if improved:
            self.best = {"epoch": epoch, "score": score if score is not None else 0.0, "metrics": metrics}
            self.best_weights = self.trainer.weights()
        temperature = float(1 / self.trainer.heads.logit_scale.detach().exp())
        self.history.append({"epoch": epoch, "loss": loss, "metrics": metrics, "score": score,
                             "seconds": seconds, "temperature": temperature})
        return EpochReport(epoch, settings.epochs, loss, metrics, score, improved, temperature, seconds)

    def save(self, epoch: int) -> None:
        """Best weights (what ``--model`` uses) and the last state (what ``--resume`` uses), atomically."""
        heads, trunk = self.trainer.weights()
        best_heads, best_trunk = self.best_weights
        digest = weights_digest(best_heads, best_trunk)
        save_checkpoint({
            **self.header,
            "identity": f"trained/{self.header['run_id']}-{digest[:12]}",
            "heads": best_heads, "trunk": best_trunk, "best": self.best, "history": self.history,
            "resume": {
                "epoch": epoch, "heads": heads, "trunk": trunk,
                "optimizer": self.trainer.optimizer.state_dict(), "generator": self.trainer.generator.get_state(),
            },
        }, self.out)
        log.info("epoch %d written to %s", epoch, self.out)


def train(
    pairs: Dataset,
    out: str | Path,
    *,
    start: str = "default",
    val: Dataset | None = None,
    settings: TrainSettings | None = None,
    resume: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> TrainResult:
    """Train projection heads on `pairs` from the aligner `start`; write the checkpoint `out`.

    `start` is ``default``, an open_clip spec, or a checkpoint of an earlier run (its
    weights are the starting point). Without `val`, ``settings.val_share`` of the images
    are held out. The file is rewritten atomically after every epoch and holds the best
    weights by validation recall (its path is a valid ``--model``) and the last training
    state (``resume=True`` continues from it, up to ``settings.epochs``).
    """
    started = time.monotonic()
    settings = replace(settings or TrainSettings())
    progress = progress or NullProgress()
    on_epoch = on_epoch or (lambda report: None)
    out = Path(out).expanduser().resolve()
    check_output(out, force, resume)
    previous = read_checkpoint(out) if resume else None
    if previous is not None:
        settings = _resumed_settings(previous, settings)
    settings.check()

    # Cheap checks first: nothing is loaded or computed for a run that cannot go ahead.
    train_set, held_out = hold_out(pairs, 0 if val is not None else settings.val_share, settings.seed)
    val_set = val if val is not None else held_out
    _too_few(pairs, train_set, held_out is not None, settings)
    key = data_key(train_set)
    if previous is not None:
        check_resumable(previous, out, key, settings)

    tower, heads, config = build_model(start if previous is None else previous["base"], settings)
    if previous is not None and tower.base.identity != previous["base"]["identity"]:
        raise TrainingError(f"{out} was trained from {previous['base']['identity']}, which this installation cannot rebuild")
    train_split, val_split = Split.of(train_set), (Split.of(val_set) if val_set is not None else None)
    features = compute_features(tower, train_set, val_set, settings, progress)

    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "run_id": previous["run_id"] if previous is not None else uuid.uuid4().hex[:12],
        "base": describe_base(tower.base),
        "config": {**config, "tower": tower.kind, "start": previous["config"]["start"] if previous else start,
                   "settings": asdict(settings)},
        "data": {
            "key": key, "name": pairs.name, "train_pairs": train_split.pairs, "train_images": len(train_split.images),
            "val": None if val_set is None else val_set.name, "val_pairs": 0 if val_split is None else val_split.pairs,
        },
    }
    run = Run(Trainer(tower, heads, settings), features, val_split, header, out)
    if previous is not None:
        run.restore(previous)
    else:
        on_epoch(run.evaluate(0, None, 0.0))  # the starting point: the base aligner's own recall
    steps = train_split.pairs // settings.batch_size
    training_started = time.monotonic()
    for epoch in range(run.first_epoch, settings.epochs + 1):
        epoch_started = time.monotonic()
        loss = run.trainer.epoch(
            features.train, features.train_texts, train_split, (epoch - 1) * steps, steps * settings.epochs, progress
        )
        report = run.evaluate(epoch, loss, time.monotonic() - epoch_started)
        run.save(epoch)
        on_epoch(report)  # after the write: a Ctrl-C from here on keeps this epoch

    history = run.history
    return TrainResult(
        out=str(out), run_id=header["run_id"], identity=read_checkpoint(out)["identity"], base=tower.base.spec,
        base_identity=tower.base.identity, train_pairs=train_split.pairs, train_images=len(train_split.images),
        val_pairs=0 if val_split is None else val_split.pairs,
        val_images=0 if val_split is None else len(val_split.images),
        epochs=settings.epochs, best_epoch=run.best["epoch"],
        before=history[0]["metrics"] if history and history[0]["epoch"] == 0 else None,
        best_metrics=run.best["metrics"], seconds=time.monotonic() - started,
        feature_seconds=features.seconds, history=history, train_seconds=time.monotonic() - training_started,
    )
