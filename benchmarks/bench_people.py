"""A search by person with text (`search "..." --person X`) at 100,000 photos, against the library
filters (date, camera) and no filter, in one run.

The index folder is bench_filters' (the harness's clustered vectors, catalog rows, FAISS file,
synthetic dates and cameras), plus people: faces rows keyed by the images' content hashes, as
the indexer writes them, for people in 0.1%, 1% and 10% of the photos (a person in a family
library is in a few percent of it at most), and a second person in 1% whose photos overlap the
first 1% person's in half of them. Which photos show a person is independent of the vectors, so
the nearest passing photos are as far out as they can be for that share.

Measured, round-robin query by query over `--queries` distinct texts (the `default` aligner
encodes each, its cache off): the whole query as `Index.search` runs it, and the search alone
(`query.search_vectors` on the text's vector), p50 / p99, the ratio to unfiltered, and
recall@10 against the exact filtered top 10 (every passing vector scored by brute force).

    .venv/bin/python -m benchmarks.bench_people [--size 100000] [--queries 40] [--work DIR]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from benchmarks import bench_filters as bf
from benchmarks.harness import centers, command, load, machine, note, report
from retrieval.api import open_index
from retrieval.search.filters import Filters, FilterTuning
from retrieval.search.query import search_vectors
from retrieval.search.settings import SearchSettings
from retrieval.storage.catalog import to_blob
from retrieval.storage.store import IndexStore

PEOPLE = {"p0.001": 0.001, "p0.01": 0.01, "p0.1": 0.1, "q0.01": 0.01}


def add_people(store: IndexStore, n: int, seed: int) -> dict[str, int]:
    """People rows and one face per photo each person is in; returns the photos of each person."""
    rng = np.random.default_rng(seed)
    draw = rng.random(n)
    second = rng.random(n)
    embedding = to_blob(np.zeros(128, np.float32))  # the search never reads it
    counts = {}
    with store.catalog.transaction() as conn:
        for person_id, (name, share) in enumerate(PEOPLE.items(), start=1):
            conn.execute("INSERT INTO people (id, name, hidden) VALUES (?, ?, 0)", (person_id, name))
            if name == "q0.01":  # half of its photos are p0.01's, half elsewhere
                shown = np.flatnonzero((draw < 0.01) & (second < 0.5) | (draw >= 0.5) & (draw < 0.505))
            else:
                shown = np.flatnonzero(draw < share)
            counts[name] = len(shown)
            conn.executemany(
                "INSERT INTO faces (hash, x, y, w, h, score, embedding, person_id) VALUES (?, 10, 10, 80, 80, 1.0, ?, ?)",
                ((f"h{i}", embedding, person_id) for i in shown.tolist()),
            )
    store.catalog.db.execute("ANALYZE")
    return counts


def configurations() -> dict[str, Filters | None]:
    out: dict[str, Filters | None] = {"unfiltered": None}
    for share in (0.001, 0.01, 0.1):
        out[f"date {share:g}"] = bf.date_filter(share)
        out[f"camera {share:g}"] = bf.camera_filter(share)
        out[f"person {share:g}"] = Filters.parse(people=f"p{share:g}")
    out["person 0.01 and person 0.01 (both in 0.5%)"] = Filters.parse(people=["p0.01", "q0.01"])
    out["person 0.1 + date 0.1"] = Filters.parse(people="p0.1", after=bf.date_filter(0.1).after)
    return out


@command(out="bench-out/people.json", quick={"size": 20_000, "queries": 5})
@click.option("--size", default=100_000, show_default=True, help="Photos in the index.")
@click.option("--queries", default=40, show_default=True, help="Distinct query texts.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the filled index folder here and reuse it.")
def main(out: Path, size: int, queries: int, work: Path | None) -> None:
    work = work or Path(tempfile.mkdtemp(prefix="bench-people-"))
    folder = work / f"people-{size}"
    fresh = not (folder / "catalog.db").exists()
    store, data, setup = bf.build(size, centers(), folder)  # the same centres as bench_filters
    counts = add_people(store, size, seed=size + 2) if fresh else {
        name: store.catalog.db.execute("SELECT count(*) FROM faces JOIN people ON people.id = faces.person_id "
                                       "WHERE people.name = ?", [name]).fetchone()[0] for name in PEOPLE}
    store.close()
    configs = configurations()
    idx = open_index(str(folder), settings=SearchSettings(text_cache_size=0))
    texts = bf.query_texts(queries)
    vectors = np.concatenate([idx.encode_texts([t]) for t in texts])
    idx.search("warm up", k=10)
    search_vectors(idx.store, vectors[:1], 10, filters=configs["date 0.01"], searcher=idx.searcher)
    catalog = idx.store.catalog
    while True:  # the in-memory columns, as a long-lived searcher has them after its first filtered query
        with catalog.snapshot():
            if idx.searcher.columns_for(catalog) is not None:
                break
        time.sleep(0.05)
    for f in configs.values():
        idx.search(texts[0], k=10, filters=f)
    before = load()
    whole, alone, extra = bf.round_robin(idx, texts, vectors, configs)
    rows = []
    base_whole, base_alone = bf.summary(whole["unfiltered"]), bf.summary(alone["unfiltered"])
    for name, f in configs.items():
        chosen = bf.forced(idx.store, idx.searcher, vectors[:1], f, FilterTuning())[2] if f is not None else "unfiltered"
        entry = {
            "config": name, "path": chosen,
            "whole_p50_ms": bf.summary(whole[name])["p50"], "whole_p99_ms": bf.summary(whole[name])["p99"],
            "search_p50_ms": bf.summary(alone[name])["p50"], "search_p99_ms": bf.summary(alone[name])["p99"],
            "whole_x_unfiltered": round(bf.summary(whole[name])["p50"] / base_whole["p50"], 2),
            "search_x_unfiltered": round(bf.summary(alone[name])["p50"] / base_alone["p50"], 2),
            "recall_at_10": bf.recall(bf.exact_filtered(idx.store, data, vectors, f), extra["found"][name]),
        }
        rows.append(entry)
        note(json.dumps(entry))
    # The first query for a person after a commit lists their photos from SQL: each query here
    # starts with the kept masks dropped.
    from retrieval.search.filters.people import PeopleMasks

    cold = []
    for vector in vectors:
        idx.searcher.people = PeopleMasks()
        t = time.perf_counter()
        search_vectors(idx.store, vector[None], 10, filters=configs["person 0.1"], searcher=idx.searcher)
        cold.append((time.perf_counter() - t) * 1000)
    rows.append({"config": "person 0.1, first query after a commit (mask listed from SQL)", "path": "restrict",
                 "search_p50_ms": bf.summary(cold)["p50"], "search_p99_ms": bf.summary(cold)["p99"],
                 "search_x_unfiltered": round(bf.summary(cold)["p50"] / base_alone["p50"], 2)})
    idx.close()
    data_out = {"machine": machine(), "size": size, "queries": queries, "setup": setup, "people_photos": counts,
                "load_before": before, "load_during": extra["load"], "rows": rows}
    report("people", data_out, rows, out,
           title=f"{size:,} photos, {queries} text queries; load average {extra['load'][0]:.1f}-{extra['load'][1]:.1f} "
                 f"during (the machine was shared)")


if __name__ == "__main__":
    main()
