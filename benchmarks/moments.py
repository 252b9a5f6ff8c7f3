"""Moment retrieval: does a caption of one scene find its video at a time inside that scene?

The dev set's photos (retrieval/evaluation/devset.py; the test half by default, the half the
`default` recipe was not tuned on) are cut into videos of 3 to 5 scenes, one photo a scene,
each scene 4 to 9 s long and slowly panned (benchmarks/videos.py), written with PyAV as a phone
would: H.264, 640 x 360, 15 frames/s, a keyframe every second and none added at the cuts, so a
cut falls between keyframes as in a real recording. Each photo is in one scene of one video.
The videos are indexed with `default` (nothing else in the index) and every caption of every
scene is searched (one result per video, at its best moment):

- **video top-1**: the first result is the scene's video;
- **moment top-1**: ... and its time lies inside the scene (the issue's measure);
- **moment, right video**: the scene's video, wherever it ranks, is given at a time inside
  the scene (how well the moment is placed once the video is found);
- for scale, where a one-thumbnail-per-video search points: its first frame, inside the scene
  only for first scenes.

    python -m benchmarks.moments                 # writes bench-out/moments.json and .md
    python -m benchmarks.moments --split all     # both halves (more videos; the tune half was tuned on)
    python -m benchmarks.moments --quick         # 4 videos: checks that it works
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import click

from benchmarks import harness, videos

#: Scenes per video, in turn.
SCENE_COUNTS = (3, 4, 5, 3)
SECONDS = (4.0, 9.0)


def plan(photos: list[str], count: int | None, seed: int) -> list[videos.Recipe]:
    """Videos of 3 to 5 scenes using each photo once (shuffled: neighbours in the set are alike)."""
    order = list(photos)
    random.Random(seed).shuffle(order)
    rng = random.Random(seed + 1)
    recipes: list[videos.Recipe] = []
    at = 0
    while at + SCENE_COUNTS[0] <= len(order) and (count is None or len(recipes) < count):
        n = min(SCENE_COUNTS[len(recipes) % len(SCENE_COUNTS)], len(order) - at)
        durations = tuple(round(rng.uniform(*SECONDS), 1) for _ in range(n))
        recipes.append(videos.Recipe(photos=tuple(order[at : at + n]), width=640, height=360, fps=15, gop=15,
                                     options=(("preset", "veryfast"), ("crf", "23")), durations=durations))
        at += n
    return recipes


def captions_by_photo(split: str) -> dict[str, list[str]]:
    from retrieval.evaluation import devset

    pairs, missing = devset.load_pairs(captions=devset.SETS["v2"], split=split)
    for source, paths in missing.items():
        harness.note(f"missing {len(paths)} photos from {source}: {devset.install_command(source)}")
    out: dict[str, list[str]] = {}
    for image, caption in pairs:
        out.setdefault(image, []).append(caption)
    return out


def inside(time: float | None, scene: tuple[float, float]) -> bool:
    return time is not None and scene[0] <= time < scene[1]


@harness.command(out="bench-out/moments.json", quick={"count": 4})
@click.option("--split", type=click.Choice(["test", "tune", "all"]), default="test", show_default=True,
              help="Which half of the dev set's photos make the videos.")
@click.option("--count", type=int, default=None, help="At most this many videos [default: as many as the photos make].")
@click.option("--seed", type=int, default=21, show_default=True, help="Order of the photos and lengths of the scenes.")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the index in this folder (default: a temporary one, removed).")
def main(split: str, count: int | None, seed: int, keep: Path | None, out: Path) -> None:
    from retrieval.api import build_index, open_index
    from retrieval.ingest.pipeline import IndexSettings

    captions = captions_by_photo(split)
    recipes = plan(sorted(captions), count, seed)
    scratch = Path(tempfile.mkdtemp(prefix="moments-"))
    library = scratch / "videos"
    library.mkdir()
    with harness.measure("videos") as made:
        for i, recipe in enumerate(recipes):
            cached = videos.cached(recipe, f"moments-{i:03d}")
            shutil.copyfile(cached, library / f"v{i:03d}{recipe.suffix}")
    harness.note(f"{len(recipes)} videos, {sum(len(r.photos) for r in recipes)} scenes ready in {made.wall_s:.0f}s")
    index_folder = keep or scratch / "idx"
    with harness.measure("index") as indexed:
        summary = build_index([library], index=str(index_folder), settings=IndexSettings())
    harness.note(f"indexed in {indexed.wall_s:.0f}s: {summary.added} added, {len(summary.skipped)} skipped")

    index = open_index(str(index_folder))
    results = []
    try:
        for i, recipe in enumerate(recipes):
            name = f"v{i:03d}{recipe.suffix}"
            for number, (photo, scene) in enumerate(zip(recipe.photos, recipe.scenes())):
                for caption in captions[photo]:
                    hits = index.search(caption, k=len(recipes))
                    top = hits[0] if hits else None
                    mine = next((h for h in hits if h.path and Path(h.path).name == name), None)
                    results.append({
                        "video": name, "scene": number, "scenes": len(recipe.photos), "start": scene[0], "end": scene[1],
                        "caption": caption, "top_video": Path(top.path).name if top and top.path else None,
                        "top_time": top.time if top else None, "rank": hits.index(mine) + 1 if mine else None,
                        "time": mine.time if mine else None,
                    })
    finally:
        index.close()
        if keep is None:
            shutil.rmtree(scratch, ignore_errors=True)

    n = len(results)
    video_top1 = sum(r["top_video"] == r["video"] for r in results) / n
    moment_top1 = sum(r["top_video"] == r["video"] and inside(r["top_time"], (r["start"], r["end"])) for r in results) / n
    found = [r for r in results if r["time"] is not None]
    moment_found = sum(inside(r["time"], (r["start"], r["end"])) for r in found) / max(1, len(found))
    first_frame = sum(r["scene"] == 0 for r in results) / n
    by_position = {}
    for position in sorted({r["scene"] for r in results}):
        mine = [r for r in found if r["scene"] == position]
        by_position[position] = round(sum(inside(r["time"], (r["start"], r["end"])) for r in mine) / max(1, len(mine)), 3)
    rows = [
        {"measure": "video top-1 (the first result is the scene's video)", "value": f"{video_top1:.1%}"},
        {"measure": "**moment top-1** (... at a time inside the scene)", "value": f"**{moment_top1:.1%}**"},
        {"measure": "moment, right video (its time inside the scene, wherever it ranks)", "value": f"{moment_found:.1%}"},
        {"measure": "for scale: a video's first frame lies inside the scene", "value": f"{first_frame:.1%}"},
    ]
    title = (f"Moment retrieval, `default`: {len(recipes)} videos of 3-5 scenes ({sum(len(r.photos) for r in recipes)} scenes, "
             f"dev set v2, {'both halves' if split == 'all' else split + ' half'}), {n} captions; {harness.summary()}, {harness.machine()['utc']} UTC; "
             f"indexing took {indexed.wall_s:.0f}s (load {indexed.load_before:.1f} -> {indexed.load_after:.1f})")
    data = {"machine": harness.machine(), "split": split, "seed": seed, "videos": len(recipes), "captions": n,
            "video_top1": video_top1, "moment_top1": moment_top1, "moment_right_video": moment_found,
            "first_frame_inside": first_frame, "moment_by_scene_position": by_position,
            "index_run": indexed.as_dict(), "results": results}
    harness.report("moments", data, rows, out, title=title)


if __name__ == "__main__":
    main()
