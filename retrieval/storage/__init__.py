"""An index folder on disk: the SQLite catalog, which is the truth, and everything kept beside it.

Owns the folder and its writer lock (:mod:`.store`), the catalog's tables and generations
(:mod:`.catalog`, :mod:`.known`), one run's staged view of its folders (:mod:`.staging`), the
records and checks of the published FAISS files (:mod:`.integrity`, :mod:`.health`: ``check``
and ``backup``), faults of the environment told in one line (:mod:`.faults`), catalogs on
read-only mounts (:mod:`.readonly`) and clip-retrieval's embedding layout (:mod:`.exchange`,
the only pyarrow importer).

It may import sqlite-utils, numpy, media (what a file is), ann (health reads FAISS files to
check them), aligners' spec helpers (an index records the aligner that built it) and
:mod:`retrieval.errors`; never ingest, search or anything above them.
"""
