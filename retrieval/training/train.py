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
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.aligners import Aligner, fitting
from retrieval.aligners.fitting import Tables, Trainer
from retrieval.aligners.registry import describe_base, rebuild_base
from retrieval.aligners.towers import ImageTower, image_tower
from retrieval.aligners.trained import (
    FORMAT,
    FORMAT_VERSION,
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
from retrieval.ingest.settings import IndexSettings
from retrieval.ingest.stream import batched, load_stream
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

    image_rows: np.ndarray
    text_rows: np.ndarray
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
        rows = np.array([index[c] for c in ds.captions], dtype=np.int64)
        queries = queries_for(ds)
        query_rows = np.array([index[t] for t in queries.texts], dtype=np.int64)
        return cls(ds.caption_image.copy(), rows, list(ds.images), texts, queries, query_rows)

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
    order = fitting.permutation(n, seed)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return ds.subset(train), ds.subset(val)


def validation_metrics(
    image_vectors: np.ndarray, text_vectors: np.ndarray, split: Split, ks: Sequence[int]
) -> dict[str, Any]:
    """Recall@k exactly as ``retrieval eval`` computes it (shared captions grouped)."""
    q = split.queries
    return metrics_for(image_vectors, text_vectors[split.query_rows], q.text_images, q.image_texts, ks)


def mean_recall(metrics: dict[str, Any]) -> float:
    values = [v for direction in metrics.values() for k, v in direction.items() if k.startswith("R@")]
    return float(np.mean(values))


# -- feature cache ------------------------------------------------------------------
def feature_dir() -> Path:
    from retrieval.aligners.conse import cache_dir

    return cache_dir() / "train-features"


def _key(*parts: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def _file_stamps(paths: Sequence[str]) -> list[tuple[str, int | None, int | None]]:
    stamps: list[tuple[str, int | None, int | None]] = []
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
    out: np.memmap | None = None
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
                feats = fitting.frozen_features(tower, np.stack(good))
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
        assert out is not None  # at least one image, and none unreadable
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        progress.close()
        if tmp.exists():
            tmp.unlink()
    return np.load(path, mmap_mode="r")


def text_features(base: Aligner, texts: list[str], progress: Progress) -> np.ndarray:
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


def load_start(start: str | dict[str, Any], device: str | None) -> tuple[Aligner, TrainedAligner | None]:
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


def _resumed_settings(previous: dict[str, Any], settings: TrainSettings) -> TrainSettings:
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

    train: Tables
    val: Tables | None
    seconds: float


def compute_features(
    tower: ImageTower, train_set: Dataset, val_set: Dataset | None, settings: TrainSettings, progress: Progress
) -> Features:
    started = time.monotonic()
    out: list[Tables | None] = []
    for ds in (train_set, val_set):
        if ds is None:
            out.append(None)
            continue
        split = Split.of(ds)
        images = image_features(tower, split.images, settings, progress, ds.where)
        out.append(fitting.tables(tower, images, text_features(tower.base, split.texts, progress)))
    train, val = out
    assert train is not None
    return Features(train, val, seconds=time.monotonic() - started)


def build_model(start: str | dict[str, Any], settings: TrainSettings) -> tuple[ImageTower, Heads, dict[str, Any]]:
    """The image tower and heads to train: fresh on a base aligner, or an earlier run's weights."""
    base, warm = load_start(start, settings.device)
    if warm is not None:
        if settings.unlock not in (0, warm.config["unlock"]) or settings.hidden not in (0, warm.config["hidden"]):
            raise TrainingError(f"--from {start}: its --unlock-last and --hidden cannot change")
        settings.unlock, settings.hidden = warm.config["unlock"], warm.config["hidden"]
    tower = image_tower(base, settings.unlock)
    config = {"dim": int(base.dim), "text_dim": int(base.dim), "hidden": settings.hidden, "unlock": settings.unlock}
    return tower, fitting.new_heads(config, tower, settings.seed, warm), config


def check_resumable(previous: dict[str, Any], out: Path, key: str, settings: TrainSettings) -> None:
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

    def __init__(
        self, trainer: Trainer, settings: TrainSettings, features: Features, val_split: Split | None,
        header: dict[str, Any], out: Path,
    ):
        self.trainer, self.settings, self.features = trainer, settings, features
        self.val_split, self.header, self.out = val_split, header, out
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "score": -1.0, "metrics": None}
        self.best_weights = trainer.weights()
        self.first_epoch = 1

    def restore(self, previous: dict[str, Any]) -> None:
        state = previous["resume"]
        self.trainer.restore(state)
        self.history = list(previous["history"])
        self.best = dict(previous["best"])
        self.best_weights = (previous["heads"], previous["trunk"])
        self.first_epoch = state["epoch"] + 1

    def evaluate(self, epoch: int, loss: float | None, seconds: float) -> EpochReport:
        """Validation recall after `epoch`; keeps the weights when they are the best so far."""
        f, settings = self.features, self.settings
        metrics = None
        if self.val_split is not None and f.val is not None:
            images, texts = self.trainer.embed(f.val, len(self.val_split.images))
            metrics = validation_metrics(images, texts, self.val_split, settings.ks)
        score = mean_recall(metrics) if metrics else None
        improved = score is None or score > self.best["score"]
        if improved:
            self.best = {"epoch": epoch, "score": score if score is not None else 0.0, "metrics": metrics}
            self.best_weights = self.trainer.weights()
        temperature = self.trainer.temperature()
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
                "epoch": epoch, "heads": heads, "trunk": trunk, **self.trainer.state(),
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

    header: dict[str, Any] = {
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
    run = Run(Trainer(tower, heads, settings), settings, features, val_split, header, out)
    if previous is not None:
        run.restore(previous)
    else:
        on_epoch(run.evaluate(0, None, 0.0))  # the starting point: the base aligner's own recall
    steps = train_split.pairs // settings.batch_size
    training_started = time.monotonic()
    for epoch in range(run.first_epoch, settings.epochs + 1):
        epoch_started = time.monotonic()
        loss = run.trainer.epoch(
            features.train, train_split.image_rows, train_split.text_rows, (epoch - 1) * steps, steps * settings.epochs,
            progress,
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
