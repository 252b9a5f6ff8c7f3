"""Does decoding a video limit indexing? The sampler against decoding every frame and the encoder, in one run.

A phone-like video is generated once with PyAV (benchmarks/videos.py, cached under
bench-out/videos/): 1080p H.264 at 30 frames/s, a keyframe every second, 30 scenes of 10 s
(5 minutes), each scene a real dev-set photo panned across, so the encoder of the video had
real motion to code. Then, on this machine:

- the sampler (retrieval.media.video.sample) over the whole video, with no cap on frames or
  time (what its decoding costs for all of it), and with the settings indexing uses;
- the alternatives, on the same video in the same run: the sampler not looking back
  (``look_back=False``: no decode of a passed-over run's middle or of the last keyframe, the
  sampler before 2026-12-07), the sampler probing keyframes at most
  7.5 s apart, the sampler decoding every keyframe (as it did before packet sizes chose
  which), decoding every frame (PyAV, same decoder), and a keyframe's decoding with FFmpeg's
  loop filter skipped (``skip_loop_filter``: a cheaper decode for the frames only compared);
- the `default` aligner on the frames the sampler kept: the decode worker's resize
  (aligner.transform of a 1080p frame) and the model (encode_images), in images/s;
- frame_at, the page's and the contact sheet's thumbnail of a moment, in ms per frame.

The figures are put side by side per minute of video: CPU seconds of sampling against CPU
seconds of resizing and encoding the frames it keeps. Decoding does not limit indexing while
the first is under the second.

    python -m benchmarks.bench_video            # writes bench-out/video.json and .md
    python -m benchmarks.bench_video --quick    # a 20 s video: checks that it works
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

from benchmarks import harness, videos


def decode_everything(path: Path) -> tuple[int, harness.Run]:
    """(frames, run): every frame of the first video stream decoded, nothing kept."""
    import av

    frames = 0
    with harness.measure("decode every frame") as run, av.open(str(path)) as container:
        for _ in container.decode(container.streams.video[0]):
            frames += 1
    return frames, run


def keyframe_ms(path: Path, options: dict[str, str], count: int = 20) -> float:
    """CPU ms to decode one keyframe, the first `count` keyframes each decoded alone with these
    FFmpeg decoder options (e.g. skip_loop_filter): what a cheaper decode of compared frames would save."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = []
        for packet in container.demux(stream):
            if packet.size and packet.is_keyframe:
                packets.append(bytes(packet))
                if len(packets) >= count:
                    break
        codec = av.CodecContext.create(stream.codec_context.name, "r")
        codec.extradata = stream.codec_context.extradata
        codec.options = options
        with harness.measure(f"keyframes {options}") as run:
            for data in packets:
                codec.decode(av.Packet(data))
                codec.decode(None)
                codec.flush_buffers()
    return 1000 * run.cpu_s / len(packets)


@contextmanager
def busy(count: int) -> Iterator[None]:
    """`count` processes spinning on the CPU meanwhile: indexing on a machine busy with other work."""
    spinners = [multiprocessing.get_context("fork").Process(target=_spin, daemon=True) for _ in range(count)]
    for spinner in spinners:
        spinner.start()
    try:
        time.sleep(2 if count else 0)  # the load average catches up a little
        yield
    finally:
        for spinner in spinners:
            spinner.terminate()
            spinner.join()


def _spin() -> None:
    while True:
        pass


def scenes_found(times: list[float], scenes: list[tuple[float, float]]) -> int:
    """How many scenes hold at least one kept frame."""
    return sum(any(start <= t < end for t in times) for start, end in scenes)


def sampled(path: Path, settings, keep: int) -> tuple[list, object, list[str], harness.Run, list[float]]:
    """(first `keep` frames, tally, notes, run, every kept frame's time) of the sampler over the video."""
    from retrieval.media.video import Tally, sample

    tally, notes, kept, times = Tally(), [], [], []
    with harness.measure("sample") as run:
        for frame in sample(str(path), settings, notes, tally):
            times.append(frame.time)
            if len(kept) < keep:
                kept.append(frame)
    return kept, tally, notes, run, times


def encoder_rates(frames: list, rounds: int) -> dict:
    """images/s and CPU s per image of the default aligner on these frames: the resize (transform) and the model."""
    from retrieval.aligners import load_aligner

    aligner = load_aligner("default")
    images = [f.image for f in frames]
    with harness.measure("transform") as resize:
        pixels = np.stack([aligner.transform(image) for image in images])
    aligner.encode_images(pixels[:4])  # warm-up: lazy loads, first-call allocations
    runs = []
    for _ in range(rounds):
        with harness.measure("encode") as run:
            aligner.encode_images(pixels)
        runs.append(run)
    best = min(runs, key=lambda r: r.wall_s)
    return {"images": len(images), "transform_per_s": len(images) / resize.wall_s,
            "transform_cpu_s": resize.cpu_s / len(images), "encode_per_s": len(images) / best.wall_s,
            "encode_cpu_s": best.cpu_s / len(images), "encode_rounds": [r.as_dict() for r in runs]}


def frame_at_ms(path: Path, seconds: float, count: int = 8) -> float:
    """Median ms of frame_at at `count` moments spread over the video."""
    from retrieval.media.video import frame_at

    moments = np.linspace(0.1, seconds * 0.95, count)
    return 1000 * float(np.median([harness.timed(lambda t=t: frame_at(str(path), float(t)))[0] for t in moments]))


@harness.command(out="bench-out/video.json", quick={"scenes": 2, "rounds": 1})
@click.option("--scenes", type=int, default=30, show_default=True, help="Scenes of 10 s (30: a 5-minute video).")
@click.option("--rounds", type=int, default=3, show_default=True, help="Timed rounds of the encoder (the fastest counts).")
@click.option("--busy", "spinners", type=int, default=4, show_default=True,
              help="Processes spinning on the CPU while indexing's settings are timed (a loaded machine).")
def main(scenes: int, rounds: int, spinners: int, out: Path) -> None:
    from retrieval.media.video import VideoSettings, probe

    recipe = videos.Recipe(photos=videos.scene_photos(videos.dev_photos(largest=30), scenes))
    started = time.perf_counter()
    path = videos.cached(recipe, "phone-1080p")
    made = time.perf_counter() - started
    video = {**videos.describe(path, recipe), **probe(str(path))}
    harness.note(f"video: {path} ({video['mbit_s']} Mbit/s; {made:.0f}s to get)")
    minutes = video["seconds"] / 60
    scenes_made = recipe.scenes()

    uncapped = VideoSettings(max_frames=10**6, seconds=1e9)
    variants = {  # name -> settings: the sampler as indexing runs it first, then the alternatives
        "**sampler** (packet sizes, a keyframe at least every 10 s; no cap)": uncapped,
        "sampler not looking back (alternative: the sampler before 2026-12-07)": replace(uncapped, look_back=False),
        "sampler probing keyframes at most 7.5 s apart (alternative)": replace(uncapped, probe_every=7.5),
        "sampler decoding every keyframe (alternative: the sampler before)": replace(uncapped, probe_every=0.0),
    }
    runs = {name: sampled(path, settings, keep=32 if i == 0 else 0) for i, (name, settings) in enumerate(variants.items())}
    frames, tally, _, sampler, _ = next(iter(runs.values()))
    indexing = VideoSettings()
    before = VideoSettings(probe_every=0.0, seconds=20.0)  # the sampler and the fixed limit before
    with busy(spinners):
        _, index_tally, index_notes, index_sample, index_times = sampled(path, indexing, keep=0)
        _, before_tally, before_notes, before_sample, before_times = sampled(path, before, keep=0)
        loaded_to = harness.load()
    decoded, every = decode_everything(path)
    key_ms = {name: keyframe_ms(path, options) for name, options in
              (("default", {}), ("skip_loop_filter=all", {"skip_loop_filter": "all"}))}
    thumb_ms = frame_at_ms(path, video["seconds"])
    encoder = encoder_rates(frames, rounds)

    kept = tally.kept / minutes
    resize = (kept / encoder["transform_per_s"], kept * encoder["transform_cpu_s"])
    encode = (kept / encoder["encode_per_s"], kept * encoder["encode_cpu_s"])

    def row(what: str, frames: str, wall: float, cpu: float, rate: str, found: str = "") -> dict:
        return {"per minute of video": what, "frames": frames, "scenes found": found, "wall s": f"{wall:.2f}",
                "CPU s": f"{cpu:.2f}", "rate": rate}

    rows = []
    for name, (_, t, _, run, times) in runs.items():
        rows.append(row(name, f"{t.decoded / minutes:.0f} decoded, {t.kept / minutes:.1f} kept",
                        run.wall_s / minutes, run.cpu_s / minutes,
                        f"{1000 * run.cpu_s / t.kept:.0f} CPU ms a kept frame, {video['seconds'] / run.wall_s:.0f}x real time",
                        f"{scenes_found(times, scenes_made)} of {len(scenes_made)}"))
    rows += [
        row("decoding every frame (alternative)", f"{decoded / minutes:.0f} decoded", every.wall_s / minutes,
            every.cpu_s / minutes, f"{decoded / every.wall_s:.0f} frames/s, {video['seconds'] / every.wall_s:.1f}x real time"),
        row("resizing the kept frames (decode worker, aligner.transform)", f"{kept:.1f}", *resize,
            f"{encoder['transform_per_s']:.0f} images/s, {1000 * encoder['transform_cpu_s']:.0f} CPU ms each"),
        row("**encoding the kept frames (`default`)**", f"{kept:.1f}", *encode,
            f"{encoder['encode_per_s']:.1f} images/s, {1000 * encoder['encode_cpu_s']:.0f} CPU ms each"),
    ]
    sample_cpu = sampler.cpu_s / minutes
    encoder_cpu = resize[1] + encode[1]  # what a kept frame costs once sampled: the resize and the model
    limits = sample_cpu >= encoder_cpu
    verdict = (f"CPU per minute of video: sampling {sample_cpu:.2f} s ({1000 * sampler.cpu_s / tally.kept:.0f} ms a kept frame), "
               f"resizing and encoding what it keeps {encoder_cpu:.2f} s ({1000 * encoder_cpu / kept:.0f} ms a frame): "
               + (f"DECODING LIMITS INDEXING ({sample_cpu / encoder_cpu:.1f}x the encoder's CPU)" if limits
                  else f"decoding does not limit indexing ({encoder_cpu / sample_cpu:.1f}x headroom)")
               + f"; split by process, the decode worker (sampling + resize) {sample_cpu + resize[1]:.2f} s against the "
               f"model's {encode[1]:.2f} s; decoding every frame would take {every.cpu_s / minutes:.2f} s")
    title = "\n".join([
        f"Video decode against the encoder, {harness.summary()}, load {sampler.load_before:.1f} -> {harness.load():.1f} "
        f"({harness.machine()['utc']} UTC)",
        f"video: {video['width']}x{video['height']} {video['codec']}, {video['seconds']:.0f} s, {video['fps']:.0f} fps, "
        f"keyframe every {video['keyframe_every_s']:g} s, {video['mbit_s']} Mbit/s, {video['scenes']} scenes",
        f"under {spinners} busy processes (load {index_sample.load_before:.1f} -> {loaded_to:.1f}): indexing's settings "
        f"(cap {indexing.max_frames} frames, {indexing.time_limit(video['seconds']):g} s for this video): "
        f"{index_tally.kept} frames kept in {index_sample.wall_s:.1f} s, up to {index_times[-1]:.0f} s"
        + (f"; {'; '.join(index_notes)}" if index_notes else " (whole)")
        + f"; the sampler before (every keyframe, 20 s): {before_tally.kept} frames in {before_sample.wall_s:.1f} s, "
        f"up to {before_times[-1]:.0f} s" + (f"; {'; '.join(before_notes)}" if before_notes else " (whole)"),
        "a keyframe decoded alone: " + ", ".join(f"{name} {ms:.1f} CPU ms" for name, ms in key_ms.items()),
        f"frame_at (a thumbnail's frame): {thumb_ms:.0f} ms median",
        verdict,
    ])
    data = {"machine": harness.machine(), "video": video, "made_s": round(made, 1),
            "samplers": {name: {**run.as_dict(), "decoded": t.decoded, "kept": t.kept, "keyframes": t.keyframes,
                                "scenes_found": scenes_found(times, scenes_made), "times": times}
                         for name, (_, t, _, run, times) in runs.items()},
            "busy_processes": spinners,
            "sampler_indexing": {**index_sample.as_dict(), "decoded": index_tally.decoded, "kept": index_tally.kept,
                                 "time_limit_s": indexing.time_limit(video["seconds"]), "notes": index_notes,
                                 "up_to_s": index_times[-1]},
            "sampler_before_indexing": {**before_sample.as_dict(), "decoded": before_tally.decoded, "kept": before_tally.kept,
                                        "notes": before_notes, "up_to_s": before_times[-1]},
            "keyframe_cpu_ms": key_ms, "decode_every_frame": {**every.as_dict(), "frames": decoded},
            "frame_at_ms": round(thumb_ms, 1), "encoder": encoder,
            "per_minute": {"sample_wall_s": sampler.wall_s / minutes, "sample_cpu_s": sample_cpu,
                           "resize_wall_s": resize[0], "resize_cpu_s": resize[1], "encode_wall_s": encode[0],
                           "encode_cpu_s": encode[1], "decode_every_frame_cpu_s": every.cpu_s / minutes},
            "decode_limits_indexing": limits}
    harness.report("video", data, rows, out, title=title)


if __name__ == "__main__":
    main()
