"""Resolve the hand-captioned dev set of real photos to a pairs CSV (image,caption).

The sets and the lookup live in ``retrieval.evaluation.devset`` (docs/photo-sources.md lists
the photos' sources and licences). This writes `image,caption` rows with absolute paths (two
rows per photo for v2) that ``retrieval eval`` reads; photos it cannot find are reported with
the command that installs their package.

    python -m benchmarks.devset --out devset_pairs.csv
    python -m benchmarks.devset --set v2 --split test --out devset_test.csv
    python -m benchmarks.devset --out devset_pairs.csv --pip-root /tmp/wheels-unpacked

`--pip-root` adds folders where `pip:` paths are looked up besides this Python's
site-packages and `.venv/share/devset-pip` (where `bash scripts/setup.sh --devset` unpacks
them; or an unpacked wheel, or `pip install --no-deps --target DIR imgaug`).
"""

from __future__ import annotations

from pathlib import Path

import click

from benchmarks import harness
from retrieval.errors import DatasetError
from retrieval.evaluation import devset

PIP_ROOT = click.option("--pip-root", multiple=True, help="Extra folder to look up pip: paths in (repeatable).")


def report_missing(missing: dict[str, list[str]], what: str = "") -> None:
    """One line per source package whose photos are missing (`what`: "tune photos"), with its install command."""
    for source, paths in missing.items():
        harness.note(f"missing {len(paths)} {what or 'photos'} from {source}: {devset.install_command(source)}")


@harness.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("devset_pairs.csv"),
              show_default=True, help="Pairs CSV to write (image,caption).")
@PIP_ROOT
@click.option("--set", "which", type=click.Choice(sorted(devset.SETS)), default="v1", show_default=True,
              help="v1: 111 photos x 1 caption; v2: two captions each, split into halves.")
@click.option("--split", type=click.Choice(["all", "tune", "test"]), default="all", show_default=True,
              help="v2 only: which half.")
def main(out: Path, pip_root: tuple[str, ...], which: str, split: str) -> None:
    try:
        pairs, missing = devset.load_pairs(pip_root, devset.SETS[which], split)
    except DatasetError as exc:
        raise click.UsageError(str(exc)) from None
    devset.write_pairs(out, pairs)
    photos = len({image for image, _ in pairs})
    click.echo(f"{photos} photos ({len(pairs)} captions) written to {out}")
    report_missing(missing)


if __name__ == "__main__":
    main()
