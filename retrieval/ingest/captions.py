"""Reading caption corpora: plain text (one caption a line) or CSV/TSV with a ``caption`` column."""

from __future__ import annotations

import csv
from pathlib import Path

from retrieval.errors import DatasetError


def read_captions(path: str | Path) -> list[str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"caption file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if path.suffix.lower() in {".csv", ".tsv"}:
        return _table_captions(path, text)
    captions = [line.strip() for line in text.splitlines() if line.strip()]
    if not captions:
        raise DatasetError(f"{path}: no captions found")
    return captions


def _table_captions(path: Path, text: str) -> list[str]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    if not reader.fieldnames or "caption" not in reader.fieldnames:
        raise DatasetError(f"{path}: needs a 'caption' column (found: {', '.join(reader.fieldnames or [])})")
    captions = []
    for line_no, row in enumerate(reader, start=2):
        value = (row.get("caption") or "").strip()
        if not value:
            raise DatasetError(f"{path}, line {line_no}: empty caption")
        captions.append(value)
    if not captions:
        raise DatasetError(f"{path}: no captions found")
    return captions
