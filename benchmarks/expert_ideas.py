"""Ideas tried for the ``default`` aligner and dropped, measured on the v2 dev set's tuning half only.

Each idea is tried on top of the shipped recipe (``conse.CONFIG``) over a small grid of its
settings; the table shows its best setting on the tuning half against the shipped recipe,
and what it costs per image on this machine. The test half is never read here.

- **regions**: "multi-crop for free". EfficientNet's last feature map (7 x 7 at 224 px) is
  pooled over four overlapping 5 x 5 quadrants as well as the whole, each region goes
  through the classifier's linear layer, and the regions' ConSE vectors are added with a
  weight. One forward pass, so nearly free; classifying real crops would cost a pass each.
- **confidence**: the ConSE vector scaled by the classifier's confidence (top probability)
  before the experts are added, so an unsure classifier counts less.
- **temperature / top-k**: the ConSE settings retuned with the experts in place.
- **surface**: a prototype expert for what ImageNet has no class for: clouds in a blue sky,
  green leaves and grass, fog, an all-over texture (pixel statistics in CIELAB).
- **people**: OpenCV's HOG people detector (whole bodies) and the profile-face Haar
  cascade, counted where the frontal-face cascade found nobody.

    python -m benchmarks.expert_ideas --pip-root /tmp/devset-pip
"""

from __future__ import annotations

import json
import time

import click
import numpy as np

from benchmarks import harness
from benchmarks import tune_experts as te
from benchmarks.devset import PIP_ROOT
from retrieval.aligners import conse
from retrieval.aligners.experts.colour import srgb_to_lab
from retrieval.evaluation import devset
from retrieval.evaluation.metrics import retrieval_metrics

SURFACE_PHRASES = ("white clouds in a blue sky", "green leaves and grass", "a foggy, hazy view", "a close-up of a rough texture")
QUADRANTS = ((slice(0, 5), slice(0, 5)), (slice(0, 5), slice(2, 7)), (slice(2, 7), slice(0, 5)), (slice(2, 7), slice(2, 7)))


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    x = logits / temperature
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def surface_weights(images: np.ndarray) -> np.ndarray:
    """The prototype surface expert: (n, 4) weights over SURFACE_PHRASES."""
    out = np.zeros((len(images), len(SURFACE_PHRASES)), np.float32)
    for i, image in enumerate(images):
        lab = srgb_to_lab(image[::2, ::2])
        light, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
        hue, chroma = np.degrees(np.arctan2(b, a)) % 360, np.hypot(a, b)
        top = slice(0, light.shape[0] // 2)
        blue = ((hue[top] > 200) & (hue[top] < 300) & (chroma[top] > 12) & (light[top] > 40)).mean()
        white = ((light[top] > 75) & (chroma[top] < 12)).mean()
        out[i, 0] = min(blue, white) / 0.1 if min(blue, white) > 0.1 else 0
        green = ((hue > 100) & (hue < 200) & (chroma > 15)).mean()
        out[i, 1] = green if green > 0.35 else 0
        out[i, 2] = float(light.std() < 12 and light.mean() > 40 and chroma.mean() < 15)
        lap = np.abs(4 * light[1:-1, 1:-1] - light[:-2, 1:-1] - light[2:, 1:-1] - light[1:-1, :-2] - light[1:-1, 2:])
        h, w = (s // 4 * 4 for s in lap.shape)
        tiles = lap[:h, :w].reshape(4, h // 4, 4, w // 4).mean(axis=(1, 3))
        out[i, 3] = float(tiles.mean() > 9 and tiles.std() / tiles.mean() < 0.35)
    return np.minimum(out, 1.0)


class Ideas:
    def __init__(self, features: te.Features, half: te.Half):
        self.f, self.half = features, half
        self.rows = np.array([features.row[p] for p in half.paths])
        self.texts = features.encode(half.captions)
        self.aligner = conse.ConseAligner(config=conse.RECIPE_2026_11, device="cpu")
        self.seconds: dict[str, float] = {}

    def timed(self, name: str, fn):
        start = time.perf_counter()
        out = fn()
        self.seconds[name] = (time.perf_counter() - start) / len(self.rows)
        return out

    def score(self, base: np.ndarray, config: dict = conse.CONFIG, extra: dict | None = None,
              override: dict | None = None) -> dict[str, float]:
        """Recalls of the shipped fusion over `base` ConSE vectors, with some experts' weights
        replaced (`override`), plus `extra` terms {name: (weights, phrases, weight)}."""
        chosen = config.get("experts") or {}
        weights = {n: self.f.expert_weights(n, s.get("settings", {}))[self.rows] for n, s in chosen.items()}
        weights.update(override or {})
        vectors = conse.fuse(base, weights, self.f.phrases, config)
        for w, table, weight in (extra or {}).values():
            vectors = conse.normalize(vectors + weight * (w @ table))
        m = retrieval_metrics(vectors, self.texts, self.half.caption_image)
        out = {f"{d} R@{k}": m[n][f"R@{k}"] for d, n in (("t2i", "text_to_image"), ("i2t", "image_to_text")) for k in (1, 5, 10)}
        out["objective"] = te.objective(out)
        return out

    def conse(self, config: dict = conse.CONFIG) -> np.ndarray:
        return conse.conse_combine(self.f.logits[self.rows], self.f.classes, config)

    def regions(self) -> list[tuple[str, dict]]:
        import torch

        clf = self.aligner.classifier
        images = self.f.images[self.rows].astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1

        def maps():
            with torch.inference_mode():
                return np.concatenate([clf.forward_features(torch.from_numpy(images[s : s + 16]).to(self.aligner.dtype)).float().numpy()
                                       for s in range(0, len(images), 16)])

        fmaps = maps()
        lin = clf.classifier
        weight, bias = lin.weight.detach().float().numpy(), lin.bias.detach().float().numpy()
        cfg = conse.CONFIG
        # Timed: only what regions add to the one forward pass the classifier makes anyway.
        regional = self.timed("regions", lambda: sum(
            conse.conse_combine(fmaps[:, :, ys, xs].mean(axis=(2, 3)) @ weight.T + bias, self.f.classes, cfg) for ys, xs in QUADRANTS
        ))
        return [(f"regions, weight {w}", self.score(conse.normalize(self.conse() + w * conse.normalize(regional))))
                for w in (0.3, 0.6, 1.0, 1.5)]

    def confidence(self) -> list[tuple[str, dict]]:
        top = softmax(self.f.logits[self.rows], 1.0).max(axis=1)[:, None]
        return [(f"confidence^{g}, floor {fl}", self.score(self.conse() * (fl + (1 - fl) * top**g)))
                for g in (0.25, 0.5, 1.0) for fl in (0.0, 0.3)]

    def conse_settings(self) -> list[tuple[str, dict]]:
        out = []
        for t in (2.0, 3.0, 4.0):
            for k in (5, 10, 20, 50):
                cfg = {**conse.CONFIG, "temperature": t, "top_k": k}
                out.append((f"temperature {t:g}, top-{k}", self.score(self.conse(cfg), cfg)))
        return out

    def surface(self) -> list[tuple[str, dict]]:
        w = self.timed("surface", lambda: surface_weights(self.f.images[self.rows]))
        table = self.f.encode(list(SURFACE_PHRASES))
        return [(f"surface, weight {x}, centre {c}", self.score(self.conse(), extra={"s": (w, table - c * table.mean(0), x)}))
                for x in (0.1, 0.2, 0.4, 0.7) for c in (0.0, 1.0)]

    def people(self) -> list[tuple[str, dict]]:
        import cv2

        from retrieval.aligners.experts.people import load_cascade

        hog = cv2.HOGDescriptor()
        hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        profile = load_cascade("haarcascade_profileface.xml")
        images = self.f.images[self.rows]

        def bodies():
            counts = []
            for image in images:  # the default window is 64 x 128: upscale so a person can fill it
                grey = cv2.cvtColor(cv2.resize(image, (336, 336)), cv2.COLOR_RGB2GRAY)
                found, score = hog.detectMultiScale(grey, winStride=(8, 8), scale=1.1)
                counts.append(int((np.asarray(score).ravel() > 0.5).sum()) if len(found) else 0)
            return np.array(counts)

        def profiles():
            counts = []
            for image in images:
                grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
                found = [profile.detectMultiScale(g, 1.2, 6, minSize=(20, 20)) for g in (grey, np.ascontiguousarray(grey[:, ::-1]))]
                counts.append(sum(len(f) for f in found))
            return np.array(counts)

        counts = {"HOG bodies": self.timed("HOG bodies", bodies), "profile faces": self.timed("profile faces", profiles)}
        faces = self.f.expert_weights("people", {})[self.rows]
        out = []
        for label, n in counts.items():
            w = faces.copy()
            extra = np.where(w[:, :3].sum(axis=1) == 0, n, 0)
            for count, column in ((1, 0), (2, 1), (3, 2)):
                w[(extra >= 3) if count == 3 else (extra == count), column] = 1
            for pw in (0.4, 0.7, 1.0):
                cfg = json.loads(json.dumps(conse.CONFIG))
                cfg["experts"]["people"]["weight"] = pw
                out.append((f"{label} (found in {int((n > 0).sum())} photos), people weight {pw}",
                            self.score(self.conse(cfg), cfg, override={"people": w})))
        return out


@harness.command()
@PIP_ROOT
def main(pip_root: tuple[str, ...]) -> None:
    halves = {}
    for split in ("tune", "test"):  # the test half's paths only key the shared feature cache
        pairs, missing = devset.load_pairs(pip_root, devset.SETS["v2"], split)
        if missing:
            raise click.ClickException(f"missing photos: {missing}; see docs/photo-sources.md")
        halves[split] = te.Half(pairs)
    features = te.Features(halves["tune"].paths + halves["test"].paths)
    ideas = Ideas(features, halves["tune"])
    shipped = ideas.score(ideas.conse())
    keys = ("t2i R@1", "t2i R@5", "t2i R@10", "i2t R@1", "i2t R@5", "objective")
    print(f"tuning half: {len(ideas.rows)} photos, {len(ideas.half.captions)} captions\n")
    print("| idea (best setting on the tuning half) | " + " | ".join(keys) + " | extra ms per image |")
    print("|---|" + "---|" * (len(keys) + 1))
    print("| shipped `default` | " + " | ".join(f"{shipped[k]:.3f}" for k in keys) + " | – |")
    for name, trials, cost in (
        ("regions", ideas.regions, "regions"),
        ("confidence", ideas.confidence, None),
        ("temperature / top-k", ideas.conse_settings, None),
        ("surface", ideas.surface, "surface"),
        ("people", ideas.people, None),
    ):
        results = trials()
        label, best = max(results, key=lambda r: r[1]["objective"])
        ms = f"{1000 * ideas.seconds[cost]:.1f}" if cost else "–"
        if name == "people":
            ms = ", ".join(f"{k} {1000 * v:.1f}" for k, v in ideas.seconds.items() if k in ("HOG bodies", "profile faces"))
        print(f"| {label} | " + " | ".join(f"{best[k]:.3f}" for k in keys) + f" | {ms} |", flush=True)


if __name__ == "__main__":
    main()
