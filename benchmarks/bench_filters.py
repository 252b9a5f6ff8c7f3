"""Filtered queries against unfiltered ones, whole (text encoding included) and search alone.

For each size (100,000 and 1,000,000 vectors), a real index folder is filled through the
engine's code (the harness's clustered vectors, catalog rows and FAISS file),
then every image gets synthetic photo metadata: a taken date spread evenly over ten years
and a camera model whose text holds tokens passing 0.1%, 1%, 10% and 50% of the images.
Metadata is independent of the vectors, so the nearest passing images are as far out as
they can be for that share.

Measured in one run, over `--queries` distinct query texts:
- the WHOLE query as `retrieval.api.Index.search` runs it for a text (the `default` aligner
  encodes the text, its cache of recent texts turned off; then filter, search, catalog rows),
  unfiltered and with date and camera filters passing 0.1%, 1%, 10% and 50%;
- the search alone (`query.search_vectors` on the same text's vector), the same configurations;
- p50 / p99 of each, and the ratios filtered / unfiltered of both; configurations are timed
  round-robin, query by query, so a change of the machine's load hits all of them alike;
- recall@10 against an exact filtered search (all passing vectors scored by brute force), for
  the text queries and for queries near the data (perturbed stored vectors);
- the one-time cost of a generation's first filtered query (the columns read into memory);
- for the thresholds: each path forced at each share of a date filter, with the SQL-evaluated
  filter (the code before the columns) beside them.

    .venv/bin/python -m benchmarks.bench_filters [--sizes 100000 --sizes 1000000] [--queries 100] [--out bench-out/filters.json]

`--work DIR` keeps the filled index folders there and reuses them on the next run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import click
import numpy as np

from benchmarks import harness
from benchmarks.harness import DIM, clustered, command, fill_catalog, load, machine, note, percentiles
from retrieval import ann
from retrieval.api import open_index
from retrieval.search import filters as filtered
from retrieval.search.filters import Filters, FilterTuning
from retrieval.search.query import search_vectors
from retrieval.search.searcher import Searcher
from retrieval.search.settings import SearchSettings
from retrieval.storage.store import IndexStore

SHARES = [0.001, 0.01, 0.1, 0.5]
START = datetime(2015, 1, 1)
SPAN_DAYS = 3650


def add_metadata(store: IndexStore, n: int, seed: int) -> None:
    """Synthetic photo metadata on every row: an even spread of dates, and camera tokens by share."""
    rng = np.random.default_rng(seed)
    when = rng.random(n)
    cam = rng.random(n)
    rows = []
    for i in range(n):
        taken = (START + timedelta(days=SPAN_DAYS * float(when[i]))).strftime("%Y-%m-%dT%H:%M:%S")
        tokens = [f"p{share:g}" for share in SHARES if cam[i] < share]
        rows.append((taken, " ".join(tokens) or "other", i + 1))
    with store.catalog.transaction() as conn:
        conn.executemany(
            "UPDATE images SET taken = ?, taken_source = 'exif', camera_make = 'Bench', camera_model = ? WHERE id = ?",
            rows,
        )
    store.catalog.refresh_cameras()  # what publishing does after an index run
    store.catalog.db.execute("ANALYZE")


def date_filter(share: float) -> Filters:
    """Taken after the date that leaves `share` of the span."""
    cut = START + timedelta(days=SPAN_DAYS * (1 - share))
    return Filters.parse(after=cut.strftime("%Y-%m-%dT%H:%M:%S"))


def camera_filter(share: float) -> Filters:
    return Filters.parse(camera=f"p{share:g}")


SUBJECTS = ["a dog", "a red car", "a beach at sunset", "two children", "a mountain lake", "a birthday cake",
            "an old church", "a cat on a sofa", "a city street at night", "a bowl of soup"]
PLACES = ["in the snow", "in a garden", "by the sea", "in a kitchen", "at a market", "in the rain", "on a bridge",
          "in a forest", "at a party", "in a museum"]


def query_texts(count: int) -> list[str]:
    """Distinct texts of similar length (the encoder's cost grows with it)."""
    texts = [f"{s} {p}" for s in SUBJECTS for p in PLACES]
    return [t if i < len(texts) else f"{t}, photo {i // len(texts)}" for i, t in enumerate(texts * (count // len(texts) + 1))][:count]


def configurations() -> dict[str, Filters | None]:
    out: dict[str, Filters | None] = {"unfiltered": None}
    for share in SHARES:
        out[f"date {share:g}"] = date_filter(share)
        out[f"camera {share:g}"] = camera_filter(share)
    return out


def exact_filtered(store: IndexStore, data: np.ndarray, queries: np.ndarray, filters: Filters | None, k: int = 10) -> list[list[int]]:
    """The true top k among the passing images, for each query (brute force over their vectors)."""
    if filters is None:
        ids = np.arange(1, len(data) + 1)
    else:
        sql, args = filtered.where(filters.clauses(store.catalog))
        ids = np.fromiter((r[0] for r in store.catalog.db.execute(f"SELECT id FROM images WHERE {sql}", args)), np.int64)
    scores = data[ids - 1] @ queries.T
    top = np.argsort(-scores, axis=0, kind="stable")[:k]
    return [ids[top[:, j]].tolist() for j in range(len(queries))]


def recall(truth: list[list[int]], got: list[list[int]]) -> float:
    hits = sum(len(set(t) & set(g)) for t, g in zip(truth, got))
    return round(hits / max(sum(len(t) for t in truth), 1), 4)


def summary(ms: list[float]) -> dict:
    return {k: round(v, 2) for k, v in percentiles(ms).items()}


def round_robin(idx, texts: list[str], vectors: np.ndarray, configs: dict) -> tuple[dict, dict, dict]:
    """Whole-query and search-alone times of every configuration, query by query; and the ids found."""
    whole = {name: [] for name in configs}
    alone = {name: [] for name in configs}
    found = {name: [] for name in configs}
    loads = []
    for text, vector in zip(texts, vectors):
        for name, f in configs.items():
            t = time.perf_counter()
            idx.search(text, k=10, filters=f)
            whole[name].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            hits = search_vectors(idx.store, vector[None], 10, filters=f, searcher=idx.searcher)[0]
            alone[name].append((time.perf_counter() - t) * 1000)
            found[name].append([h.id for h in hits])
        loads.append(load())
    return whole, alone, {"found": found, "load": (min(loads), max(loads))}


def forced(
    store: IndexStore, searcher: Searcher, queries: np.ndarray, filters: Filters, tuning: FilterTuning
) -> tuple[float, list[list[int]], str]:
    """p50 ms of the filtered search alone (filter, ranking; the loaded index) with a forced path,
    the ids found, and the path the last query took."""
    catalog = store.catalog
    times, found, chosen = [], [], ""
    for q in queries:
        t = time.perf_counter()
        with catalog.snapshot():
            index = searcher.faiss_for(store, "images", store.faiss_path("images", catalog.generation))
            quick = searcher.quick_scan(store, "images", index)  # as query.search_vectors passes it
            result = filtered.search(
                catalog, index, q[None], 10, filters, factory=catalog.get_meta("index_factory"), tuning=tuning,
                quick=quick, searcher=searcher,
            )
        times.append(time.perf_counter() - t)
        found.append([int(i) for i in result.ids[0] if i >= 0])
        chosen = result.chosen
    return round(float(np.median(np.array(times) * 1000)), 2), found, chosen


def build(n: int, centers: np.ndarray, folder: Path) -> tuple[IndexStore, np.ndarray, dict]:
    data = clustered(n, DIM, seed=n, centers=centers)
    if (folder / "catalog.db").exists():
        return IndexStore.open(folder), data, {"reused": str(folder)}
    started = time.perf_counter()
    factory = ann.factory_for(n)
    index, info = ann.build(np.arange(1, n + 1, dtype=np.int64), data, factory=factory)
    store = fill_catalog(folder, data, index)
    store.catalog.set_meta(index_nprobe=info.nprobe, index_recall_at_10=info.recall_at_10)
    del index
    add_metadata(store, n, seed=n + 1)
    return store, data, {"setup_s": round(time.perf_counter() - started, 1)}


def bench_size(n: int, centers: np.ndarray, work: Path, n_queries: int) -> dict:
    store, data, row = build(n, centers, work / f"idx-{n}")
    folder = store.folder
    store.close()
    row.update({"n": n, "index": ann.factory_for(n)})
    configs = configurations()
    idx = open_index(str(folder), settings=SearchSettings(text_cache_size=0))  # every query encodes its text
    row["nprobe"] = idx.store.catalog.get_meta("index_nprobe")
    texts = query_texts(n_queries)
    vectors = np.concatenate([idx.encode_texts([t]) for t in texts])
    idx.search("warm up", k=10)
    # A generation's first filtered query runs in SQL and starts reading the columns behind it.
    t = time.perf_counter()
    search_vectors(idx.store, vectors[:1], 10, filters=configs["date 0.01"], searcher=idx.searcher)
    row["first_filtered_search_ms"] = round((time.perf_counter() - t) * 1000, 1)
    catalog = idx.store.catalog
    while True:
        with catalog.snapshot():
            columns = idx.searcher.columns_for(catalog)
        if columns is not None:
            break
        time.sleep(0.01)
    row["columns_read_s"], row["columns_mb"] = round(time.perf_counter() - t, 2), round(columns.nbytes / 1e6, 1)
    # An exact path's first use over an inverted file builds its id-to-list table.
    t = time.perf_counter()
    search_vectors(idx.store, vectors[:1], 10, filters=configs["date 0.001"], searcher=idx.searcher)
    row["first_exact_path_ms"] = round((time.perf_counter() - t) * 1000, 1)
    for f in configs.values():  # warm every path once
        idx.search(texts[0], k=10, filters=f)
    whole, alone, extra = round_robin(idx, texts, vectors, configs)
    row["load_1min_during"] = extra["load"]
    near = clustered(n_queries, DIM, seed=7, centers=centers)
    rows = []
    base_whole, base_alone = summary(whole["unfiltered"]), summary(alone["unfiltered"])
    for name, f in configs.items():
        chosen = forced(idx.store, idx.searcher, vectors[:1], f, FilterTuning())[2] if f is not None else ""
        near_found = [
            [h.id for h in search_vectors(idx.store, q[None], 10, filters=f, searcher=idx.searcher)[0]] for q in near
        ]
        entry = {
            "config": name, "path": chosen or "unfiltered",
            "whole_ms": summary(whole[name]), "search_ms": summary(alone[name]),
            "whole_x_unfiltered_p50": round(summary(whole[name])["p50"] / base_whole["p50"], 2),
            "search_x_unfiltered_p50": round(summary(alone[name])["p50"] / base_alone["p50"], 2),
            "recall_at_10_text": recall(exact_filtered(idx.store, data, vectors, f), extra["found"][name]),
            "recall_at_10_near": recall(exact_filtered(idx.store, data, near, f), near_found),
        }
        rows.append(entry)
        note(json.dumps(entry))
    row["queries"] = rows
    row["paths"] = forced_paths(idx.store, idx.searcher, data, n, near[: max(10, n_queries // 5)])
    idx.close()
    return row


def forced_paths(store: IndexStore, searcher: Searcher, data: np.ndarray, n: int, few: np.ndarray) -> list[dict]:
    """Each path forced at each share of a date filter (the thresholds), p50 ms and recall@10."""
    out = []
    for share in [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5]:
        f = date_filter(share)
        truth = exact_filtered(store, data, few, f)
        entry = {"share": share, "passing": int(share * n)}
        tunings = {
            "mask_exact": FilterTuning(mask_exact_max=n, wait_for_columns=True),
            "mask_restrict": FilterTuning(mask_exact_max=0, mask_overfetch_share=2.0, wait_for_columns=True),
            "mask_overfetch": FilterTuning(
                mask_exact_max=0, mask_overfetch_share=0.0, mask_overfetch_share_ivf=0.0, wait_for_columns=True
            ),
            "sql_default": FilterTuning(columns=False),
        }
        for name, tuning in tunings.items():
            if name == "mask_exact" and share * n > 100_000:
                continue  # a gather of that many vectors is far slower than the restricted search
            ms, got, chosen = forced(store, searcher, few, f, tuning)
            entry[f"{name}_ms_p50"], entry[f"{name}_recall"] = ms, recall(truth, got)
            if name == "sql_default":
                entry["sql_default_path"] = chosen
        entry["load_1min"] = load()
        out.append(entry)
        note(json.dumps(entry))
    return out


@command(out="bench-out/filters.json", quick={"sizes": (5_000,), "queries": 10})
@click.option("--sizes", type=int, multiple=True, default=(100_000, 1_000_000), show_default=True,
              help="Vectors in each index measured (repeatable).")
@click.option("--queries", type=int, default=100, show_default=True, help="Distinct query texts.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the filled index folders here and reuse them.")
def main(sizes: tuple[int, ...], queries: int, work: Path | None, out: Path) -> None:
    report = {
        "date": date.today().isoformat(), "machine": harness.summary(),
        "load_average_1min_start": load(), "sizes": [], "host": machine(),
    }
    points = harness.centers()  # the same centres as bench_search
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        folder = work or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for n in sizes:
            report["sizes"].append(bench_size(n, points, folder, queries))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2))
    report["load_average_1min_end"] = load()
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
