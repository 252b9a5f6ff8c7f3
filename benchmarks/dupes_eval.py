"""Measure near-duplicate detection on altered copies of real photos, to set the default threshold.

The set: the dev-set photos (retrieval/evaluation/devset_captions.csv; packages and licences
in docs/photo-sources.md). Photos at least 1000 px on both sides are cut into four non-overlapping
quarters, each a distinct picture (different pixels of one scene: harder negatives than two
unrelated photos); smaller ones stay whole. Of these distinct pictures, `--families` get five
altered copies each: resized to 40%, re-encoded at JPEG quality 30, cropped by 8% (random
offset), rotated 4 degrees (corners cropped away), and colour-shifted (channel gains and
brightness). Positive pairs are two members of one family (original and copies); every other
pair is negative.

The set is indexed through the engine with the given aligner; the script reports pair
precision and recall at several thresholds, both for direct pairs (cosine >= threshold) and
for the groups `retrieval duplicates` would print (union-find closes the pairs transitively),
and times `find_duplicates`.

    .venv/bin/python -m benchmarks.dupes_eval [--model default] [--families 60] [--out bench-out/dupes.json]

`--copies user` makes instead the copies users mean (issue 22): resized to half, re-encoded at
JPEG quality 70, cropped by 6% (random offset), brightness +10% or -10%, re-saved as PNG; with
`--split tune|test` only that half of dev set v2 is used (tune the constants on one, report on
the other). Besides the vector thresholds it then measures what `retrieval duplicates` prints
(`find_duplicates`, perceptual hashes taken while indexing) at several `max_bits`, with pair
recall for each kind of copy and the false pairs between quarters of one photo (same scene).

    .venv/bin/python -m benchmarks.dupes_eval --copies user --split tune --families 1000

`--speed N` instead times `find_duplicates` on N synthetic vectors (the harness's clustered
vectors and catalog filling, as the search benchmarks use), 1% of them near-copies of another (cosine about 0.99),
and reports how many of those pairs it found.

    .venv/bin/python -m benchmarks.dupes_eval --speed 100000 --out bench-out/dupes-speed.json
"""

from __future__ import annotations

import itertools
import json
import random
import tempfile
from datetime import date
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from benchmarks import harness
from retrieval.api import build_index
from retrieval.evaluation import devset
from retrieval.search.duplicates import DEFAULT_THRESHOLD, find_duplicates
from retrieval.storage.store import IndexStore

THRESHOLDS = [0.80, 0.85, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]
LONG_SIDE = 1600  # pictures are shrunk to this first: the loader would decode them smaller anyway


def distinct_pictures(photos: list[Path]) -> list[tuple[str, Image.Image]]:
    out = []
    for k, path in enumerate(photos):
        # Numbered: photos of different packages share names (1.jpg), and a file written twice
        # would merge two families.
        stem = f"{k:03d}{path.stem}"
        with Image.open(path) as im:
            image = ImageOps.exif_transpose(im).convert("RGB")
        w, h = image.size
        if min(w, h) >= 1000:
            for n, (x, y) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
                tile = image.crop((x * w // 2, y * h // 2, (x + 1) * w // 2, (y + 1) * h // 2))
                out.append((f"{stem}-q{n}", _shrink(tile)))
        else:
            out.append((stem, _shrink(image)))
    return out


def _shrink(image: Image.Image) -> Image.Image:
    image = image.copy()
    image.thumbnail((LONG_SIDE, LONG_SIDE), Image.LANCZOS)
    return image


def altered(image: Image.Image, rng: random.Random) -> dict[str, tuple[Image.Image, int]]:
    """Five copies: (picture, JPEG quality)."""
    w, h = image.size
    cw, ch = int(w * 0.92), int(h * 0.92)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    rotated = image.rotate(4, resample=Image.BICUBIC)
    # A 4 degree turn leaves empty corners; keep the middle 86%, as an editor's straighten tool does.
    mx, my = int(w * 0.07), int(h * 0.07)
    r, g, b = image.split()
    shifted = Image.merge("RGB", (r.point(lambda v: min(255, int(v * 1.08))), g, b.point(lambda v: int(v * 0.9))))
    return {
        "resized": (image.resize((max(1, int(w * 0.4)), max(1, int(h * 0.4))), Image.LANCZOS), 90),
        "jpeg30": (image, 30),
        "cropped": (image.crop((x, y, x + cw, y + ch)), 90),
        "rotated": (rotated.crop((mx, my, w - mx, h - my)), 90),
        "colour": (ImageEnhance.Brightness(shifted).enhance(1.1), 90),
    }


def user_copies(image: Image.Image, rng: random.Random) -> dict[str, tuple[Image.Image, int]]:
    """The copies users mean (issue 22): (picture, JPEG quality; 0 for PNG)."""
    w, h = image.size
    cw, ch = int(w * 0.94), int(h * 0.94)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return {
        "half": (image.resize((max(1, w // 2), max(1, h // 2)), Image.LANCZOS), 90),
        "q70": (image, 70),
        "crop6": (image.crop((x, y, x + cw, y + ch)), 90),
        "brightness": (ImageEnhance.Brightness(image).enhance(rng.choice([0.9, 1.1])), 90),
        "png": (image, 0),
    }


COPIES = {"strong": altered, "user": user_copies}


def build_set(
    folder: Path, families: int, seed: int, copies_kind: str = "strong", split: str = "all",
) -> tuple[dict[str, str], int, int]:
    """Write the pictures; returns {file name: family} and the numbers of distinct pictures and copies."""
    pairs, _ = devset.load_pairs(captions=devset.SETS["v2"], split=split) if split != "all" else devset.load_pairs()
    pictures = distinct_pictures(sorted({Path(p) for p, _ in pairs}))
    rng = random.Random(seed)
    chosen = set(rng.sample(range(len(pictures)), min(families, len(pictures))))
    family: dict[str, str] = {}
    copies = 0
    for i, (name, image) in enumerate(pictures):
        image.save(folder / f"{name}.jpg", quality=95)
        family[f"{name}.jpg"] = name
        if i in chosen:
            for kind, (copy, quality) in COPIES[copies_kind](image, rng).items():
                file = f"{name}~{kind}." + ("png" if quality == 0 else "jpg")
                copy.save(folder / file, **({"quality": quality} if quality else {}))
                family[file] = name
                copies += 1
    return family, len(pictures), copies


#: max_bits tried for what `retrieval duplicates` prints.
MAX_BITS_TRIED = [6, 8, 10, 12, 14, 16]


def printed_groups(store, ids, names: list[str], same: np.ndarray, siblings: np.ndarray) -> list[dict]:
    """Pair precision and recall, by kind of copy, of the groups find_duplicates prints, at several max_bits."""
    position = {int(i): k for k, i in enumerate(ids)}
    upper = np.triu(np.ones_like(same, bool), 1)
    kinds = sorted({n.split("~")[1].rsplit(".", 1)[0] for n in names if "~" in n})
    out = []
    for bits in MAX_BITS_TRIED:
        label = np.arange(len(ids))
        with harness.measure("find_duplicates") as run:
            groups = find_duplicates(store, max_bits=bits)
        for g in groups:
            for m in g:
                label[position[m.id]] = -1 - g[0].id
        linked = (label[:, None] == label[None, :]) & upper
        tp, fp, pos = pair_counts(same, linked)
        row = {"max_bits": bits, "pairs_precision": round(tp / max(tp + fp, 1), 4), "pairs_recall": round(tp / pos, 4),
               "false_pairs": fp, "false_pairs_same_scene": int((linked & siblings).sum()),
               "seconds": round(run.wall_s, 3)}
        for kind in kinds:
            picks = [k for k, n in enumerate(names) if "~" in n and n.split("~")[1].rsplit(".", 1)[0] == kind]
            originals = [names.index(names[k].split("~")[0] + ".jpg") for k in picks]
            row[f"recall_{kind}"] = round(float(np.mean([label[k] == label[o] for k, o in zip(picks, originals)])), 4)
        out.append(row)
        harness.note(json.dumps(row))
    return out


def pair_counts(same: np.ndarray, linked: np.ndarray) -> tuple[int, int, int]:
    """(true positives, false positives, positives) over the upper triangle."""
    upper = np.triu(np.ones_like(same, bool), 1)
    return int((linked & same & upper).sum()), int((linked & ~same & upper).sum()), int((same & upper).sum())


def components(linked: np.ndarray) -> np.ndarray:
    """Component label of each node of a boolean adjacency matrix (union-find, as retrieval.search.duplicates)."""
    parent = list(range(len(linked)))

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(*np.nonzero(np.triu(linked, 1))):
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(len(linked))])


#: Pairs taken on their vector similarity alone, from this on.
SECOND_PASS_BASES = [0.97, 0.99]
#: Candidate pairs for the second pass: vector similarity at least this (and below the base).
SECOND_PASS_FLOORS = [0.80, 0.85, 0.90]
#: Share of the 256 difference-hash bits two copies may differ in.
SECOND_PASS_BITS = [0.10, 0.15, 0.20]


def pixel_hash(path: str) -> np.ndarray:
    """A 256-bit difference hash: is each pixel of a 17x16 grey thumbnail brighter than its right
    neighbour. Survives resizing, re-encoding and colour shifts; a crop or a turn moves some bits."""
    with Image.open(path) as im:
        im.draft("L", (64, 64))
        grey = np.asarray(ImageOps.exif_transpose(im).convert("L").resize((17, 16), Image.BILINEAR), np.int16)
    return (grey[:, 1:] > grey[:, :-1]).ravel()


def second_pass(store, ids, rows, sims: np.ndarray, same: np.ndarray) -> list[dict]:
    """Pairs at a base threshold, plus pairs above a lower floor whose pixel hashes nearly agree:
    pair precision and recall of that rule (measured only: `retrieval duplicates` does not do it)."""
    hashes = np.stack([pixel_hash(rows[int(i)]["path"]) for i in ids])
    differ = (hashes[:, None, :] != hashes[None, :, :]).mean(axis=2)
    upper = np.triu(np.ones_like(same, bool), 1)
    out = []
    for base, floor, bits in itertools.product(SECOND_PASS_BASES, SECOND_PASS_FLOORS, SECOND_PASS_BITS):
        linked = (sims >= base) | ((sims >= floor) & (differ <= bits))
        tp, fp, pos = pair_counts(same, linked)
        labels = components(linked)
        gtp, gfp, _ = pair_counts(same, labels[:, None] == labels[None, :])
        out.append({
            "base": base, "floor": floor, "max_bits_differ": bits,
            "pairs_precision": round(tp / max(tp + fp, 1), 4), "pairs_recall": round(tp / pos, 4), "false_pairs": fp,
            "groups_precision": round(gtp / max(gtp + gfp, 1), 4), "groups_recall": round(gtp / pos, 4),
        })
        harness.note(json.dumps(out[-1]))
    # How far apart the hashes of true pairs and of the closest false pairs are.
    out.append({
        "differ_true_pairs_p50_p90": [round(float(np.percentile(differ[same & upper], q)), 3) for q in (50, 90)],
        "differ_false_pairs_above_0.85_p10_p50": [
            round(float(np.percentile(differ[~same & upper & (sims >= 0.85)], q)), 3) for q in (10, 50)
        ] if (~same & upper & (sims >= 0.85)).any() else None,
    })
    return out


def time_speed(n: int) -> dict:
    """find_duplicates on n synthetic vectors, 1% of them planted copies."""
    from retrieval import ann

    dim = harness.DIM
    data = harness.clustered(n, dim, seed=n, centers=harness.centers(seed=0))
    rng = np.random.default_rng(1)  # the planted copies
    copies = rng.choice(n // 2, n // 100, replace=False)
    targets = n // 2 + rng.choice(n - n // 2, n // 100, replace=False)
    data[targets] = data[copies] + rng.normal(0, 0.1 / np.sqrt(dim), (len(copies), dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    load = harness.load()
    with tempfile.TemporaryDirectory() as tmp:
        index, _ = ann.build(np.arange(1, n + 1, dtype=np.int64), data, factory=ann.factory_for(n))
        store = harness.fill_catalog(Path(tmp) / "idx", data, index)
        # Perceptual hashes as indexing stores them: random for distinct pictures, a planted
        # copy's within 3 bits of its original's.
        hashes = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n, dtype=np.int64)
        hashes[targets] = hashes[copies] ^ np.int64(0b1011)
        with store.catalog.transaction() as conn:
            conn.executemany("UPDATE vectors SET sameness = ? WHERE hash = (SELECT hash FROM images WHERE id = ?)",
                             [(int(h), i + 1) for i, h in enumerate(hashes)])
        with harness.measure("find_duplicates") as run:
            groups = find_duplicates(store, DEFAULT_THRESHOLD)
        store.close()
    planted = {(int(a) + 1, int(b) + 1) for a, b in zip(copies, targets)}
    found = {(g[i].id, g[j].id) for g in groups for i in range(len(g)) for j in range(len(g))}
    return {
        "date": date.today().isoformat(), "machine": harness.summary(), "vectors": n,
        "index": ann.factory_for(n),
        "planted_pairs": len(planted), "found_planted": sum(p in found for p in planted),
        "groups": len(groups), "seconds": round(run.wall_s, 2),
        # CPU time of this process (all its threads): what the run costs when it has the cores to itself.
        "cpu_seconds": round(run.cpu_s, 2),
        "load_average_1min_start": load, "load_average_1min_end": harness.load(),
        "find_duplicates": run.as_dict(), "host": harness.machine(),
    }


@harness.command(out="bench-out/dupes.json")
@click.option("--model", default="default", show_default=True, help="Aligner to index the set with.")
@click.option("--speed", type=int, default=None, help="Time find_duplicates on this many synthetic vectors instead.")
@click.option("--families", type=int, default=60, show_default=True, help="Distinct pictures given five altered copies each.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--copies", "copies_kind", type=click.Choice(sorted(COPIES)), default="strong", show_default=True,
              help="Which altered copies: the strong five, or the ones users mean (issue 22).")
@click.option("--split", type=click.Choice(["all", "tune", "test"]), default="all", show_default=True,
              help="Dev-set photos: all of v1, or one half of v2.")
def main(model: str, speed: int | None, families: int, seed: int, copies_kind: str, split: str, out: Path) -> None:
    if speed:
        figures = time_speed(speed)
        harness.report("dupes-speed", figures, [{k: v for k, v in figures.items() if not isinstance(v, dict)}], out,
                       f"find_duplicates on {speed:,} synthetic vectors, {figures['machine']}, {figures['date']}")
        return
    load = harness.load()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        family, distinct, copies = build_set(folder, families, seed, copies_kind, split)
        harness.note(f"{distinct} distinct pictures, up to {families} with 5 altered copies each ({copies} copies)")
        with harness.measure("index") as indexing:
            build_index([folder], index=str(Path(tmp) / "idx"), model=model)
        store = IndexStore.open(str(Path(tmp) / "idx"))
        rows = store.catalog.rows_by_id("images", list(range(1, len(family) + 10)))
        ids, vectors = zip(*((i, v) for chunk_ids, chunk in store.catalog.image_vectors() for i, v in zip(chunk_ids, chunk)))
        vectors = np.stack(vectors)
        names = [Path(rows[int(i)]["path"]).name for i in ids]
        fam = np.array([family[n] for n in names])
        same = fam[:, None] == fam[None, :]
        # Quarters of one photo are distinct pictures, but of one scene: false pairs among them
        # are counted apart from false pairs of unrelated photos.
        source = np.array([f.rsplit("-q", 1)[0] for f in fam])
        siblings = (source[:, None] == source[None, :]) & ~same
        sims = vectors @ vectors.T
        results = []
        for t in THRESHOLDS:
            linked = sims >= t
            tp, fp, pos = pair_counts(same, linked)
            labels = components(linked)
            gtp, gfp, _ = pair_counts(same, labels[:, None] == labels[None, :])
            row = {
                "threshold": t,
                "pairs_precision": round(tp / max(tp + fp, 1), 4), "pairs_recall": round(tp / pos, 4),
                "false_pairs": fp, "false_pairs_same_scene": int(np.triu(linked & siblings, 1).sum()),
                "groups_precision": round(gtp / max(gtp + gfp, 1), 4), "groups_recall": round(gtp / pos, 4),
                "groups_false_pairs": gfp,
            }
            results.append(row)
            harness.note(json.dumps(row))
        by_kind = {}
        for kind in COPIES[copies_kind](Image.new("RGB", (8, 8)), random.Random(0)):
            picks = [k for k, n in enumerate(names) if f"~{kind}." in n]
            originals = [names.index(n.split("~")[0] + ".jpg") for n in (names[k] for k in picks)]
            s = sims[picks, originals]
            by_kind[kind] = {
                "p10": round(float(np.percentile(s, 10)), 4), "median": round(float(np.median(s)), 4),
                "found_at_default": round(float((s >= DEFAULT_THRESHOLD).mean()), 3),
            }
        negatives = sims[np.triu(~same, 1)]
        second = second_pass(store, ids, rows, sims, same) if copies_kind == "strong" else []
        printed = printed_groups(store, ids, names, same, siblings)
        with harness.measure("find_duplicates") as finding:
            groups = find_duplicates(store, DEFAULT_THRESHOLD)
        store.close()
    figures = {
        "date": date.today().isoformat(), "machine": harness.summary(),
        "load_average_1min_start": load, "load_average_1min_end": harness.load(),
        "model": model, "distinct_pictures": distinct, "families": families, "copies": copies,
        "images": len(family), "positive_pairs": int(np.triu(same, 1).sum()),
        "negative_pairs": int(negatives.size),
        "highest_negative_similarity": round(float(negatives.max()), 4),
        "negatives_above": {str(t): int((negatives >= t).sum()) for t in THRESHOLDS},
        "copy_similarity_to_original": by_kind,
        "thresholds": results,
        "second_pass_pixel_hash": second, "copies_kind": copies_kind, "split": split,
        "printed_groups_by_max_bits": printed,
        "default_threshold": DEFAULT_THRESHOLD, "groups_at_default": len(groups),
        "index_seconds": round(indexing.wall_s, 1), "find_duplicates_seconds": round(finding.wall_s, 3),
        "stages": [indexing.as_dict(), finding.as_dict()], "host": harness.machine(),
    }
    harness.report("dupes", figures, printed or results, out,
                   f"Near-duplicate pairs by threshold, {model}, {distinct} distinct pictures + {copies} copies, "
                   f"{figures['machine']}, {figures['date']}, load average {load} before, {figures['load_average_1min_end']} after")


if __name__ == "__main__":
    main()
