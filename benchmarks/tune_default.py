"""Compare recipes for the ``default`` (ConSE) aligner on the hand-captioned dev set of real photos.

Each photo is decoded and classified once per image setting (classifier, resize mode,
flip); logits are kept, so a recipe after that costs only the class texts it needs
(each distinct text is embedded once) and a few matrix products. Logits and text
embeddings are cached in the retrieval cache folder, so a second run takes seconds.

Prints a markdown table: text-to-image and image-to-text R@1/5/10, their mean, and the
mean on two halves of the set (opencv-doc photos vs the rest), to show whether a gain is
broad; then the chosen recipe's gain over the baseline with a 95% interval (paired
bootstrap over photos), and the mean over a temperature x top-k grid around the chosen recipe.

    python -m benchmarks.tune_default --pip-root /tmp/wheels-unpacked

The chosen recipe was the ConSE part of ``default``: ``RECIPE_2026_11`` in
``retrieval/aligners/conse.py`` (the shipped ``CONFIG`` adds experts on top, tuned by
``benchmarks/tune_experts.py``); rows below it change one thing at a time.
"""

from __future__ import annotations

import hashlib
import inspect

import click
import numpy as np

import retrieval.media.decode
import retrieval.media.files
import retrieval.media.transform
from benchmarks import harness
from benchmarks.devset import PIP_ROOT, report_missing
from retrieval.aligners import conse
from retrieval.aligners.base import normalize
from retrieval.evaluation import devset
from retrieval.evaluation.metrics import best_positive_ranks, retrieval_metrics
from retrieval.media.decode import load

CHOSEN = conse.RECIPE_2026_11
# The plain ConSE of the issue: Lite0, top-10, "a photo of a {name}".
BASELINE = {**CHOSEN, "temperature": 1.0, "templates": ["a photo of a {name}."], "center": 0.0}
ENSEMBLE = [
    "a photo of {a_name}.",
    "a picture of {a_name}.",
    "a close-up photo of {a_name}.",
    "a photo of the {name}.",
    "an image showing {a_name}.",
    "{a_name} in the scene.",
    "a good photo of {a_name}.",
    "there is {a_name} in this photo.",
]
DEFINITION = "{name}: {definition}."


def recipes() -> list[tuple[str, dict]]:
    """(label, full config). Keys outside conse.CONFIG are tried here only (see `variants`)."""
    b, c = BASELINE, CHOSEN
    return [
        ("baseline: lite0, top-10, T=1, 'a photo of a {name}.'", b),
        ("baseline + definition text", {**b, "templates": c["templates"]}),
        ("baseline + T=3", {**b, "temperature": 3.0}),
        ("baseline + centering", {**b, "center": 1.0}),
        ("baseline + definition + T=3", {**b, "templates": c["templates"], "temperature": 3.0}),
        ("**chosen** (+ centering)", c),
        ("chosen, no definition", {**c, "templates": ["a photo of {a_name}."]}),
        ("chosen, definition only", {**c, "templates": [DEFINITION]}),
        ("chosen, 8-prompt ensemble + definition", {**c, "templates": ENSEMBLE + [DEFINITION]}),
        ("chosen, all lemmas", {**c, "names": "all"}),
        ("chosen, lite2 (260 px)", {**c, "image_model": "lite2"}),
        ("chosen, centre crop 0.875", {**c, "crop_pct": 0.875}),
        ("chosen, whole image (squash)", {**c, "resize_mode": "squash"}),
        ("chosen, + flipped copy (2x cost)", {**c, "flip": True}),
        ("chosen, top-5", {**c, "top_k": 5}),
        ("chosen, top-50", {**c, "top_k": 50}),
        ("chosen, T=2", {**c, "temperature": 2.0}),
        ("chosen, T=4", {**c, "temperature": 4.0}),
        ("chosen, centering 0.5", {**c, "center": 0.5}),
        ("chosen, queries centred too", {**c, "center_texts": 1.0}),
        ("chosen, queries 25% projected on classes", {**c, "query_mix": 0.25}),
        ("chosen, + sentence naming the top-3 classes", {**c, "synth": 0.3}),
    ]


# -- the image side: logits once per image setting --------------------------------------
def image_key(cfg: dict) -> tuple:
    return (cfg["image_model"], cfg["resize_mode"], cfg["crop_pct"], bool(cfg.get("flip")))


def classify(paths: list[str], cfg: dict, aligners: dict) -> np.ndarray:
    """ImageNet logits of every photo, loaded through the indexer's own decode path."""
    variant = cfg["image_model"]
    if variant not in aligners:
        aligners[variant] = conse.ConseAligner(config={"image_model": variant})
    aligner = aligners[variant]
    transform = conse.image_transform(cfg)
    pixels = np.stack([load(p, transform).pixels for p in paths])
    out = []
    for start in range(0, len(pixels), 16):
        batch = pixels[start : start + 16]
        logits = aligner.logits(batch)
        if cfg.get("flip"):
            logits = (logits + aligner.logits(np.ascontiguousarray(batch[..., ::-1]))) / 2
        out.append(logits)
    return np.concatenate(out)


# -- candidate tweaks that did not make it into CONFIG ----------------------------------
def variants(images, texts, logits, classes, cfg, encode):
    if cfg.get("synth"):
        # A caption-like sentence naming the three likeliest classes, mixed into the image.
        names = [[conse.with_article(conse.imagenet_classes()[i]["lemmas"][0]) for i in row]
                 for row in np.argsort(-logits, axis=1)[:, :3]]
        sentences = encode([f"a photo of {a}, {b} and {c}." for a, b, c in names])
        images = normalize(images + cfg["synth"] * sentences)
    if cfg.get("query_mix"):
        # The query's own ConSE: a softmax over its similarity to the classes (temperature 0.05).
        sims = texts @ classes.T / 0.05
        top = np.argpartition(-sims, cfg["top_k"] - 1, axis=1)[:, : cfg["top_k"]]
        w = np.exp(np.take_along_axis(sims, top, axis=1) - sims.max(axis=1, keepdims=True))
        projected = normalize(np.einsum("nk,nkd->nd", w / w.sum(1, keepdims=True), classes[top]))
        texts = normalize((1 - cfg["query_mix"]) * texts + cfg["query_mix"] * projected)
    if cfg.get("center_texts"):
        texts = normalize(texts - cfg["center_texts"] * classes.mean(axis=0))
    return images, texts


# -- the sweep --------------------------------------------------------------------------
class Sweep:
    def __init__(self, paths: list[str], captions: list[str]):
        self.paths = paths
        self.text = None
        self.memo: dict[str, np.ndarray] = {}
        self.logits: dict[tuple, np.ndarray] = {}
        self.aligners: dict = {}
        # Logits depend on how photos are decoded and preprocessed: a change there is a new cache.
        code = "".join(inspect.getsource(m) for m in (retrieval.media.files, retrieval.media.decode, retrieval.media.transform))
        self.cache = conse.cache_dir() / f"tune-default-cache-{hashlib.sha256(code.encode()).hexdigest()[:12]}.npz"
        if self.cache.exists():
            stored = np.load(self.cache, allow_pickle=True)["data"].item()
            self.memo.update(stored["memo"])
            if stored["paths"] == paths:
                self.logits.update(stored["logits"])
        self.captions = self.encode(captions)
        opencv = np.array(["opencv-doc" in p for p in paths])
        self.halves = {"all": np.arange(len(paths)), "opencv": np.flatnonzero(opencv), "other": np.flatnonzero(~opencv)}

    def encode(self, texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if new:
            self.text = self.text or conse.SentenceEncoder(conse.text_model_folder())
            self.memo.update(zip(new, self.text.encode(new)))
        return np.stack([self.memo[t] for t in texts])

    def save(self) -> None:
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        data = {"memo": self.memo, "paths": self.paths, "logits": self.logits}
        np.savez(self.cache, data=np.array(data, dtype=object))

    def embed(self, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
        """(image vectors, caption vectors) under a recipe."""
        key = image_key(cfg)
        if key not in self.logits:
            self.logits[key] = classify(self.paths, cfg, self.aligners)
        classes = conse.pool_prompts(conse.class_prompts(cfg), self.encode)
        images = conse.conse_combine(self.logits[key], classes, cfg)
        return variants(images, self.captions, self.logits[key], classes, cfg, self.encode)

    def run(self, cfg: dict) -> dict[str, dict]:
        images, texts = self.embed(cfg)
        return {half: recalls(images[rows], texts[rows]) for half, rows in self.halves.items()}

    def ranks(self, cfg: dict) -> dict[str, np.ndarray]:
        """Per photo, the rank of its match over the whole set (0 = first), both directions."""
        images, texts = self.embed(cfg)
        positives = [[i] for i in range(len(images))]
        return {"t2i": best_positive_ranks(texts, images, positives), "i2t": best_positive_ranks(images, texts, positives)}


def recalls(images: np.ndarray, texts: np.ndarray) -> dict[str, float]:
    m = retrieval_metrics(images, texts, np.arange(len(images)))
    out = {f"{d} R@{k}": m[name][f"R@{k}"] for d, name in (("t2i", "text_to_image"), ("i2t", "image_to_text"))
           for k in (1, 5, 10)}
    out["mean"] = float(np.mean(list(out.values())))
    return out


def paired_bootstrap(sweep: Sweep, cfg: dict, reference: dict, resamples: int = 2000) -> list[str]:
    """Table rows: the recall gain of `cfg` over `reference`, with a 95% interval from
    resampling the photos (the same resample for both recipes, so shared luck cancels)."""
    a, b = sweep.ranks(cfg), sweep.ranks(reference)
    draws = np.random.default_rng(0).integers(0, len(sweep.paths), (resamples, len(sweep.paths)))
    rows = []
    for direction in ("t2i", "i2t"):
        cells = []
        for k in (1, 5, 10):
            gain = (a[direction] < k).astype(float) - (b[direction] < k)
            low, high = np.percentile(gain[draws].mean(axis=1), [2.5, 97.5])
            cells.append(f"{gain.mean():+.2f} [{low:+.2f}, {high:+.2f}]")
        rows.append(f"| {direction} | " + " | ".join(cells) + " |")
    return rows


@harness.command()
@PIP_ROOT
@click.option("--no-grid", is_flag=True, help="Skip the temperature x top-k grid.")
def main(pip_root: tuple[str, ...], no_grid: bool) -> None:
    pairs, missing = devset.load_pairs(pip_root)
    report_missing(missing)
    sweep = Sweep([p for p, _ in pairs], [c for _, c in pairs])
    n = {h: len(r) for h, r in sweep.halves.items()}
    print(f"{n['all']} photos, one caption each ({n['opencv']} from opencv-doc, {n['other']} from elsewhere)\n")
    print("| recipe | t2i R@1 | R@5 | R@10 | i2t R@1 | R@5 | R@10 | mean | mean opencv / other |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, cfg in recipes():
        s = sweep.run(cfg)
        a = s["all"]
        cells = " | ".join(f"{a[k]:.2f}" for k in ("t2i R@1", "t2i R@5", "t2i R@10", "i2t R@1", "i2t R@5", "i2t R@10"))
        print(f"| {label} | {cells} | {a['mean']:.3f} | {s['opencv']['mean']:.2f} / {s['other']['mean']:.2f} |", flush=True)
    print("\nChosen minus baseline, with a 95% interval from resampling the photos (paired bootstrap)\n")
    print("| direction | R@1 | R@5 | R@10 |\n|---|---|---|---|")
    print("\n".join(paired_bootstrap(sweep, CHOSEN, BASELINE)))
    if not no_grid:
        ks = (5, 10, 20, 50)
        print("\nMean of the six recalls around the chosen recipe (rows: temperature, columns: top-k)\n")
        print("| T | " + " | ".join(f"k={k}" for k in ks) + " |\n|---|" + "---|" * len(ks))
        for t in (1.0, 2.0, 3.0, 4.0):
            row = [sweep.run({**CHOSEN, "temperature": t, "top_k": k})["all"]["mean"] for k in ks]
            print(f"| {t:g} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    sweep.save()


if __name__ == "__main__":
    main()
