"""Engine commands: index, search, info, models, demo."""

from __future__ import annotations

import json

import click

from retrieval.cli import main, note, quiet
from retrieval.cli.filtering import filter_options, filters_from

MODEL_HELP = "Aligner spec: default, open_clip:ARCH/TAG, open_clip:ARCH/PATH, or a trained checkpoint."
INDEX_HELP = "Index name (under ./indexes or $RETRIEVAL_HOME) or path."


class ByteSize(click.ParamType):
    """A size such as 4G, 512M, 1.5GB or a plain number of bytes."""

    name = "size"
    _UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        number, unit = (text[:-1], text[-1]) if text and text[-1] in self._UNITS else (text, "")
        try:
            size = int(float(number) * self._UNITS[unit])
        except ValueError:
            self.fail(f"{value!r} is not a size: use a number of bytes or e.g. 512M, 4G", param, ctx)
        if size <= 0:
            self.fail(f"{value!r}: the size must be above zero", param, ctx)
        return size


def _progress(enabled: bool):
    from retrieval.progress import NullProgress, TqdmProgress

    return TqdmProgress() if enabled and not quiet() else NullProgress()


class FolderOrURL(click.Path):
    """An existing folder or file, or an fsspec URL (scheme://...) that Ray workers read."""

    def convert(self, value, param, ctx):
        if "://" in str(value):
            return str(value)
        return super().convert(value, param, ctx)


def _ray_settings(address: str | None, encoders: int | None, folders):
    """--ray [ADDRESS] as RaySettings; URLs without --ray, and a folder taken for the address, are usage errors."""
    urls = [f for f in folders if "://" in f]
    if address is None:
        if urls:
            raise click.UsageError(f"{urls[0]} is a URL: URLs are read by Ray workers, add --ray")
        return None
    if address not in ("local", "auto") and not address.startswith("ray://") and (":" not in address or "/" in address):
        raise click.UsageError(
            f"--ray {address!r}: ADDRESS is auto, HOST:PORT or ray://HOST:10001 (put FOLDER before a bare --ray)"
        )
    from retrieval.cluster import RaySettings

    return RaySettings(address=None if address == "local" else address, encoders=encoders)


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
              help="Read, decode and encode on Ray: alone, a local Ray instance; auto, HOST:PORT or "
                   "ray://HOST:10001 joins a cluster. FOLDERs may then be fsspec URLs (s3://, gs://, file://).")
@click.option("--ray-encoders", type=click.IntRange(min=1), default=None,
              help="Encoder actors on a cluster without GPUs [default: 1; with GPUs, one per GPU].")
def index(folders, index_name, model, captions, batch_size, workers, max_index_memory, on_disk, as_json, quiet_flag,
          ray_address, ray_encoders):
    """Index image folders (recursively); re-runs encode only what changed.

    JPEG, PNG, WebP, GIF, BMP and TIFF files are indexed; unreadable ones are skipped
    and listed. Interrupt at any time: the next run resumes.

    \b
    Example:
        retrieval index ~/Pictures --index photos
        retrieval index --captions captions.txt --index photos
        retrieval index /shared/photos --index photos --ray auto
        retrieval index /data/photos --index big --on-disk
    """
    from retrieval.api import build_index
    from retrieval.ingest.pipeline import IndexSettings

    settings = IndexSettings(batch_size=batch_size, workers=workers, max_index_memory=max_index_memory, on_disk=on_disk)
    summary = build_index(
        list(folders), index=index_name, model=model, captions=captions, settings=settings,
        progress=_progress(not quiet_flag and not as_json), ray=_ray_settings(ray_address, ray_encoders, folders),
    )
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
        return
    if not quiet(quiet_flag):
        for item in summary.skipped[:20]:
            click.echo(f"skipped {item['path']}: {item['reason']}", err=True)
        if len(summary.skipped) > 20:
            click.echo(f"... and {len(summary.skipped) - 20} more skipped (see --json)", err=True)
    click.echo(summary.line())


@main.command()
@click.argument("text", required=False)
@click.option("--image", type=click.Path(exists=True, dir_okay=False), help="Query image (image-to-image, or fused with TEXT).")
@click.option("--texts", is_flag=True, help="Rank the index's captions instead of its images.")
@click.option("-k", default=10, show_default=True, type=click.IntRange(min=1), help="Number of results.")
@click.option("--weight", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="Image share when TEXT and --image are both given.")
@click.option("--not", "negatives", multiple=True, help="A concept to push away (repeatable).")
@click.option("--index", "index_name", default="default", show_default=True, help=INDEX_HELP)
@click.option("--model", default=None, help=MODEL_HELP + " Must match the index.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--paths", is_flag=True, help="Print bare paths, one a line (for pipes).")
@click.option("-0", "--null", "null", is_flag=True, help="With --paths: end each path with a NUL byte, as find -print0 does.")
@click.option("--sheet", type=click.Path(dir_okay=False), help="Also draw the image results as a contact sheet PNG.")
@filter_options
def search(text, image, texts, k, weight, negatives, index_name, model, as_json, paths, sheet, null, **filter_args):
    """Search an index by text, by image, or both.

    \b
    Example:
        retrieval search "a dog on a beach"
        retrieval search --image ref.jpg -k 5
        retrieval search "a red car" --image ref.jpg --weight 0.3 --not "night"
        retrieval search --image photo.jpg --texts
        retrieval search "a cat" --sheet cats.png
        retrieval search "a beach" --after 2023-06-01 --before 2023-09-01 --folder ~/Pictures/Trips
    """
    from retrieval.api import open_index
    from retrieval.search.query import Query

    if not text and not image:
        raise click.UsageError("give a TEXT, an --image, or both")
    filters = filters_from(filter_args)
    idx = open_index(index_name, model=model)
    try:
        hits = idx.search(
            text, image=image, k=k, weight=weight, negatives=negatives, target="texts" if texts else "images",
            filters=filters,
        )
        # Nothing passed the filters: say which one excluded everything (not an error).
        why = idx.why_empty(filters) if filters.active and not hits else None
    finally:
        idx.close()
    if sheet and not texts:
        from retrieval.search.sheet import contact_sheet

        contact_sheet([(_title(text, image), hits)], sheet)
    if as_json:
        query = Query(text=text, image=image, weight=weight, negatives=list(negatives), target="texts" if texts else "images")
        out = {"query": {**query.describe(), "k": k, **filters.describe()}, "results": [h.as_dict() for h in hits]}
        if why:
            out["note"] = why
        click.echo(json.dumps(out, indent=2))
    elif paths or null:
        # A file name may hold a newline; NUL is the one byte no path can contain.
        end = "\0" if null else "\n"
        for hit in hits:
            click.echo(hit.path if hit.path is not None else hit.text, nl=False)
            click.echo(end, nl=False)
    elif why:
        click.echo(f"no results: {why}")
    elif not hits:
        click.echo("no results (is the index empty?)")
    else:
        for hit in hits:
            click.echo(f"{hit.rank:>3}  {hit.score:.3f}  {hit.path if hit.path is not None else hit.text}")


def _title(text, image) -> str:
    parts = [f'"{text}"'] if text else []
    if image:
        parts.append(f"image {image}")
    return " + ".join(parts)


@main.command()
@click.option("--index", "index_name", default="default", show_default=True, help=INDEX_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(index_name, as_json):
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
    for key, value in data.items():
        if key == "files":
            continue
        click.echo(f"{key:>22}: {value}")


@main.command()
@click.option("--all", "show_all", is_flag=True, help="List every open_clip architecture/tag pair.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models(show_all, as_json):
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


@main.command()
@click.option("--index", "index_name", default="demo", show_default=True, help=INDEX_HELP)
@click.option("-k", default=3, show_default=True, help="Results per query.")
@click.option("--sheet", default="demo.png", show_default=True, type=click.Path(dir_okay=False), help="Contact sheet of the results.")
def demo(index_name, k, sheet):
    """Index the real photos shipped with the installed packages and run a few searches.

    \b
    Example:
        retrieval demo
    """
    from retrieval.api import build_index, open_index
    from retrieval.errors import ModelMismatch
    from retrieval.evaluation.demo import DEMO_QUERIES, demo_folder

    folder = demo_folder()
    note(f"indexing the demo photos in {folder}")
    try:
        summary = build_index([folder], index=index_name, progress=_progress(True))
    except ModelMismatch:
        if index_name != "demo":  # someone else's index: never delete it
            raise
        # The demo's own index, built by an earlier recipe of `default`: it holds only the
        # demo's copies of packaged photos, so rebuilding it loses nothing.
        from retrieval.evaluation.demo import remove_demo_index

        note("the demo index was built by an earlier version of the default aligner; rebuilding it")
        remove_demo_index(index_name)
        summary = build_index([folder], index=index_name, progress=_progress(True))
    click.echo(summary.line())
    idx = open_index(index_name)
    rows = []
    try:
        for query in DEMO_QUERIES:
            click.echo(f'\nsearch "{query}"')
            hits = idx.search(query, k=k)
            rows.append((f'"{query}"', hits))
            for hit in hits:
                click.echo(f"{hit.rank:>3}  {hit.score:.3f}  {hit.path}")
    finally:
        idx.close()
    from retrieval.search.sheet import contact_sheet

    click.echo(f"\ncontact sheet of these results: {contact_sheet(rows, sheet)}")
