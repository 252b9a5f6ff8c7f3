"""Checking an index folder and copying it safely: ``retrieval check`` and ``retrieval backup``.

:func:`check` reads without writing anything: SQLite's own ``PRAGMA integrity_check`` on the
catalog, then the current generation's FAISS files against the catalog (the checksum
published with them, the number of vectors and the exact set of ids).

:func:`backup` copies a live index: the catalog through SQLite's online backup API (one
step, so the copy is one committed state even while a run writes) and the FAISS files of
the generation that copy refers to. The files are opened before the catalog is copied, so a
run that prunes them meanwhile cannot take them away; if a run published in between, the
generations differ and the copy is taken again.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import IndexNotFound, RetrievalError
from retrieval.storage import frames, integrity
from retrieval.storage.catalog import CATALOG_FILE
from retrieval.storage.store import busy_line, lock_holder

log = logging.getLogger(__name__)


@dataclass
class Report:
    folder: Path
    findings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"index": str(self.folder), "ok": self.ok, "findings": self.findings, "problems": self.problems}


def _connect(path: Path) -> sqlite3.Connection:
    from retrieval.storage.readonly import connect_readonly

    if not os.access(path.parent, os.W_OK):
        return connect_readonly(path)
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30, isolation_level=None)


def check(folder: Path) -> Report:
    """Everything that can be checked without changing anything; never raises for damage it finds."""
    folder = Path(folder)
    db_path = folder / CATALOG_FILE
    if not db_path.is_file():
        raise IndexNotFound(f"no index at {folder} (no {CATALOG_FILE})")
    report = Report(folder)
    who = lock_holder(folder)
    if who is not None:
        # Not a problem: a check reads the published generation, which a writer never changes.
        report.findings.append(f"{busy_line(who, folder)}: this check covers the generation published before it")
    conn = _connect(db_path)
    try:
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
        except sqlite3.DatabaseError as exc:
            report.problems.append(f"{db_path}: {exc}")
            return report
        if rows == ["ok"]:
            report.findings.append(f"{db_path}: SQLite integrity check ok")
        else:
            report.problems += [f"{db_path}: {row}" for row in rows]
            return report
        try:
            _check_catalog(conn, report)
            _check_faces(conn, report)
            _check_faiss(conn, folder, report)
        except sqlite3.DatabaseError as exc:
            report.problems.append(f"{db_path}: {exc}")
    finally:
        conn.close()
    return report


def _meta(conn: sqlite3.Connection, key: str, default=None):
    import json

    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else json.loads(row[0])


def _check_catalog(conn: sqlite3.Connection, report: Report) -> None:
    images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    orphans = conn.execute("SELECT count(*) FROM images WHERE hash NOT IN (SELECT hash FROM vectors)").fetchone()[0]
    report.findings.append(f"catalog: {images} images, generation {_meta(conn, 'generation', 0)}")
    if orphans:
        report.problems.append(f"catalog: {orphans} images have no stored vector")
    next_id = _meta(conn, "next_id", 1)
    top = conn.execute("SELECT max(id) FROM images").fetchone()[0] or 0
    if top >= next_id:
        report.problems.append(f"catalog: image id {top} is not below next_id {next_id}")


def _check_faces(conn: sqlite3.Connection, report: Report) -> None:
    """The faces tables (schema 5, docs/people.md): descriptors whole, people and scans consistent."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'faces'").fetchone() is None:
        return
    faces, people = (conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("faces", "people"))
    scanned = conn.execute("SELECT count(*) FROM face_scans").fetchone()[0]
    report.findings.append(f"faces: {faces} faces in {scanned} scanned contents, {people} people")
    bad = conn.execute("SELECT count(*) FROM faces WHERE length(embedding) != 512").fetchone()[0]
    if bad:
        report.problems.append(f"faces: {bad} face descriptors are not 128 floats; `retrieval people forget` "
                               "then `retrieval people scan` finds them again")
    lost = conn.execute("SELECT count(*) FROM faces WHERE person_id IS NOT NULL "
                        "AND person_id NOT IN (SELECT id FROM people)").fetchone()[0]
    if lost:
        report.problems.append(f"faces: {lost} faces belong to people that do not exist; "
                               "`retrieval people regroup` gives them people again")
    unscanned = conn.execute("SELECT count(DISTINCT hash) FROM faces WHERE hash NOT IN (SELECT hash FROM face_scans)").fetchone()[0]
    if unscanned:
        report.problems.append(f"faces: {unscanned} contents have faces but no scan record; "
                               "`retrieval people forget` then `retrieval people scan` rebuilds them")


def _check_faiss(conn: sqlite3.Connection, folder: Path, report: Report) -> None:
    from retrieval import ann

    gen = int(_meta(conn, "generation", 0))
    if gen == 0:
        report.findings.append("no generation published yet: no FAISS files to check")
        return
    for kind, table in (("images", "images"), ("captions", "captions")):
        path = folder / f"{kind}-{gen}.faiss"
        rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        if kind == "captions" and not rows and not path.exists():
            continue
        what = integrity.problem(conn, path, full=True)
        lists = path.with_suffix(".ivfdata")  # an on-disk index's inverted lists (retrieval.ann.ondisk)
        if not what and kind == "images" and integrity.lookup(conn, lists.name) is not None:
            what = integrity.problem(conn, lists, full=True)
            path = lists if what else path
            if not what:
                report.findings.append(f"{lists.name}: size and checksum match the catalog")
        if what:
            report.problems.append(f"{path} {what}; `retrieval index --index {folder}` rebuilds it")
            continue
        try:
            index = ann.read(path, mmap=True)
        except RuntimeError:
            report.problems.append(f"{path} cannot be read by FAISS; `retrieval index --index {folder}` rebuilds it")
            continue
        ids = ann.ids_of(index)
        catalog_ids = {r[0] for r in conn.execute(f"SELECT id FROM {table}")}
        if kind == "images" and _meta(conn, "schema_version", 1) >= 4:  # videos' later frames (storage/frames.py)
            catalog_ids |= {i + n * frames.FRAME_STEP for i, count in frames.videos(conn).items() for n in range(1, count)}
        stored = set(ids.tolist())
        if len(ids) != len(stored):
            report.problems.append(f"{path}: {len(ids) - len(stored)} ids stored twice")
        if stored != catalog_ids:
            report.problems.append(
                f"{path}: ids differ from the catalog ({len(stored - catalog_ids)} unknown, "
                f"{len(catalog_ids - stored)} missing); `retrieval index --index {folder}` rebuilds it"
            )
        else:
            report.findings.append(f"{path.name}: {len(ids)} vectors, ids and checksum match the catalog")


def backup(folder: Path, out: Path, attempts: int = 5) -> dict:
    """Copy the index at `folder` to the new folder `out`, consistently, while it is in use.

    `out` is itself an index folder: search it with ``--index out``, or restore by putting
    it in place of the original.
    """
    folder, out = Path(folder), Path(out)
    src_path = folder / CATALOG_FILE
    if not src_path.is_file():
        raise IndexNotFound(f"no index at {folder} (no {CATALOG_FILE})")
    if out.exists() and any(out.iterdir()):
        raise RetrievalError(f"{out} exists and is not empty: give a new folder for the backup")
    out.mkdir(parents=True, exist_ok=True)
    src = _connect(src_path)
    try:
        for _ in range(attempts):
            gen = int(_meta(src, "generation", 0))
            handles = _open_generation(folder, gen)
            try:
                dest = sqlite3.connect(str(out / CATALOG_FILE))
                try:
                    src.backup(dest)  # pages=-1: one step, one committed state
                    copied = int(_meta(dest, "generation", 0))
                finally:
                    dest.close()
                if copied != gen:
                    log.info("a run published generation %d during the backup; copying again", copied)
                    continue
                for name, fh in handles.items():
                    with open(out / name, "wb") as target:
                        shutil.copyfileobj(fh, target, 4 * 2**20)
                        target.flush()
                        os.fsync(target.fileno())
                    # The same mtime as the published file: opening the copy needs no full checksum.
                    stat = os.fstat(fh.fileno())
                    os.utime(out / name, ns=(stat.st_atime_ns, stat.st_mtime_ns))
                return {"index": str(folder), "backup": str(out), "generation": gen, "files": sorted([CATALOG_FILE, *handles])}
            finally:
                for fh in handles.values():
                    fh.close()
    finally:
        src.close()
    who = lock_holder(folder)
    busy = f" ({busy_line(who, folder)})" if who is not None else ""
    raise RetrievalError(f"{folder} kept changing during {attempts} backup attempts{busy}; try again when indexing is done")


def _open_generation(folder: Path, gen: int) -> dict:
    handles = {}
    # An index too large for memory keeps its inverted lists beside the .faiss file (retrieval.ann.ondisk).
    for name in (f"{kind}-{gen}{suffix}" for kind in ("images", "captions") for suffix in (".faiss", ".ivfdata")):
        try:
            handles[name] = open(folder / name, "rb")
        except FileNotFoundError:
            continue
    return handles
