"""`retrieval eval`: recall@k of one or more aligners on a captioned image set."""

from __future__ import annotations

import json
import sys
import time

import click

from retrieval.cli.app import main
from retrieval.cli.app import quiet as cli_quiet
from retrieval.cli.options import MODEL_HELP


@main.command(name="eval")
@click.argument("dataset")
@click.option("--images", type=click.Path(file_okay=False), help="Image folder for Karpathy / COCO JSON [default: the JSON's folder].")
@click.option("--split", default="test", show_default=True, help="Split of a Karpathy JSON, a pairs file with a 'split' column, or a built-in set.")
@click.option("--model", "models", multiple=True, help=MODEL_HELP + " Repeat to compare models. [default: default]")
@click.option("-k", "ks", multiple=True, type=click.IntRange(min=1), help="Recall cut-off; repeatable. [default: 1 5 10]")
@click.option("--through-index", is_flag=True, help="Also search the engine's real FAISS index and report both.")
@click.option("--index-factory", default=None, help="Force the image index type for --through-index, e.g. 'IVF100,Flat'.")
@click.option("--json", "as_json", is_flag=True, help="Print every figure and the settings as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write recall@k against k to this PNG.")
@click.option("--dump", type=click.Path(file_okay=False), help="Write embeddings and the caption-to-image map here, per model.")
@click.option("--skip-missing", is_flag=True, help="Leave out missing and unreadable images (the report counts them).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Images per model call.")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Decoding processes [default: one per core].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images (quick runs).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def evaluate_command(dataset, images, split, models, ks, through_index, index_factory, as_json, plot, dump,
                     skip_missing, batch_size, workers, limit, quiet):
    """Measure recall@k with CLIP_benchmark's protocol, exact (and through the index).

    DATASET is a pairs .csv/.tsv (columns image, caption), a Karpathy split JSON
    (dataset_flickr30k.json, dataset_coco.json), a COCO captions JSON, a folder of
    images with same-name .txt captions, or a built-in set: fashion-mnist, easy-vqa.

    \b
    Example:
        retrieval eval easy-vqa
        retrieval eval pairs.csv --model default --plot recall.png --dump embeddings/
        retrieval eval dataset_flickr30k.json --images flickr30k-images -k 1 -k 5 -k 10 --through-index
    """
    from retrieval.evaluation.datasets import load_dataset
    from retrieval.evaluation.evaluate import evaluate
    from retrieval.progress import NullProgress, TqdmProgress

    if index_factory and not through_index:
        raise click.UsageError("--index-factory needs --through-index")
    data = load_dataset(dataset, images=images, split=split, skip_missing=skip_missing)
    if limit is not None:
        data = data.head(limit)
    started = time.monotonic()
    try:
        report = evaluate(
            data, list(models) or ["default"], ks=ks or (1, 5, 10), through_index=through_index,
            batch_size=batch_size, progress=NullProgress() if cli_quiet(quiet) else TqdmProgress(),
            dump_dir=dump, index_factory=index_factory, skip_unreadable=skip_missing, workers=workers,
        )
    except KeyboardInterrupt:
        # Unlike `index`, an evaluation keeps nothing to resume from: say so, not "run it again to resume".
        click.echo("\ninterrupted: no figures; an evaluation starts over when run again", err=True)
        sys.exit(130)
    out = report.as_dict()
    # The split the data really came from: None for a pairs file without a split column.
    out["settings"].update(dataset=dataset, split=data.split, limit=limit, seconds=round(time.monotonic() - started, 1))
    if plot:
        from retrieval.evaluation.plot import plot_recall

        out["plot"] = str(plot_recall(out, plot))
    if as_json:
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    for line in table(out):
        click.echo(line)


def table(report: dict) -> list[str]:
    """The terminal report: dataset line, recall definition, one row per model and search."""
    from retrieval.evaluation.evaluate import short_names

    data, ks = report["dataset"], report["settings"]["ks"]
    lines = [
        f"{data['name']}" + (f" ({data['split']})" if data.get('split') else "") + f": {data['images']:,} images, {data['captions']:,} captions"
        + (f" ({data['distinct_captions']:,} distinct texts, shared: grouped)" if data["shared_captions"] else ""),
    ]
    skipped = [f"{data['missing_images_skipped']:,} missing"] if data["missing_images_skipped"] else []
    if report["unreadable_skipped"]:
        skipped.append(f"{report['unreadable_skipped']:,} unreadable")
    if skipped:
        lines.append(f"skipped images: {' and '.join(skipped)} (left out with their captions)")
    lines.append(f"recall: {report['protocol']}")
    cols = [f"R@{k}" for k in ks] + ["mAP"]
    names = short_names([m["model"] for m in report["models"]])
    width = max([len(name) for name in names] + [5])
    searches = 5
    head = " ".join(f"{c:>6}" for c in cols)
    span = len(head)
    lines.append("")
    lines.append(f"{'':<{width}}  {'':<{searches}}  {'text → image':^{span}}   {'image → text':^{span}}")
    lines.append(f"{'model':<{width}}  {'search':<{searches}}  {head}   {head}")
    for m, model in zip(report["models"], names, strict=True):
        rows = [("exact", m["exact"])]
        if m["through_index"]:
            rows.append(("index", m["through_index"]))
        for name, figures in rows:
            cells = []
            for direction in ("text_to_image", "image_to_text"):
                values = figures[direction]
                cells.append(" ".join(f"{100 * values[c]:>6.1f}" if c in values else f"{'-':>6}" for c in cols))
            lines.append(f"{model:<{width}}  {name:<{searches}}  {cells[0]}   {cells[1]}")
    lines += _trivial_ks(report)
    lines.append("")
    for m, model in zip(report["models"], names, strict=True):
        if m["through_index"]:
            t2i, i2t = m["through_index"]["text_to_image"], m["through_index"]["image_to_text"]
            lines.append(f"{model}: searched index over images {_search_name(t2i)}, over texts {_search_name(i2t)}")
    for m, model in zip(report["models"], names, strict=True):
        s = m["seconds"]
        lines.append(f"{model}: images {s['images']:.1f}s, texts {s['texts']:.1f}s, scoring {s['scoring']:.1f}s"
                     + (f"; embeddings in {m['dump']}" if m.get("dump") else ""))
    lines.append(f"total {report['settings']['seconds']:.1f}s" + (f"; plot: {report['plot']}" if report.get("plot") else ""))
    return lines


def _trivial_ks(report: dict) -> list[str]:
    """A note for each direction where some k reaches the number of items ranked: that R@k is 100% by construction."""
    data, ks = report["dataset"], report["settings"]["ks"]
    lines = []
    for title, size, what in (("text → image", data["images"], "images"),
                              ("image → text", data.get("distinct_texts_queried", data["captions"]), "texts")):
        trivial = [f"R@{k}" for k in ks if k >= size]
        if trivial:
            lines.append(f"note: {title} ranks only {size:,} {what}: {', '.join(trivial)} "
                         f"{'is' if len(trivial) == 1 else 'are'} 100% by construction")
    return lines


def _search_name(figures: dict) -> str:
    if not figures.get("nprobe"):
        return figures["index"]
    tuned = figures.get("tuned_recall_at_10")
    return f"{figures['index']} (nprobe {figures['nprobe']}" + (f", tuned recall@10 {tuned:.3f})" if tuned is not None else ")")
