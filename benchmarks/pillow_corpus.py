"""Pillow's own test images, indexed from its source archive: every file accounted for, no false blanks.

Pillow's source archive carries Tests/images: about a thousand files in every format Pillow reads
and every kind of breakage its fuzzers found. This benchmark

1. takes that archive: --archive, else bench-out/pillow-sdist/pillow-VERSION.tar.gz for the
   installed Pillow, fetched there once with `pip download --no-binary :all: --no-deps`;
2. unpacks Tests/images into a temporary folder and runs `retrieval index FOLDER --json -q` on
   a fresh index in a child process (the `default` aligner, or --model), timing it and taking
   its peak memory (the main process's, as the kernel counts it, and the process tree's RSS
   sampled every 0.2 s);
3. accounts for every file of the folder: indexed (a row in the catalog), skipped (with its
   reason in the JSON) or ignored (counted by its extension in the JSON). Hidden files (a
   leading dot, or inside a hidden folder) are passed over by the walk without a count, by
   design, so they are counted apart. A file in none of these, or in two, is listed, and so
   is an extension whose ignored count differs from the files that carry it;
4. for every indexed file, compares the pixels our decoder gives (retrieval.media.decode) with
   a reference rendering: Pillow's open and load, then high-bit greyscale (I;16*, I, F) scaled
   from its lowest to its highest value, other modes converted to RGB, a transparent image
   laid on white and on black (the more varied counts; an alpha channel that is zero
   throughout left out, as browsers leave it out of a BMP). A file whose decoded pixels are (near)
   one colour (every channel's standard deviation below 1 of 255) while the reference's are
   not (above 5) is a false blank;
5. lists the ignored files that Pillow still opens when asked by content (formats that register
   no extension, or an unusual one): what an extension-based walk leaves out.

    python -m benchmarks.pillow_corpus                          # bench-out/pillow-corpus.json, .md
    python -m benchmarks.pillow_corpus --archive pillow-13.0.0.tar.gz --model default
    python -m benchmarks.pillow_corpus --quick                  # 60 of the files: proves it works
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import click
import numpy as np
import PIL
from PIL import Image

from benchmarks import harness
from benchmarks.bench_peak_memory import tree

CACHE = Path("bench-out/pillow-sdist")
#: Below this standard deviation (of 255) a channel is one flat colour; above SHOWS_PICTURE it shows something.
FLAT = 1.0
SHOWS_PICTURE = 5.0
OUTCOMES = ("indexed", "skipped", "ignored", "hidden")


# -- the archive ---------------------------------------------------------------------------
def cached_archive(version: str = PIL.__version__, cache: Path = CACHE) -> Path | None:
    """The source archive of Pillow `version` in `cache`, if it was fetched already."""
    for name in (f"pillow-{version}.tar.gz", f"Pillow-{version}.tar.gz"):
        if (cache / name).is_file():
            return cache / name
    return None


def fetch_archive(version: str = PIL.__version__, cache: Path = CACHE) -> Path:
    """The source archive of Pillow `version`, downloaded with pip into `cache` unless there already."""
    found = cached_archive(version, cache)
    if found is not None:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    harness.note(f"fetching Pillow {version}'s source archive with pip into {cache}")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                           f"pillow=={version}", "-d", str(cache)], capture_output=True, text=True)
    found = cached_archive(version, cache)
    if done.returncode or found is None:
        raise click.ClickException(f"pip download failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return found


def _corpus_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The archive's members under <top>/Tests/images/ (the folder itself left out), in name order."""
    out = []
    for member in tar.getmembers():
        parts = member.name.split("/")
        if len(parts) > 3 and parts[1:3] == ["Tests", "images"]:
            out.append(member)
    return sorted(out, key=lambda m: m.name)


def extract(archive: Path, dest: Path, limit: int | None = None) -> Path:
    """Unpack Tests/images from `archive` under `dest`; return that folder.

    With `limit`, only that many files, evenly spaced in name order (so that most formats stay
    represented), and the folders they need. Unpacked with tarfile's "data" filter: no member
    can land outside `dest` or keep special permissions.
    """
    with tarfile.open(archive) as tar:
        members = _corpus_members(tar)
        if not members:
            raise click.ClickException(f"{archive} holds no Tests/images folder: is it Pillow's source archive?")
        files = [m for m in members if not m.isdir()]
        if limit is not None and limit < len(files):
            step = len(files) / limit
            files = [files[int(i * step)] for i in range(limit)]
        tar.extractall(dest, members=files, filter="data")
        top = members[0].name.split("/")[0]
    root = dest / top / "Tests" / "images"
    root.mkdir(parents=True, exist_ok=True)
    return root


# -- the accounting ------------------------------------------------------------------------
def is_hidden(path: Path, root: Path) -> bool:
    """Whether the walk passes `path` over: its name, or a folder's between it and `root`, starts with a dot."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def corpus_files(root: Path) -> list[Path]:
    """Every file under `root` that is not a folder (links and special files included), resolved as the walk names them."""
    root = root.resolve()
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        out += [Path(dirpath) / name for name in sorted(filenames)]
    return out


@dataclass
class Accounting:
    """Where each file of the folder ended: one outcome each, or a problem listed."""

    outcome: dict[str, str] = field(default_factory=dict)  # path -> one of OUTCOMES
    reasons: dict[str, str] = field(default_factory=dict)  # skipped path -> its reason
    unaccounted: list[str] = field(default_factory=list)  # in no outcome
    twice: list[dict[str, Any]] = field(default_factory=list)  # in more than one
    #: Extensions whose ignored count in the summary differs from the files left for it.
    ignored_mismatch: list[dict[str, Any]] = field(default_factory=list)
    #: Paths the catalog or the summary name that are not files of the folder.
    strangers: list[str] = field(default_factory=list)
    skipped_without_reason: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        found = Counter(self.outcome.values())
        return {name: found.get(name, 0) for name in OUTCOMES}

    @property
    def clean(self) -> bool:
        return not (self.unaccounted or self.twice or self.ignored_mismatch or self.strangers
                    or self.skipped_without_reason)


def account(root: Path, summary: dict[str, Any], indexed: Iterable[str]) -> Accounting:
    """Match every file under `root` with the run's `summary` (its --json) and the catalog's `indexed` paths.

    A file that is neither indexed nor skipped nor hidden is ignored when the summary counts
    one more file of its extension than those already matched; files of an extension beyond
    that count are unaccounted, and a count beyond the files left is a mismatch too.
    """
    root = root.resolve()
    files = corpus_files(root)
    names = {str(p) for p in files}
    indexed = set(indexed)
    skipped = {item["path"]: item.get("reason") or "" for item in summary.get("skipped", [])}
    ignored_left = Counter(summary.get("ignored", {}))
    acc = Accounting()
    acc.strangers = sorted((indexed | set(skipped)) - names)
    leftover: dict[str, list[str]] = {}
    for path in files:
        key = str(path)
        found = [name for name, hit in (("indexed", key in indexed), ("skipped", key in skipped),
                                        ("hidden", is_hidden(path, root))) if hit]
        if len(found) > 1:
            acc.twice.append({"path": key, "outcomes": found})
        if found:
            acc.outcome[key] = found[0]
            if "skipped" in found:
                acc.reasons[key] = skipped[key]
                if not skipped[key].strip():
                    acc.skipped_without_reason.append(key)
            continue
        leftover.setdefault(path.suffix.lower(), []).append(key)
    for ext, paths in sorted(leftover.items()):
        counted = ignored_left.pop(ext, 0)
        for key in paths[:counted]:
            acc.outcome[key] = "ignored"
        acc.unaccounted += paths[counted:]
        if counted != len(paths):
            acc.ignored_mismatch.append({"extension": ext, "files": len(paths), "ignored_count": counted})
    for ext, counted in sorted(ignored_left.items()):
        if counted:  # counted as ignored, yet every file of that extension is accounted for otherwise
            acc.ignored_mismatch.append({"extension": ext, "files": 0, "ignored_count": counted})
    return acc


# -- no false blanks -----------------------------------------------------------------------
def channel_spread(pixels: np.ndarray) -> float:
    """The largest standard deviation of one channel of `pixels` (H x W or H x W x C), on a 0-255 scale."""
    values = pixels.astype(np.float64)
    if values.ndim == 2:
        values = values[..., None]
    flat = values.reshape(-1, values.shape[-1])
    return float(flat.std(axis=0).max()) if flat.size else 0.0


def reference_spread(image: Image.Image) -> float:
    """How much `image` (opened and loaded by Pillow) varies, rendered without our decoder's choices.

    High-bit greyscale is scaled from its lowest to its highest value (the most contrast any
    rendering can show); other modes are converted to RGB. An image with transparency is laid
    on white and on black, and the larger spread counts: a shape drawn in alpha alone shows
    on one of them at least. An alpha channel that is zero throughout is left out, as browsers
    leave it out of a BMP: a writer left it unset, and the colours are the picture.
    """
    if image.mode == "F" or image.mode.startswith("I"):
        values = np.asarray(image).astype(np.float64)
        values = values[np.isfinite(values)]
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        return channel_spread((values - lo) * (255.0 / (hi - lo))) if hi > lo else 0.0
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or image.has_transparency_data:
        rgba = image.convert("RGBA")
        if rgba.getchannel("A").getextrema()[1] == 0:
            return channel_spread(np.asarray(rgba.convert("RGB")))
        return max(channel_spread(np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, page), rgba).convert("RGB")))
                   for page in ((255, 255, 255, 255), (0, 0, 0, 255)))
    return channel_spread(np.asarray(image.convert("RGB")))


def blank_check(paths: Sequence[str]) -> dict[str, Any]:
    """Our decode against the reference for each of `paths`: the false blanks, and what could not be compared."""
    from retrieval.media.decode import decode, decoder_messages

    blanks, failed, both_flat = [], [], 0
    for path in paths:
        data = Path(path).read_bytes()
        try:
            with decoder_messages([]):  # libtiff's and Pillow's words: the index run has logged them
                ours, _ = decode(data)
                ours_spread = channel_spread(np.asarray(ours))
                with Image.open(path) as image:
                    image.load()
                    mode = image.mode
                    ref_spread = reference_spread(image)
        except Exception as exc:  # noqa: BLE001 - any failure is reported beside the file
            failed.append({"path": path, "error": f"{type(exc).__name__}: {exc}"})
            continue
        if ours_spread < FLAT and ref_spread > SHOWS_PICTURE:
            blanks.append({"path": path, "mode": mode, "ours_std": round(ours_spread, 2),
                           "reference_std": round(ref_spread, 2)})
        elif ours_spread < FLAT:
            both_flat += 1
    return {"compared": len(paths) - len(failed), "blanks": blanks, "failed": failed, "flat_in_both": both_flat}


def opened_by_content(paths: Iterable[str]) -> list[dict[str, str]]:
    """The `paths` Pillow opens and loads when asked by content, with their format and mode."""
    out = []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as image:
                    image.load()
                    out.append({"path": path, "format": image.format or "?", "mode": image.mode,
                                "size": "x".join(map(str, image.size))})
        except Exception:  # noqa: BLE001, S112 - not openable: what the walk's choice expects
            continue
    return out


# -- the run -------------------------------------------------------------------------------
def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration, ValueError):
        return 0.0


def index_folder(folder: Path, index: Path, model: str) -> dict[str, Any]:
    """`retrieval index FOLDER --index INDEX --model MODEL --json -q` in a child process: its JSON, time and memory."""
    cmd = [sys.executable, "-m", "retrieval", "index", str(folder), "--index", str(index), "--model", model, "--json", "-q"]
    tree_peak = 0.0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, harness.measure("index") as run:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        while True:
            # wait4 rather than poll(): it also returns the finished process's resource usage.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            tree_peak = max(tree_peak, sum(_rss_mib(p) for p in tree(proc.pid)))
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
    if proc.returncode:
        raise click.ClickException(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    try:
        summary = json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"stdout is not JSON ({exc}):\n{stdout[:2000]}") from None
    return {"summary": summary, "command": cmd, "stderr_lines": len(stderr.splitlines()),
            "stderr_tail": stderr[-1000:], "main_peak_mib": round(usage.ru_maxrss / 1024),
            "tree_rss_peak_mib": round(tree_peak), **run.as_dict()}


def catalog_paths(index: Path) -> list[str]:
    """The paths of the images the index holds."""
    from retrieval.storage.store import IndexStore

    store = IndexStore.open(index)
    try:
        return [row[0] for row in store.catalog.db.execute("SELECT path FROM images ORDER BY path")]
    finally:
        store.close()


def by_extension(acc: Accounting) -> list[dict[str, Any]]:
    """Rows of outcome counts per extension, most files first."""
    counts: dict[str, Counter[str]] = {}
    for path, outcome in acc.outcome.items():
        counts.setdefault(Path(path).suffix.lower() or "(none)", Counter())[outcome] += 1
    for path in acc.unaccounted:
        counts.setdefault(Path(path).suffix.lower() or "(none)", Counter())["unaccounted"] += 1
    rows = [{"extension": ext, "files": sum(c.values()), **{name: c.get(name, 0) for name in OUTCOMES[:3]},
             "unaccounted": c.get("unaccounted", 0)} for ext, c in counts.items()]
    return sorted(rows, key=lambda r: (-r["files"], r["extension"]))


def skip_kinds(reasons: dict[str, str]) -> list[dict[str, Any]]:
    """Skip reasons grouped by their kind (the words before the first colon or parenthesis)."""
    kinds = Counter(reason.split(":")[0].split(" (")[0].strip() for reason in reasons.values())
    return [{"reason": kind, "files": n} for kind, n in kinds.most_common()]


def markdown(res: dict[str, Any]) -> str:
    run, acc = res["index"], res["accounting"]
    lines = [
        f"Pillow {res['pillow']}'s Tests/images ({res['files']} files), {res['date']}, {res['machine']}, "
        f"load average {run['load_before']} before, {run['load_after']} after; model `{res['model']}`",
        f"`retrieval index` took {run['wall_s']:.0f} s; peak memory {run['main_peak_mib']:,} MiB in the main "
        f"process (kernel), {run['tree_rss_peak_mib']:,} MiB RSS summed over the process tree (sampled); "
        f"{run['stderr_lines']} lines on stderr. {res['blanks']['compared']} indexed files compared with Pillow's "
        f"rendering; {res['blanks']['flat_in_both']} of them are one flat colour in both (Pillow's solid-colour test images).",
        harness.table([{"outcome": k, "files": v} for k, v in acc["counts"].items()]
                      + [{"outcome": "unaccounted", "files": len(acc["unaccounted"])},
                         {"outcome": "in two outcomes", "files": len(acc["twice"])},
                         {"outcome": "ignored counts that differ", "files": len(acc["ignored_mismatch"])},
                         {"outcome": "false blanks", "files": len(res["blanks"]["blanks"])}]),
        "Skip reasons:",
        harness.table(acc["skip_kinds"]),
    ]
    if res["blanks"]["blanks"]:
        lines += ["False blanks (our decode flat, the reference not):", harness.table(res["blanks"]["blanks"])]
    if res["blanks"]["failed"]:
        lines += ["Indexed files the comparison could not decode:", harness.table(res["blanks"]["failed"])]
    if res["ignored_but_opens"]:
        lines += ["Ignored files Pillow opens by content:", harness.table(res["ignored_but_opens"])]
    lines.append("By extension:")
    return "\n\n".join(lines)


@harness.command(out="bench-out/pillow-corpus.json", quick={"limit": 60})
@click.option("--archive", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help=f"Pillow's source archive [default: {CACHE}/pillow-VERSION.tar.gz, fetched with pip if missing].")
@click.option("--model", default="default", show_default=True, help="The aligner spec `retrieval index` gets.")
@click.option("--limit", type=int, default=None, help="Index only this many of the files, evenly spaced [default: all].")
def main(archive: Path | None, model: str, limit: int | None, out: Path) -> None:
    archive = archive or fetch_archive()
    res: dict[str, Any] = {"date": str(date.today()), "machine": harness.summary(), "host": harness.machine(),
                           "pillow": PIL.__version__, "archive": archive.name, "model": model, "limit": limit}
    with tempfile.TemporaryDirectory() as tmp:
        root = extract(archive, Path(tmp) / "src", limit).resolve()
        res["files"] = len(corpus_files(root))
        harness.note(f"indexing {res['files']} files of {root} with {model}")
        res["index"] = index_folder(root, Path(tmp) / "idx", model)
        summary = res["index"]["summary"]
        indexed = catalog_paths(Path(tmp) / "idx")
        acc = account(root, summary, indexed)
        harness.note("comparing our decode with Pillow's for each indexed file")
        res["blanks"] = blank_check(indexed)
        res["ignored_but_opens"] = opened_by_content(p for p, o in acc.outcome.items() if o == "ignored")
        strip = len(str(root)) + 1  # paths in the report relative to Tests/images
        res["accounting"] = {
            "counts": acc.counts(), "unaccounted": [p[strip:] for p in acc.unaccounted], "twice": acc.twice,
            "ignored_mismatch": acc.ignored_mismatch, "strangers": acc.strangers,
            "skipped_without_reason": acc.skipped_without_reason,
            "skip_kinds": skip_kinds(acc.reasons), "skipped": {p[strip:]: r for p, r in acc.reasons.items()},
        }
        for item in res["blanks"]["blanks"] + res["blanks"]["failed"] + res["ignored_but_opens"]:
            item["path"] = item["path"][strip:]
        res["by_extension"] = by_extension(acc)
        summary["skipped"] = len(summary.get("skipped", []))  # listed with their reasons above
    harness.report("pillow-corpus", res, res["by_extension"], out, markdown(res))
    if not acc.clean or res["blanks"]["blanks"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
