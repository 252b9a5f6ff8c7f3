"""`retrieval train`: contrastive training of the aligner on image-caption pairs."""

from __future__ import annotations

import json
import sys

import click

from retrieval.cli.app import main
from retrieval.cli.app import quiet as cli_quiet
from retrieval.cli.options import MODEL_HELP
from retrieval.progress import NullProgress, TqdmProgress


class BarWithLoss(TqdmProgress):
    """The engine's progress bar, plus the running loss beside it."""

    def postfix(self, **values) -> None:
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)


def _val_split(source: str, split: str | None) -> str:
    from retrieval.evaluation.datasets import BUILTINS

    if split:
        return split
    return "test" if source in BUILTINS else "val"


@main.command(name="train")
@click.argument("pairs")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint file to write (e.g. shapes.pt).")
@click.option("--from", "start", default="default", show_default=True, help="Starting aligner. " + MODEL_HELP)
@click.option("--val", default=None, help="Validation pairs (any format PAIRS accepts) [default: hold out --val-share of PAIRS].")
@click.option("--images", type=click.Path(file_okay=False), help="Image folder for Karpathy / COCO JSON [default: the JSON's folder].")
@click.option("--split", default="train", show_default=True, help="Split of PAIRS (Karpathy JSON, pairs file with a 'split' column, built-in set).")
@click.option("--val-split", default=None, help="Split of --val [default: test for built-in sets, else val].")
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(min=1), help="Passes over the training pairs.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=2), help="Pairs per step (the in-batch negatives).")
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Peak learning rate of the heads (cosine decay).")
@click.option("--weight-decay", default=0.0, show_default=True, type=click.FloatRange(min=0), help="AdamW weight decay.")
@click.option("--hidden", default=0, show_default=True, type=click.IntRange(min=0), help="Add a residual MLP of this width to each head (0: linear heads).")
@click.option("--unlock-last", "unlock", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also train the image tower's last N stages (slower: see the README).")
@click.option("--val-share", default=0.1, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Share of PAIRS' images held out for validation when --val is not given (0: none).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images of PAIRS (quick runs).")
@click.option("--skip-missing", is_flag=True, help="Leave out pairs whose image file is missing.")
@click.option("--seed", default=0, show_default=True, help="Seed of the validation split, initialisation and shuffling.")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Decoding processes [default: one per core].")
@click.option("--device", default=None, help="torch device, e.g. cpu or cuda:1 [default: CUDA when present].")
@click.option("--resume", is_flag=True, help="Continue the run saved in --out (up to --epochs).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary (with every epoch's figures) as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or epoch lines.")
def train_command(pairs, out, start, val, images, split, val_split, epochs, batch_size, lr, weight_decay, hidden,
                  unlock, val_share, limit, skip_missing, seed, workers, device, resume, force, as_json, quiet):
    """Train the aligner on your own image-caption pairs; the result is a --model file.

    Locked-image tuning (LiT): the starting aligner's towers stay frozen, their features
    are computed once and cached, and projection heads train over the cache with CLIP's
    contrastive loss and a learned temperature. Validation recall@k after each epoch;
    the best weights are kept. Ctrl-C leaves the last finished epoch's file: --resume
    continues it.

    PAIRS is anything `retrieval eval` reads: a pairs .csv/.tsv (columns image, caption),
    a Karpathy or COCO captions JSON, a folder of images with .txt captions, or a
    built-in set (easy-vqa, fashion-mnist; their train split by default).

    \b
    Example:
        retrieval train easy-vqa --out shapes.pt
        retrieval eval easy-vqa --model default --model shapes.pt
        retrieval index ~/shapes --model shapes.pt --index shapes
        retrieval train pairs.csv --out mine.pt --from open_clip:ViT-B-32/laion2b_s34b_b79k --epochs 10
    """
    from retrieval.evaluation.datasets import load_dataset
    from retrieval.training.train import TrainSettings, train

    data = load_dataset(pairs, images=images, split=split, skip_missing=skip_missing)
    if limit is not None:
        data = data.head(limit)
    val_data = None
    if val is not None:
        val_data = load_dataset(val, images=images, split=_val_split(val, val_split), skip_missing=skip_missing)
    settings = TrainSettings(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, hidden=hidden, unlock=unlock,
        val_share=val_share, seed=seed, workers=workers, device=device,
    )
    done = []

    def on_epoch(report) -> None:
        done.append(report.epoch)
        if not cli_quiet(quiet) and not as_json:
            click.echo(report.line() if report.epoch else "start:  " + report.line().split("  ", 1)[-1])

    try:
        result = train(
            data, out, start=start, val=val_data, settings=settings, resume=resume, force=force,
            progress=NullProgress() if cli_quiet(quiet) or as_json else BarWithLoss(), on_epoch=on_epoch,
        )
    except KeyboardInterrupt:
        if any(done):
            click.echo(f"\ninterrupted: {out} holds the best weights of epochs up to {max(done)}; "
                       "continue with the same command and --resume", err=True)
        elif resume:
            click.echo(f"\ninterrupted: {out} is unchanged", err=True)
        else:
            click.echo("\ninterrupted before the first epoch finished: nothing written", err=True)
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    click.echo(summary(result))


def summary(result) -> str:
    lines = []
    if result.best_metrics:
        def r1(m):
            return f"t2i R@1 {m['text_to_image']['R@1']:.3f}, i2t R@1 {m['image_to_text']['R@1']:.3f}"

        before = f" (start: {r1(result.before)})" if result.before else ""
        lines.append(f"best epoch {result.best_epoch}: val {r1(result.best_metrics)}{before}")
    lines.append(
        f"wrote {result.out} ({result.identity}) in {result.seconds:.1f}s "
        f"(features {result.feature_seconds:.1f}s, epochs {result.train_seconds:.1f}s; {result.train_pairs:,} training pairs)"
    )
    lines.append(f"use it: retrieval index FOLDER --model {result.out}")
    return "\n".join(lines)
