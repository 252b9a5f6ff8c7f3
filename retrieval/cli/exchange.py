"""Embedding exchange commands: export, import (clip-retrieval's img_emb/ + metadata/ layout)."""

from __future__ import annotations

import json

import click

from retrieval.cli.app import main
from retrieval.cli.options import INDEX_HELP, MODEL_HELP, ByteSize, progress


@main.command()
@click.argument("folders", nargs=-1, metavar="[INDEX] OUT")
@click.option("--index", "index_option", default=None, help=INDEX_HELP + " Or give INDEX before OUT. [default: default]")
@click.option("--shard-size", default=1_000_000, show_default=True, type=click.IntRange(min=1),
              help="Vectors per img_emb_N.npy / metadata_N.parquet shard.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--faces", is_flag=True,
              help="Export the faces too: faces/face_emb.npy (128-d descriptors) and faces/faces.parquet "
                   "(face_id, image_id, image_path, x, y, w, h, score, person_id, person_name).")
def export(folders, index_option, shard_size, as_json, faces):
    """Export an index's vectors in clip-retrieval's layout (img_emb/, metadata/, text_emb/).

    Vectors are float32 and L2-normalized; metadata has image_path and the catalog id;
    retrieval.json records the aligner, so `retrieval import` needs no --model.
    autofaiss builds an index from it: autofaiss build_index --embeddings OUT/img_emb.

    \b
    Example:
        retrieval export --index photos photos-emb --shard-size 500000
        retrieval export photos photos-emb
    """
    from retrieval.storage.exchange import export_index

    index_name, out = _index_and_out(folders, index_option)

    summary = export_index(index_name, out, shard_size, progress=progress(True), faces=faces)
    click.echo(json.dumps(summary.__dict__, indent=2) if as_json else summary.line())


def _index_and_out(folders: tuple[str, ...], index_option: str | None) -> tuple[str, str]:
    """`export INDEX OUT` as before, or `export --index INDEX OUT` as every other command takes an index."""
    if index_option is not None:
        if len(folders) != 1:
            raise click.UsageError("with --index, give OUT alone" if folders else "give the OUT folder")
        return index_option, folders[0]
    if len(folders) == 2:
        return folders[0], folders[1]
    if len(folders) == 1:
        return "default", folders[0]
    raise click.UsageError("give the OUT folder (and the index: --index NAME, or INDEX before OUT)")


@main.command(name="import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--index", "index_name", required=True, help=INDEX_HELP + " Must not exist yet.")
@click.option("--model", default=None,
              help=MODEL_HELP + " The model that made the vectors (for new queries) [default: the one an export "
                   "recorded in FOLDER/retrieval.json; needed for other tools' folders].")
@click.option("--on-disk", is_flag=True, help="Keep the image index's inverted lists on disk (see `retrieval index --on-disk`).")
@click.option("--max-index-memory", type=ByteSize(), default=None,
              help="Memory the image index may take, as for `retrieval index`.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def import_(folder, index_name, model, on_disk, max_index_memory, as_json):
    """Make a new index from embeddings in clip-retrieval's layout, without re-encoding.

    FOLDER holds img_emb/img_emb_N.npy and metadata/metadata_N.parquet (with image_path),
    e.g. the output of `clip-retrieval inference`; text_emb/ becomes the caption corpus.
    The vectors' dimension must match the model, and every vector must be finite.

    \b
    Example:
        retrieval import laion-emb --index laion --model open_clip:ViT-B-32/laion2b_s34b_b79k
        retrieval import photos-emb --index photos-copy
    """
    from retrieval.ingest.embeddings import import_embeddings

    summary = import_embeddings(folder, index_name, model, on_disk=on_disk, memory_limit=max_index_memory,
                                progress=progress(True))
    click.echo(json.dumps(summary.__dict__, indent=2) if as_json else summary.line())
