"""Embedding exchange commands: export, import (clip-retrieval's img_emb/ + metadata/ layout)."""

from __future__ import annotations

import json

import click

from retrieval.cli import main
from retrieval.cli.engine import INDEX_HELP, MODEL_HELP, ByteSize, _progress


@main.command()
@click.argument("index_name", metavar="INDEX")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--shard-size", default=1_000_000, show_default=True, type=click.IntRange(min=1),
              help="Vectors per img_emb_N.npy / metadata_N.parquet shard.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def export(index_name, out, shard_size, as_json):
    """Export an index's vectors in clip-retrieval's layout (img_emb/, metadata/, text_emb/).

    Vectors are float32 and L2-normalized; metadata has image_path and the catalog id.
    autofaiss builds an index from it: autofaiss build_index --embeddings OUT/img_emb.

    \b
    Example:
        retrieval export photos photos-emb --shard-size 500000
    """
    from retrieval.storage.exchange import export_index

    summary = export_index(index_name, out, shard_size, progress=_progress(not as_json))
    click.echo(json.dumps(summary.__dict__, indent=2) if as_json else summary.line())


@main.command(name="import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--index", "index_name", required=True, help=INDEX_HELP + " Must not exist yet.")
@click.option("--model", required=True, help=MODEL_HELP + " The model that made the vectors (for new queries).")
@click.option("--on-disk", is_flag=True, help="Keep the image index's inverted lists on disk (see `retrieval index --on-disk`).")
@click.option("--max-index-memory", type=ByteSize(), default=None,
              help="Memory the image index may take, as for `retrieval index`.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def import_(folder, index_name, model, on_disk, max_index_memory, as_json):
    """Make a new index from embeddings in clip-retrieval's layout, without re-encoding.

    FOLDER holds img_emb/img_emb_N.npy and metadata/metadata_N.parquet (with image_path),
    e.g. the output of `clip-retrieval inference`; text_emb/ becomes the caption corpus.
    The vectors' dimension must match --model, and every vector must be finite.

    \b
    Example:
        retrieval import laion-emb --index laion --model open_clip:ViT-B-32/laion2b_s34b_b79k
    """
    from retrieval.storage.exchange import import_embeddings

    summary = import_embeddings(folder, index_name, model, on_disk=on_disk, memory_limit=max_index_memory,
                                progress=_progress(not as_json))
    click.echo(json.dumps(summary.__dict__, indent=2) if as_json else summary.line())
