"""Tune the ``default`` aligner's experts on the v2 dev set's tuning half; report the test half.

The v2 dev set (``devset2_captions.csv``) has two hand-written captions per photo and was
split once, by photo, into a ``tune`` and a ``test`` half. Every weight and setting is
chosen on the tuning half only (coordinate ascent over a small grid); the test half is
looked at once, for the report:

- both halves, previous recipe (ConSE alone, 2026-11) against the new one;
- the new recipe's gain over the previous one on the test half, with 95% intervals from a
  paired bootstrap over photos (both recipes see the same resampled photos);
- an ablation: the new recipe without each expert, and the previous recipe with only it.

Each photo is decoded once through the indexer's own loader; its ImageNet logits and its
224 px uint8 crop are cached (retrieval cache folder), and each expert's phrase weights are
cached per setting, so a rerun takes seconds.

    python -m benchmarks.tune_experts --pip-root /tmp/devset-pip            # tune, then report
    python -m benchmarks.tune_experts --pip-root /tmp/devset-pip --report   # report CONFIG as shipped

The weight of the words read in the photo (OCR) is tuned the same way, as one more coordinate
(since 2026-12-02 words are part of ``default``; what they add is the "without ocr" row).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import click
import numpy as np

import retrieval.media.decode
import retrieval.media.files
import retrieval.media.transform
from benchmarks import harness
from benchmarks.devset import PIP_ROOT, report_missing
from benchmarks.tune_default import classify
from retrieval.aligners import conse
from retrieval.aligners.experts import colour, ocr, people, scene, to_uint8
from retrieval.evaluation import devset
from retrieval.evaluation.metrics import best_positive_ranks, retrieval_metrics
from retrieval.media.decode import load

PREVIOUS = conse.RECIPE_2026_11
# `default` as shipped on the morning of 2026-12-02 (experts, no words): what reading words adds.
MORNING = conse.RECIPE_2026_12_02
# The first recipe with experts (2026-12-01), tuned on the 165-photo dev set; the reference
# for what today's tuning adds.
FIRST_EXPERTS = getattr(conse, "RECIPE_2026_12", conse.CONFIG)
EXPERT_MODULES = {"colour": colour.ColourExpert, "people": people.PeopleExpert, "scene": scene.SceneExpert}
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.4)
CENTERS = (0.0, 1.0)
TEMPERATURES = (2.0, 3.0, 4.0)
TOP_KS = (5, 10, 20, 50)


class Half:
    """One half of the dev set: photos, captions, and which photo each caption belongs to."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.paths = list(dict.fromkeys(p for p, _ in pairs))
        index = {p: i for i, p in enumerate(self.paths)}
        self.captions = [c for _, c in pairs]
        self.caption_image = np.array([index[p] for p, _ in pairs], np.int64)


class Features:
    """Logits, uint8 crops and caption vectors of every photo, cached on disk."""

    def __init__(self, paths: list[str]):
        code = "".join(inspect.getsource(m) for m in (retrieval.media.files, retrieval.media.decode, retrieval.media.transform))
        key = hashlib.sha256((code + json.dumps(paths)).encode()).hexdigest()[:12]
        self.cache = conse.cache_dir() / f"tune-experts-{key}.npz"
        self.paths = paths
        if self.cache.exists():
            data = np.load(self.cache)
            self.logits, self.images = data["logits"], data["images"]
        else:
            harness.note(f"decoding and classifying {len(paths)} photos (cached in {self.cache})")
            self.logits = classify(paths, PREVIOUS, {})
            transform = conse.image_transform(PREVIOUS)
            pixels = np.stack([load(p, transform).pixels for p in paths])
            self.images = to_uint8(pixels, transform.mean, transform.std)
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(self.cache, logits=self.logits, images=self.images)
        self.row = {p: i for i, p in enumerate(paths)}
        self.text = conse.SentenceEncoder(conse.text_model_folder())
        self.memo: dict[str, np.ndarray] = {}
        self.weights_memo: dict[str, np.ndarray] = {}
        self.classes = conse.ConseAligner(config=PREVIOUS).class_embeddings  # disk-cached
        self.phrases = {name: self.encode(list(kind.vocabulary)) for name, kind in EXPERT_MODULES.items()}

    def ocr_sentences(self) -> list[str]:
        """What RapidOCR reads in each photo, as the sentence `default+ocr` embeds (cached)."""
        settings = conse.CONFIG["ocr"]["settings"]
        reader = hashlib.sha256((json.dumps(settings, sort_keys=True) + inspect.getsource(ocr)).encode()).hexdigest()[:8]
        path = self.cache.with_suffix(f".ocr-{reader}.json")
        if path.exists():
            return json.loads(path.read_text())
        harness.note(f"reading the words in {len(self.paths)} photos (cached in {path})")
        sentences = ocr.OcrExpert(**settings).sentences(self.images)
        path.write_text(json.dumps(sentences))
        return sentences

    def encode(self, texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if new:
            self.memo.update(zip(new, self.text.encode(new)))
        return np.stack([self.memo[t] for t in texts])

    def expert_weights(self, name: str, settings: dict) -> np.ndarray:
        key = json.dumps([name, settings, inspect.getsource(EXPERT_MODULES[name])], sort_keys=True)
        if key not in self.weights_memo:
            self.weights_memo[key] = EXPERT_MODULES[name](**settings).weights(self.images)
        return self.weights_memo[key]

    def image_vectors(self, config: dict, rows: np.ndarray) -> np.ndarray:
        vectors = conse.conse_combine(self.logits[rows], self.classes, config)
        chosen = config.get("experts") or {}
        weights = {n: self.expert_weights(n, s.get("settings", {}))[rows] for n, s in chosen.items()}
        vectors = conse.fuse(vectors, weights, self.phrases, config) if chosen else vectors
        if config.get("ocr"):
            sentences = [self.ocr_sentences()[r] for r in rows]
            read = [i for i, s in enumerate(sentences) if s]
            words = np.zeros_like(vectors)
            if read:
                words[read] = config["ocr"]["weight"] * self.encode([sentences[i] for i in read])
            vectors = conse.add_word_vectors(vectors, words)
        return vectors


def evaluate(features: Features, half: Half, config: dict) -> dict[str, float]:
    rows = np.array([features.row[p] for p in half.paths])
    m = retrieval_metrics(features.image_vectors(config, rows), features.encode(half.captions), half.caption_image)
    out = {f"{d} R@{k}": m[name][f"R@{k}"] for d, name in (("t2i", "text_to_image"), ("i2t", "image_to_text"))
           for k in (1, 5, 10)}
    out["mean"] = float(np.mean(list(out.values())))
    return out


def objective(scores: dict[str, float]) -> float:
    # R@1 weighs double: the target is R@1, but R@5/R@10 keep the choice stable.
    return 2 * scores["t2i R@1"] + scores["t2i R@5"] + scores["t2i R@10"] + 2 * scores["i2t R@1"] + scores["i2t R@5"]


def tune(features: Features, half: Half, start: dict, rounds: int = 2) -> dict:
    """Coordinate ascent over the ConSE settings and each expert's weight and centering, on `half` only."""
    best = json.loads(json.dumps(start))
    best_score = objective(evaluate(features, half, best))
    for _ in range(rounds):
        for temperature in TEMPERATURES:
            for top_k in TOP_KS:
                trial = {**best, "temperature": temperature, "top_k": top_k}
                score = objective(evaluate(features, half, trial))
                if score > best_score + 1e-9:
                    best, best_score = json.loads(json.dumps(trial)), score
        for name in best["experts"]:
            for weight in WEIGHTS:
                for center in CENTERS:
                    trial = json.loads(json.dumps(best))
                    trial["experts"][name].update(weight=weight, center=center)
                    score = objective(evaluate(features, half, trial))
                    if score > best_score + 1e-9:
                        best, best_score = trial, score
        if "ocr" in best:
            for weight in WEIGHTS[1:] + (2.0,):
                trial = {**best, "ocr": {**best["ocr"], "weight": weight}}
                score = objective(evaluate(features, half, trial))
                if score > best_score + 1e-9:
                    best, best_score = json.loads(json.dumps(trial)), score
        harness.note(f"  round: T={best['temperature']:g}, top-{best['top_k']}, {json.dumps(best['experts'])} -> {best_score:.3f}")
    return best


def ranks(features: Features, half: Half, config: dict) -> dict[str, np.ndarray]:
    """Per caption (t2i) and per photo (i2t), the rank of the best match (0 = first)."""
    rows = np.array([features.row[p] for p in half.paths])
    images, texts = features.image_vectors(config, rows), features.encode(half.captions)
    own = [np.flatnonzero(half.caption_image == i).tolist() for i in range(len(half.paths))]
    return {
        "t2i": best_positive_ranks(texts, images, [[i] for i in half.caption_image]),
        "i2t": best_positive_ranks(images, texts, own),
    }


def paired_bootstrap(features: Features, half: Half, new: dict, old: dict, resamples: int = 2000) -> list[str]:
    """Gain of `new` over `old` with 95% intervals, resampling photos (a photo brings its captions)."""
    a, b = ranks(features, half, new), ranks(features, half, old)
    n = len(half.paths)
    draws = np.random.default_rng(0).integers(0, n, (resamples, n))
    counts = np.bincount(half.caption_image, minlength=n)
    rows = []
    for direction in ("t2i", "i2t"):
        cells = []
        for k in (1, 5, 10):
            gain = (a[direction] < k).astype(float) - (b[direction] < k)
            if direction == "t2i":  # per photo: the summed gain of its captions, so resampling is by photo
                per_photo = np.bincount(half.caption_image, weights=gain, minlength=n)
                boot = per_photo[draws].sum(axis=1) / counts[draws].sum(axis=1)
            else:
                boot = gain[draws].mean(axis=1)
            low, high = np.percentile(boot, [2.5, 97.5])
            cells.append(f"{gain.mean():+.2f} [{low:+.2f}, {high:+.2f}]")
        rows.append(f"| {direction} | " + " | ".join(cells) + " |")
    return rows


def row(label: str, scores: dict[str, float]) -> str:
    keys = ("t2i R@1", "t2i R@5", "t2i R@10", "i2t R@1", "i2t R@5", "i2t R@10", "mean")
    return f"| {label} | " + " | ".join(f"{scores[k]:.2f}" for k in keys) + " |"


def without(config: dict, name: str) -> dict:
    if name == "ocr":
        return {k: v for k, v in config.items() if k != "ocr"}
    return {**config, "experts": {n: s for n, s in config["experts"].items() if n != name}}


def only(config: dict, name: str) -> dict:
    bare = {**without(config, "ocr"), "experts": {}}
    if name == "ocr":
        return {**bare, "ocr": config["ocr"]}
    return {**bare, "experts": {name: config["experts"][name]}}


def parts(config: dict) -> list[str]:
    return [*config["experts"], *(["ocr"] if config.get("ocr") else [])]


def failures(features: Features, half: Half, config: dict) -> list[str]:
    """The captions of `half` whose photo is not ranked first under `config`, worst first."""
    rows = np.array([features.row[p] for p in half.paths])
    images, texts = features.image_vectors(config, rows), features.encode(half.captions)
    rank = ranks(features, half, config)["t2i"]
    first = {}
    for caption, image in zip(half.captions, half.caption_image):
        first.setdefault(int(image), caption)
    names = [c["lemmas"][0] for c in conse.imagenet_classes()]
    out = []
    for q in np.argsort(-rank, kind="stable"):
        if rank[q] == 0:
            break
        own = half.caption_image[q]
        top = np.argsort(-features.logits[rows[own]])[:3]
        got = int(np.argmax(images @ texts[q]))
        out.append(f"[{rank[q]:3d}] {half.captions[q]}\n      its photo: {Path(half.paths[own]).name}, "
                   f"classes {[names[c] for c in top]}\n      first: {first[got]}")
    return out


@harness.command()
@PIP_ROOT
@click.option("--report", is_flag=True, help="No tuning: report conse.CONFIG as shipped.")
@click.option("--failures", "only_failures", is_flag=True, help="Only list the tuning half's misses under conse.CONFIG.")
def main(pip_root: tuple[str, ...], report: bool, only_failures: bool) -> None:
    halves = {}
    for split in ("tune", "test"):
        pairs, missing = devset.load_pairs(pip_root, devset.SETS["v2"], split)
        report_missing(missing, f"{split} photos")
        halves[split] = Half(pairs)
    features = Features(halves["tune"].paths + halves["test"].paths)
    if only_failures:
        print("\n".join(failures(features, halves["tune"], conse.CONFIG)))
        return
    config = conse.CONFIG if report else tune(features, halves["tune"], conse.CONFIG)
    if not report:
        chosen = {k: config[k] for k in ("temperature", "top_k", "experts", "ocr") if k in config}
        print("tuned on the tuning half:\n" + json.dumps(chosen, indent=2))

    header = "| recipe | t2i R@1 | R@5 | R@10 | i2t R@1 | R@5 | R@10 | mean |\n|---|---|---|---|---|---|---|---|"
    for split, half in halves.items():
        print(f"\n{split} half: {len(half.paths)} photos, {len(half.captions)} captions\n\n{header}")
        print(row("ConSE alone (`default` of 2026-11)", evaluate(features, half, PREVIOUS)))
        print(row("`default` of 2026-12-01 (first experts)", evaluate(features, half, FIRST_EXPERTS)))
        print(row("`default` of 2026-12-02 morning (experts, no words)", evaluate(features, half, MORNING)))
        print(row("**new `default`** (ConSE + experts + words)", evaluate(features, half, config)))
        for name in parts(config):
            print(row(f"new without {name}", evaluate(features, half, without(config, name))))
        print(row("new ConSE settings, no experts", evaluate(features, half, {**without(config, "ocr"), "experts": {}})))
        for name in parts(config):
            print(row(f"new ConSE settings + {name} only", evaluate(features, half, only(config, name))))
    print("\nTest half, new minus previous, 95% paired-bootstrap interval over photos\n")
    print("| direction | R@1 | R@5 | R@10 |\n|---|---|---|---|")
    print("\n".join(paired_bootstrap(features, halves["test"], config, PREVIOUS)))
    print("\nTest half, new minus the `default` of 2026-12-01 (first experts)\n")
    print("| direction | R@1 | R@5 | R@10 |\n|---|---|---|---|")
    print("\n".join(paired_bootstrap(features, halves["test"], config, FIRST_EXPERTS)))
    print("\nTest half, new minus the `default` of 2026-12-02 morning (what reading words adds)\n")
    print("| direction | R@1 | R@5 | R@10 |\n|---|---|---|---|")
    print("\n".join(paired_bootstrap(features, halves["test"], config, MORNING)))
    read = sum(bool(s) for s in features.ocr_sentences())
    print(f"\nOCR read words in {read} of {len(features.paths)} photos")


if __name__ == "__main__":
    main()
