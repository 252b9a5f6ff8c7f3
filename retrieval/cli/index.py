"""Building and describing indexes: index, info, and models (the aligner specs --model takes)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from retrieval.cli.app import main, quiet
from retrieval.cli.options import INDEX_HELP, MODEL_HELP, ByteSize, progress

if TYPE_CHECKING:  # Ray loads only with --ray
    from retrieval.cluster import RaySettings


class FolderOrURL(click.Path):
    """An existing folder or file, or an fsspec URL (scheme://...) that Ray workers read."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if "://" in str(value):
            return str(value)
        return super().convert(value, param, ctx)


def _ray_settings(
    address: str | None, encoders: int | None, folders: Sequence[str], stall: float | None = None,
) -> RaySettings | None:
    """--ray [ADDRESS] as RaySettings; URLs or --ray-stall without --ray, and a folder taken for the address, are usage errors."""
    urls = [f for f in folders if "://" in f]
    if address is None:
        if urls:
            raise click.UsageError(f"{urls[0]} is a URL: URLs are read by Ray workers, add --ray")
        if stall is not None:
            raise click.UsageError("--ray-stall limits a Ray run's wait: add --ray")
        return None
    # FloatRange lets nan and inf through; a run that can never be called stalled waits for ever.
    if stall is not None and not math.isfinite(stall):
        raise click.UsageError(f"--ray-stall {stall}: give a number of seconds above 0")
    if address not in ("local", "auto") and not address.startswith("ray://") and (":" not in address or "/" in address):
        raise click.UsageError(
            f"--ray {address!r}: ADDRESS is auto, HOST:PORT or ray://HOST:10001 (put FOLDER before a bare --ray)"
        )
    from retrieval.cluster import RaySettings

    ray_settings = RaySettings(address=None if address == "local" else address, encoders=encoders)
    if stall is not None:
        ray_settings.stall_seconds = stall
    return ray_settings


@main.command()
@click.argument("folders", nargs=-1, type=FolderOrURL(exists=True, file_okay=True))
@click.option("--index", "index_name", default="default", show_default=True, help=INDEX_HELP)
@click.option("--model", default=None, help=MODEL_HELP + " [default: the index's own, else 'default']")
@click.option("--captions", type=click.Path(exists=True, dir_okay=False), help="Caption corpus: .txt (one a line) or CSV/TSV with a 'caption' column.")
@click.option("--batch-size", default=32, show_default=True, help="Images per model call.")
@click.option("--workers", type=int, default=None, help="Decoding processes [default: one per core].")
@click.option("--max-index-memory", type=ByteSize(), default=None,
              help="Memory the image index may take, e.g. 4G; above it the index keeps 8-bit codes and "
                   "re-scores candidates exactly [default: a quarter of this machine's memory].")
@click.option("--on-disk/--no-on-disk", default=None,
              help="Keep the image index's inverted lists on disk, memory-mapped, whatever its size; the index "
                   "remembers it, and --no-on-disk returns it to memory when it fits "
                   "[default: as last time; new indexes on disk only when even 8-bit codes exceed --max-index-memory].")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.option("-q", "--quiet", "quiet_flag", is_flag=True, help="No progress bar or skipped-file notes.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Read, decode and encode on Ray: alone, a new private Ray instance on this machine, even "
                   "where one runs already; auto joins the cluster this machine belongs to (RAY_ADDRESS, else "
                   "the one `ray start` last started), HOST:PORT or ray://HOST:10001 the one named. "
                   "FOLDERs may then be fsspec URLs (s3://, gs://, file://).")
@click.option("--ray-encoders", type=click.IntRange(min=1), default=None,
              help="Encoder actors on a cluster without GPUs [default: 1; with GPUs, one per GPU].")
@click.option("--ray-stall", "ray_stall", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="With --ray: end the run in one line after this long without progress (no file read or decoded, "
                   "no vector stored); what was stored is kept and the same command resumes. Raise it where a "
                   "model takes longer to load on a busy node [default: 120].")
@click.option("--raw-pairs", type=click.Choice(["one", "both"]), default="one", show_default=True,
              help="A RAW and a JPEG of one stem in one folder: one photo (the JPEG indexed, the RAW listed "
                   "with it), or both indexed on their own.")
@click.option("--video-frames", type=click.IntRange(min=1), default=200, show_default=True,
              help="Frames sampled per video at most; a longer one is indexed up to there, with a note.")
@click.option("--video-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds of sampling per video at most; past it the video is indexed up to there, with a note "
                   "[default: 10 s a minute of video, 20 s to 300 s].")
@click.option("--faces/--no-faces", default=None,
              help="Find faces and group them into people (docs/people.md) [default: what the index did before; "
                   "a new index does]. --faces on an index made without them looks at its photos now.")
def index(folders: tuple[str, ...], index_name: str, model: str | None, captions: str | None, batch_size: int,
          workers: int | None, max_index_memory: int | None, on_disk: bool | None, as_json: bool, quiet_flag: bool,
          ray_address: str | None, ray_encoders: int | None, ray_stall: float | None, raw_pairs: str, video_frames: int,
          video_seconds: float | None, faces: bool | None) -> None:
    """Index image folders (recursively); re-runs encode only what changed.

    Every format Pillow decodes is indexed (JPEG, PNG, WebP, AVIF, GIF, BMP, TIFF,
    JPEG 2000, TGA, PSD...), and HEIC/HEIF, camera RAW (DNG, CR2, CR3, NEF, ARW,
    RAF, ORF, RW2...) and videos; unreadable ones are skipped and listed, and other
    files are counted as ignored, by extension. A RAW+JPEG pair is one photo and a
    Live Photo's .mov belongs to its still. Interrupt at any time: the next run resumes.

    \b
    Example:
        retrieval index ~/Pictures --index photos
        retrieval index --captions captions.txt --index photos
        retrieval index /shared/photos --index photos --ray auto
        retrieval index /data/photos --index big --on-disk
    """
    from retrieval.api import build_index
    from retrieval.ingest.pipeline import IndexSettings
    from retrieval.media.files import WalkSettings
    from retrieval.media.video import VideoSettings

    settings = IndexSettings(batch_size=batch_size, workers=workers, max_index_memory=max_index_memory, on_disk=on_disk,
                             walk=WalkSettings(pair_raw=raw_pairs == "one"),
                             video=VideoSettings(max_frames=video_frames, seconds=video_seconds), faces=faces)
    summary = build_index(
        list(folders), index=index_name, model=model, captions=captions, settings=settings,
        progress=progress(not quiet_flag), ray=_ray_settings(ray_address, ray_encoders, folders, ray_stall),
    )
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
        return
    if not quiet(quiet_flag):
        for item in summary.skipped[:20]:
            click.echo(f"skipped {item['path']}: {item['reason']}", err=True)
        if len(summary.skipped) > 20:
            click.echo(f"... and {len(summary.skipped) - 20} more skipped (see --json)", err=True)
        for ext, hint in summary.ignored_hints().items():
            click.echo(f"ignored {summary.ignored[ext]} {ext} files: {hint}", err=True)
    click.echo(summary.line())


@main.command()
@click.option("--index", "index_name", default="default", show_default=True, help=INDEX_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(index_name: str, as_json: bool) -> None:
    """Show an index: aligner, counts, index type, recall of approximate search, size on disk.

    \b
    Example:
        retrieval info --index photos
    """
    from retrieval.api import open_index

    idx = open_index(index_name)
    try:
        data = idx.info()
    finally:
        idx.close()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    rows = info_rows(data)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{label:<{width}}  {value}")


#: How `info` names each field of Index.info() for a person; fields not listed are not shown as text.
_INFO_LABELS = {
    "index": "index", "model": "aligner", "model_identity": "aligner recipe", "dim": "dimension",
    "images": "images", "videos": "videos", "video_frames": "video frames",
    "faces": "faces", "people": "people", "skipped": "skipped files", "captions": "captions", "with_date": "with a date",
    "with_place": "with a place", "with_camera": "with a camera", "generation": "generation",
    "index_type": "index type", "nprobe": "lists probed", "recall_at_10_vs_exact": "recall@10 vs exact",
    "recall_measured_on": "recall measured on", "recall_at_10_by_queries": "recall@10 by queries",
    "rescored_per_result": "re-scored per result", "lists_on_disk": "lists on disk",
    "bytes_on_disk": "size on disk", "index_files": "index files",
}


def info_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of `info` for a person: nothing unknown or unset is shown (the JSON keeps it all)."""
    rows = []
    for key, label in _INFO_LABELS.items():
        value = data.get(key)
        if value is None or (key in ("videos", "video_frames") and not value):  # an index of photos: as before
            continue
        if key in ("faces", "people") and not data.get("faces"):  # faces off, or none found: as before
            continue
        rows.append((label, _size(value) if key == "bytes_on_disk" else _readable(value)))
    return rows


def _readable(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_readable(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_readable(v) for v in value)
    return str(value)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n:,} bytes"
    size, units = n / 1024, ["KB", "MB", "GB"]
    while size >= 1024 and len(units) > 1:
        size, units = size / 1024, units[1:]
    return f"{size:,.1f} {units[0]}"


@main.command()
@click.option("--all", "show_all", is_flag=True, help="List every open_clip architecture/tag pair.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models(show_all: bool, as_json: bool) -> None:
    """List aligner specs usable with --model.

    \b
    Example:
        retrieval models
        retrieval index ~/Pictures --model open_clip:ViT-B-32/laion2b_s34b_b79k
    """
    from retrieval.aligners import list_aligners

    rows = list_aligners(all_open_clip=show_all)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        flag = "offline " if row["offline"] else "download"
        click.echo(f"{row['spec']:<52} {flag}  {row['note']}")
    if not show_all:
        click.echo("(popular open_clip models shown; --all lists every pretrained tag)")
