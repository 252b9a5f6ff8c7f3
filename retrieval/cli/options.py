"""What several commands share: help texts for --index and --model, the size type, the progress bar."""

from __future__ import annotations

import click

from retrieval.cli.app import quiet
from retrieval.progress import NullProgress, Progress, TqdmProgress

MODEL_HELP = "Aligner spec: default, open_clip:ARCH/TAG, open_clip:ARCH/PATH, or a trained checkpoint."
INDEX_HELP = "Index name (under ./indexes or $RETRIEVAL_HOME) or path."


class ByteSize(click.ParamType):
    """A size such as 4G, 512M, 1.5GB or a plain number of bytes."""

    name = "size"
    _UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
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


def progress(enabled: bool) -> Progress:
    """A progress bar on stderr, or none when `enabled` is False or the run is quiet.

    --json does not turn it off: stdout carries the JSON, and tqdm draws only when stderr is
    a terminal, so a pipe or a file never receives a bar.
    """
    return TqdmProgress() if enabled and not quiet() else NullProgress()
