"""Captioned image sets for evaluation and training: many formats in, one :class:`Dataset` out.

Formats (picked from the source; see :func:`load_dataset`):

- a pairs file: CSV or TSV with an ``image`` column (or ``path`` / ``file`` / ``filename`` /
  ``filepath``) and a ``caption`` column (or ``text``); several rows per image are allowed;
  relative paths resolve against the file's folder. An optional ``split`` column filters rows;
- the Karpathy split JSON of Flickr8k / Flickr30k / COCO (``dataset_flickr30k.json``,
  ``dataset_coco.json``): ``images[].filename``, ``.split``, ``.sentences[].raw`` and, for
  COCO, ``.filepath`` (``val2014``); images are looked up under ``images`` (default: the
  JSON's folder) as ``DIR/filepath/filename``, then ``DIR/filename``;
- COCO captions JSON (``captions_val2014.json``: ``images`` and ``annotations``);
- a folder where each image has a same-name ``.txt`` caption file (one caption a line);
- built-in offline sets: ``fashion-mnist`` (Debian package ``dataset-fashion-mnist``) and
  ``easy-vqa`` (PyPI package ``easy-vqa``).

Built-in sets have *shared captions*: one text (``"a photo of a coat"``, ``"a red circle"``)
describes many images. For them ``Dataset.shared_captions`` is true and evaluation groups
equal texts: text-to-image R@k is the share of distinct captions with *at least one* of
their images in the top k (easy when a class has 1,000 images), image-to-text R@k is the
share of images whose caption is among the k best-scoring distinct captions (R@1 is
zero-shot classification accuracy), and mean average precision over all relevant images
is reported beside them because it is not easy. File formats keep CLIP_benchmark's
protocol exactly: every caption row is its own query with its one image.

    >>> ds = load_dataset("easy-vqa")                   # doctest: +SKIP
    >>> len(ds.images), ds.captions[0]                   # doctest: +SKIP
    (1000, 'a red triangle')
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval import paths
from retrieval.errors import DatasetError
from retrieval.media.files import image_extensions

log = logging.getLogger(__name__)

BUILTINS = ("fashion-mnist", "easy-vqa")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Class names as captions; index = Fashion-MNIST label.
FASHION_MNIST_CLASSES = (
    "a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat",
    "a sandal", "a shirt", "a sneaker", "a bag", "an ankle boot",
)
FASHION_MNIST_TEMPLATE = "a photo of {}"

_IMAGE_COLUMNS = ("image", "path", "file", "filename", "filepath")
_CAPTION_COLUMNS = ("caption", "text")


@dataclass
class Dataset:
    """Images and captions; ``caption_image[i]`` is the index in ``images`` of caption i's image."""

    name: str
    #: Absolute image paths, unique.
    images: list[str]
    captions: list[str]
    #: int64, one entry per caption.
    caption_image: np.ndarray
    #: Images skipped because their file is missing (``skip_missing=True``).
    missing: int = 0
    #: One caption text is meant for many images (class-name captions); evaluation groups
    #: equal texts (see the module docstring for how recall is then defined).
    shared_captions: bool = False
    split: str | None = None
    #: Where each image came from (``"pairs.csv, line 12"``), for error messages.
    where: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.caption_image = np.asarray(self.caption_image, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def image_captions(self) -> list[np.ndarray]:
        """Caption indices of each image."""
        order = np.argsort(self.caption_image, kind="stable")
        bounds = np.searchsorted(self.caption_image[order], np.arange(len(self.images) + 1))
        return [order[bounds[i] : bounds[i + 1]] for i in range(len(self.images))]

    def subset(self, keep: np.ndarray | list[int]) -> Dataset:
        """The dataset restricted to the images at positions `keep` (and their captions)."""
        keep = np.asarray(keep, dtype=np.int64)
        new_index = np.full(len(self.images), -1, dtype=np.int64)
        new_index[keep] = np.arange(len(keep))
        rows = np.flatnonzero(new_index[self.caption_image] >= 0)
        return Dataset(
            name=self.name,
            images=[self.images[i] for i in keep],
            captions=[self.captions[r] for r in rows],
            caption_image=new_index[self.caption_image[rows]],
            missing=self.missing,
            shared_captions=self.shared_captions,
            split=self.split,
            where=[self.where[i] for i in keep] if self.where else [],
        )

    def head(self, n: int) -> Dataset:
        """The first `n` images and their captions (quick runs)."""
        return self.subset(np.arange(min(n, len(self.images))))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "split": self.split,
            "images": len(self.images),
            "captions": len(self.captions),
            "distinct_captions": len(set(self.captions)),
            "missing_images_skipped": self.missing,
            "shared_captions": self.shared_captions,
        }


def load_dataset(
    source: str, *, images: str | None = None, split: str = "test", skip_missing: bool = False
) -> Dataset:
    """Read a captioned image set; the format follows from `source`.

    `source` is a built-in name (``fashion-mnist``, ``easy-vqa``), a folder of images with
    ``.txt`` captions, a ``.csv`` / ``.tsv`` pairs file, or a Karpathy or COCO captions
    ``.json``. `images` is the image folder for the JSON formats; `split` picks the
    Karpathy / built-in split (``test`` by default). Missing image files raise
    :class:`DatasetError` naming file and line, or are skipped (and counted in
    ``Dataset.missing``) with ``skip_missing=True``.

    >>> ds = load_dataset("pairs.csv")                   # doctest: +SKIP
    >>> ds.images[ds.caption_image[0]], ds.captions[0]  # doctest: +SKIP
    ('/data/photos/dog.jpg', 'a dog on a beach')
    """
    path = Path(source).expanduser()
    if not path.exists() and source in BUILTINS:
        reader = {"fashion-mnist": _fashion_mnist, "easy-vqa": _easy_vqa}[source]
        return _finish(reader(split), source)
    if not path.exists():
        raise DatasetError(
            f"dataset not found: {source} (not a file, a folder, or a built-in set: {', '.join(BUILTINS)})"
        )
    path = path.resolve()
    if path.is_dir():
        builder = _folder(path, skip_missing)
    elif path.suffix.lower() in {".csv", ".tsv"}:
        builder = _pairs(path, split, skip_missing)
    elif path.suffix.lower() == ".json":
        builder = _json(path, images, split, skip_missing)
    else:
        raise DatasetError(
            f"{path}: unknown dataset format (expected a .csv/.tsv pairs file, a Karpathy or COCO "
            f"captions .json, a folder of images with .txt captions, or one of: {', '.join(BUILTINS)})"
        )
    return _finish(builder, str(path))


# -- building ---------------------------------------------------------------------
class _Builder:
    """Collects (image, caption) pairs, giving each distinct image one index."""

    def __init__(self, name: str, split: str | None = None, skip_missing: bool = False):
        self.name, self.split, self.skip_missing = name, split, skip_missing
        self.index: dict[str, int] = {}
        self.images: list[str] = []
        self.where: list[str] = []
        self.captions: list[str] = []
        self.caption_image: list[int] = []
        self.missing: set[str] = set()
        self.shared = False

    def add(self, image: str, caption: str, where: str, check: bool = True) -> None:
        if image in self.missing:
            return
        idx = self.index.get(image)
        if idx is None:
            if check and not os.path.isfile(image):
                if not self.skip_missing:
                    raise DatasetError(f"{where}: image not found: {image} (use --skip-missing to skip it)")
                self.missing.add(image)
                return
            idx = self.index[image] = len(self.images)
            self.images.append(image)
            self.where.append(where)
        self.captions.append(caption)
        self.caption_image.append(idx)


def _finish(b: _Builder, source: str) -> Dataset:
    if b.missing:
        log.warning("%s: skipped %d missing images", source, len(b.missing))
    if not b.captions:
        extra = f" ({len(b.missing)} missing images skipped)" if b.missing else ""
        split = f" in split {b.split!r}" if b.split else ""
        raise DatasetError(f"{source}: empty dataset: no captioned images{split}{extra}")
    return Dataset(
        name=b.name, images=b.images, captions=b.captions,
        caption_image=np.asarray(b.caption_image, dtype=np.int64), missing=len(b.missing),
        shared_captions=b.shared, split=b.split, where=b.where,
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: unreadable: {exc.strerror or exc}") from None


def _resolve(base: Path, name: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(name)))


# -- pairs file -------------------------------------------------------------------
def _pairs(path: Path, split: str, skip_missing: bool) -> _Builder:
    text = _read_text(path)
    if not text.strip():
        raise DatasetError(f"{path}: empty file (expected a header line such as 'image,caption', then one row per pair)")
    first = text.split("\n", 1)[0]
    delimiter = "\t" if path.suffix.lower() == ".tsv" or ("\t" in first and "," not in first) else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    reader.fieldnames = fields
    image_col = next((c for c in _IMAGE_COLUMNS if c in fields), None)
    caption_col = next((c for c in _CAPTION_COLUMNS if c in fields), None)
    if image_col is None or caption_col is None:
        raise DatasetError(
            f"{path}, line 1: needs an 'image' and a 'caption' column (found: {', '.join(fields) or 'nothing'})"
        )
    has_split = "split" in fields
    b = _Builder(path.stem, split if has_split else None, skip_missing)
    seen_splits: set[str] = set()
    for row in reader:
        line = f"{path}, line {reader.line_num}"
        if None in row:
            raise DatasetError(f"{line}: more fields than columns (quote captions that contain '{delimiter}')")
        if has_split:
            row_split = (row.get("split") or "").strip()
            seen_splits.add(row_split)
            if row_split != split:
                continue
        image = (row.get(image_col) or "").strip()
        caption = (row.get(caption_col) or "").strip()
        if not image:
            raise DatasetError(f"{line}: caption row with no image")
        if not caption:
            raise DatasetError(f"{line}: empty caption")
        b.add(_resolve(path.parent, image), caption, line)
    if has_split and not b.captions and not b.missing:
        raise DatasetError(f"{path}: no rows with split {split!r} (found: {', '.join(sorted(seen_splits))})")
    return b


# -- JSON: Karpathy and COCO ------------------------------------------------------
def _json(path: Path, images: str | None, split: str, skip_missing: bool) -> _Builder:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}, line {exc.lineno}: invalid JSON: {exc.msg}") from None
    root = Path(images).expanduser().resolve() if images else path.parent
    if images and not root.is_dir():
        raise DatasetError(f"image folder not found: {root}")
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: unknown JSON format (expected Karpathy 'images' with 'sentences', or COCO 'images' and 'annotations')")
    if "annotations" in data:
        return _coco(path, data, root, skip_missing)
    if not entries or isinstance(entries[0], dict) and "sentences" in entries[0]:
        return _karpathy(path, entries, root, split, skip_missing)
    raise DatasetError(f"{path}: unknown JSON format (expected Karpathy 'images' with 'sentences', or COCO 'images' and 'annotations')")


def _karpathy(path: Path, entries: list, root: Path, split: str, skip_missing: bool) -> _Builder:
    b = _Builder(path.stem, split, skip_missing)
    seen_splits: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{path}, images[{i}]"
        if not isinstance(entry, dict) or not entry.get("filename") or not isinstance(entry["filename"], str):
            raise DatasetError(f"{where}: caption entry with no image ('filename')")
        if not isinstance(entry.get("sentences") or [], list) or not isinstance(entry.get("filepath") or "", str):
            raise DatasetError(f"{where}: 'sentences' must be a list and 'filepath' a string")
        seen_splits.add(str(entry.get("split")))
        if entry.get("split") != split:
            continue
        sentences = entry.get("sentences") or []
        image = _karpathy_image(root, entry)
        for sentence in sentences:
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            caption = raw.strip() if isinstance(raw, str) else ""
            if not caption:
                raise DatasetError(f"{where} ({entry['filename']}): sentence without 'raw' text")
            b.add(image, caption, where)
    if not b.captions and not b.missing:
        raise DatasetError(f"{path}: empty dataset: no images in split {split!r} (found: {', '.join(sorted(seen_splits))})")
    return b


def _karpathy_image(root: Path, entry: dict) -> str:
    name = entry["filename"]
    if entry.get("filepath"):
        nested = _resolve(root / entry["filepath"], name)
        if os.path.isfile(nested):
            return nested
    return _resolve(root, name)


def _coco(path: Path, data: dict, root: Path, skip_missing: bool) -> _Builder:
    b = _Builder(path.stem, None, skip_missing)
    files: dict = {}
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), (int, str)) \
                or not entry.get("file_name") or not isinstance(entry["file_name"], str):
            raise DatasetError(f"{path}, images[{i}]: image entry needs 'id' and 'file_name'")
        files[entry["id"]] = entry["file_name"]
    annotations = data.get("annotations") or []
    if not isinstance(annotations, list):
        raise DatasetError(f"{path}: 'annotations' must be a list of captions")
    for i, ann in enumerate(annotations):
        where = f"{path}, annotations[{i}]"
        if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), (int, str)) or ann["image_id"] not in files:
            raise DatasetError(f"{where}: caption with no image (image_id {ann.get('image_id') if isinstance(ann, dict) else None!r} is not in 'images')")
        caption = ann.get("caption")
        caption = caption.strip() if isinstance(caption, str) else ""
        if not caption:
            raise DatasetError(f"{where}: empty caption")
        b.add(_resolve(root, files[ann["image_id"]]), caption, where)
    uncaptioned = len(files) - len(b.images) - len(b.missing)
    if uncaptioned:
        log.info("%s: %d images without captions left out", path, uncaptioned)
    return b


# -- folder with .txt captions ------------------------------------------------------
def _folder(root: Path, skip_missing: bool) -> _Builder:
    b = _Builder(root.name, None, skip_missing)
    uncaptioned = 0
    readable = image_extensions()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = set(filenames)
        stems: dict[str, str] = {}
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in readable and not name.startswith("."):
                stems.setdefault(stem, name)
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext != ".txt" or name.startswith("."):
                continue
            txt = Path(dirpath) / name
            if stem not in stems:
                raise DatasetError(f"{txt}, line 1: caption file with no image (no {stem}.jpg, .png, ... beside it)")
            image = os.path.join(dirpath, stems[stem])
            lines = [(n, line.strip()) for n, line in enumerate(_read_text(txt).splitlines(), 1) if line.strip()]
            if not lines:
                raise DatasetError(f"{txt}, line 1: empty caption file")
            for n, caption in lines:
                b.add(image, caption, f"{txt}, line {n}", check=False)
        uncaptioned += sum(1 for stem in stems if f"{stem}.txt" not in names)
    if uncaptioned:
        log.info("%s: %d images without a .txt caption file left out", root, uncaptioned)
    return b


# -- built-in sets ----------------------------------------------------------------
def cache_dir() -> Path:
    """Where built-in sets are materialized as image files: $RETRIEVAL_CACHE or ~/.cache/retrieval."""
    return paths.cache_dir()


def _check_split(name: str, split: str) -> None:
    if split not in ("train", "test"):
        raise DatasetError(f"{name}: unknown split {split!r} (use 'test' or 'train')")


def _fashion_mnist(split: str) -> _Builder:
    """Fashion-MNIST from the Debian package: 10,000 test / 60,000 train 28x28 photos, 10 classes.

    Captions are class names (``"a photo of a coat"``): shared captions.
    """
    _check_split("fashion-mnist", split)
    prefix = "t10k" if split == "test" else "train"
    images_gz = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    labels_gz = FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_gz.is_file() or not labels_gz.is_file():
        raise DatasetError(
            f"fashion-mnist: {images_gz} not found; install the Debian package: apt-get install dataset-fashion-mnist"
        )
    labels = _read_idx(labels_gz)
    folder = cache_dir() / "datasets" / "fashion-mnist" / split
    if not (folder / "COMPLETE").is_file():
        _materialize_fashion_mnist(_read_idx(images_gz), folder)
    b = _Builder("fashion-mnist", split)
    b.shared = True
    where = str(labels_gz)
    for i, label in enumerate(labels.tolist()):
        caption = FASHION_MNIST_TEMPLATE.format(FASHION_MNIST_CLASSES[label])
        b.add(str(folder / f"{i:05d}.png"), caption, f"{where}, item {i}", check=False)
    return b


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian header, then uint8 data."""
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: unreadable: {exc}") from None
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _materialize_fashion_mnist(pixels: np.ndarray, folder: Path) -> None:
    """Write each image as a PNG once; a half-written folder is never mistaken for a finished one."""
    from PIL import Image

    folder.parent.mkdir(parents=True, exist_ok=True)
    log.info("writing %d fashion-mnist images to %s (once)", len(pixels), folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for i, image in enumerate(pixels):
            Image.fromarray(image, mode="L").save(tmp / f"{i:05d}.png")
        (tmp / "COMPLETE").write_text(f"{len(pixels)}\n")
        if folder.exists():  # an earlier interrupted or concurrent run
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "COMPLETE").is_file():
            raise


EASY_VQA_COLORS = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "gray": (128, 128, 128),
    "teal": (0, 128, 128), "black": (0, 0, 0), "yellow": (255, 255, 0), "brown": (165, 42, 42),
}
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")


def _easy_vqa(split: str) -> _Builder:
    """easy-vqa's synthetic shapes: 1,000 test / 4,000 train 64x64 images, one coloured shape each.

    Each image's caption is ``"a {colour} {shape}"``, read from its questions and answers
    (``"what is the red shape?" -> "triangle"``); shared captions (24 distinct texts).
    """
    _check_split("easy-vqa", split)
    try:
        import easy_vqa
    except ImportError:
        raise DatasetError("easy-vqa: the PyPI package is not installed: pip install easy-vqa") from None
    if split == "test":
        questions, paths = easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths()
    else:
        questions, paths = easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()
    colors, shapes = easy_vqa_facts(*questions)
    b = _Builder("easy-vqa", split)
    b.shared = True
    for image_id in sorted(paths):
        color, shape = colors.get(image_id, set(EASY_VQA_COLORS)), shapes.get(image_id, set(EASY_VQA_SHAPES))
        if len(color) != 1 or len(shape) != 1:
            # ~10% of images have questions that leave colour or shape open; the pixels settle it.
            seen_color, seen_shape = easy_vqa_pixels(paths[image_id])
            color = color & {seen_color} or {seen_color}
            shape = shape & {seen_shape} or {seen_shape}
        caption = f"a {next(iter(color))} {next(iter(shape))}"
        b.add(paths[image_id], caption, f"easy-vqa {split} image {image_id}", check=False)
    return b


def easy_vqa_facts(questions: list[str], answers: list[str], image_ids: list[int]) -> tuple[dict, dict]:
    """What the questions and answers say about each image: candidate colours and shapes."""
    colors: dict[int, set[str]] = {}
    shapes: dict[int, set[str]] = {}
    for question, answer, image_id in zip(questions, answers, image_ids, strict=True):
        words = question.rstrip("?").split()
        color = next((w for w in words if w in EASY_VQA_COLORS), None)
        shape = next((w for w in words if w in EASY_VQA_SHAPES), None)
        can_color = colors.setdefault(image_id, set(EASY_VQA_COLORS))
        can_shape = shapes.setdefault(image_id, set(EASY_VQA_SHAPES))
        if answer in EASY_VQA_COLORS or answer in EASY_VQA_SHAPES:
            # "what is the red shape?" -> "triangle"; "what color is the circle?" -> "red"
            color = answer if answer in EASY_VQA_COLORS else color
            shape = answer if answer in EASY_VQA_SHAPES else shape
            if color:
                can_color &= {color}
            if shape:
                can_shape &= {shape}
            continue
        # yes/no: "is there a red shape?", "is there not a circle?", "is no blue shape present?"
        negated = "not" in words or "no" in words
        present = (answer == "yes") != negated
        for value, pool in ((color, can_color), (shape, can_shape)):
            if value is None:
                continue
            if present:
                pool &= {value}
            else:
                pool.discard(value)
    return colors, shapes


def easy_vqa_pixels(path: str) -> tuple[str, str]:
    """Colour and shape read from an easy-vqa image: exact named colours, and the mask's geometry."""
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"))
    masks = {name: (pixels == rgb).all(axis=-1) for name, rgb in EASY_VQA_COLORS.items()}
    color = max(masks, key=lambda name: masks[name].sum())
    ys, xs = np.nonzero(masks[color])
    box = masks[color][ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    half = box.shape[0] // 2
    if box.mean() > 0.95:
        shape = "rectangle"
    elif box[:half].sum() < 0.6 * box[box.shape[0] - half :].sum():
        shape = "triangle"  # easy-vqa's triangles point up: the top half holds far fewer pixels
    else:
        shape = "circle"
    return color, shape
